// Package server implements storage.volume.v1.VolumeService over the store:
// it parses and checks requests (InvalidArgument naming the field, nothing
// written), converts VCRs, and maps store errors to gRPC codes.
package server

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
	"storagecp.dev/platform/vcr"
	"storagecp.dev/volume/internal/store"
)

// Server is the VolumeService.
type Server struct {
	volumev1.UnimplementedVolumeServiceServer
	store  *store.Store
	logger *slog.Logger
	// disks are the allocator's disk states, for redundancy; nil when the
	// service was given no allocator.
	disks *Disks
}

// New returns the service over its database. disks (nil: none) is where
// it reads disk states for redundancy.
func New(pool *pgxpool.Pool, logger *slog.Logger, disks *Disks) *Server {
	return &Server{store: store.New(pool), logger: logger, disks: disks}
}

// toStatus maps an error to a gRPC status by apierr's rule (store errors
// and VCR errors carry their kinds); method names the RPC in the log line
// of an internal error.
func (s *Server) toStatus(ctx context.Context, method string, err error) error {
	return apierr.Status(ctx, s.logger, err, "method", method)
}

func parseOptionalID(field, s string) (uuid.UUID, error) {
	if s == "" {
		return uuid.Nil, nil
	}
	return ids.Parse(field, s)
}

func pageToken(next uuid.UUID) string {
	if next == uuid.Nil {
		return ""
	}
	return next.String()
}

func idString(id uuid.UUID) string {
	if id == uuid.Nil {
		return ""
	}
	return id.String()
}

func volumeToProto(v store.Volume, full bool) *volumev1.Volume {
	out := &volumev1.Volume{VolumeId: v.ID.String(), TimeCreated: timestamppb.New(v.TimeCreated)}
	if v.TimeDeleted != nil {
		out.TimeDeleted = timestamppb.New(*v.TimeDeleted)
	}
	if full {
		out.Vcr = vcr.ToProto(v.VCR)
	} else {
		out.Vcr = vcr.ToProto(v.VCR.Redacted())
	}
	for _, t := range v.Targets {
		out.Targets = append(out.Targets, targetToProto(t))
	}
	out.Purpose = purposeToProto[v.Purpose]
	return out
}

var purposeToProto = map[store.Purpose]volumev1.VolumePurpose{
	store.PurposeData:      volumev1.VolumePurpose_VOLUME_PURPOSE_DATA,
	store.PurposeStash:     volumev1.VolumePurpose_VOLUME_PURPOSE_STASH,
	store.PurposeReference: volumev1.VolumePurpose_VOLUME_PURPOSE_REFERENCE,
}

func purposeFromProto(p volumev1.VolumePurpose) (store.Purpose, error) {
	if p == volumev1.VolumePurpose_VOLUME_PURPOSE_UNSPECIFIED {
		return store.PurposeData, nil
	}
	for k, v := range purposeToProto {
		if v == p {
			return k, nil
		}
	}
	return "", status.Errorf(codes.InvalidArgument, "purpose: unknown value %d", p)
}

var kindToProto = map[store.TargetKind]commonv1.TargetKind{
	store.KindRWRegion:       commonv1.TargetKind_TARGET_KIND_RW_REGION,
	store.KindRORegion:       commonv1.TargetKind_TARGET_KIND_RO_REGION,
	store.KindRegionSnapshot: commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT,
}

var stateToProto = map[store.TargetState]commonv1.TargetState{
	store.StatePending:  commonv1.TargetState_TARGET_STATE_PENDING,
	store.StateActive:   commonv1.TargetState_TARGET_STATE_ACTIVE,
	store.StateDeleting: commonv1.TargetState_TARGET_STATE_DELETING,
}

func kindFromProto(k commonv1.TargetKind) store.TargetKind {
	for sk, pk := range kindToProto {
		if pk == k {
			return sk
		}
	}
	return ""
}

func stateFromProto(k commonv1.TargetState) store.TargetState {
	for sk, pk := range stateToProto {
		if pk == k {
			return sk
		}
	}
	return ""
}

func targetToProto(t store.Target) *commonv1.Target {
	return &commonv1.Target{TargetId: t.ID.String(), Kind: kindToProto[t.Kind], State: stateToProto[t.State],
		Address: t.Address, RegionId: idString(t.RegionID), DatasetId: idString(t.DatasetID),
		SnapshotId: idString(t.SnapshotID), OwnerVolumeId: idString(t.OwnerVolumeID), ReferenceCount: t.RefCount}
}

func targetsToProto(ts []store.Target) []*commonv1.Target {
	out := make([]*commonv1.Target, len(ts))
	for i, t := range ts {
		out[i] = targetToProto(t)
	}
	return out
}

var replaceToProto = map[store.ReplaceResult]commonv1.VolumeReplaceResult{
	store.ReplaceDone:              commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_DONE,
	store.ReplaceAlreadyHappened:   commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_ALREADY_HAPPENED,
	store.ReplaceVolumeSoftDeleted: commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_EXISTING_VOLUME_SOFT_DELETED,
	store.ReplaceVolumeHardDeleted: commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_EXISTING_VOLUME_HARD_DELETED,
}

// CreateVolume implements VolumeService.
func (s *Server) CreateVolume(ctx context.Context, req *volumev1.CreateVolumeRequest) (*volumev1.CreateVolumeResponse, error) {
	id, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	p := store.CreateParams{ID: id}
	if p.Purpose, err = purposeFromProto(req.GetPurpose()); err != nil {
		return nil, err
	}
	if p.ReadOnlyParentFrom, err = parseOptionalID("read_only_parent_from_volume_id", req.GetReadOnlyParentFromVolumeId()); err != nil {
		return nil, err
	}
	if so := req.GetSnapshotOf(); so != nil {
		src, err := ids.Parse("snapshot_of.source_volume_id", so.GetSourceVolumeId())
		if err != nil {
			return nil, err
		}
		p.SnapshotOf = &store.SnapshotOf{Source: src, TargetMap: so.GetTargetMap()}
	}
	if req.GetVcr() != nil {
		if p.VCR, err = vcr.FromProto(req.GetVcr()); err != nil {
			return nil, s.toStatus(ctx, "CreateVolume", err)
		}
	}
	v, created, err := s.store.CreateVolume(ctx, p)
	if err != nil {
		return nil, s.toStatus(ctx, "CreateVolume", err)
	}
	// Read back with the targets the VCR names, like GetVolume. A VCR that
	// names none (a replacement's blank stash, one per volume of a
	// fan-out) has nothing to add to the row just written.
	if len(vcr.AllTargets(v.VCR)) > 0 {
		if v, err = s.store.GetVolume(ctx, v.ID, false); err != nil {
			return nil, s.toStatus(ctx, "CreateVolume", err)
		}
	}
	return &volumev1.CreateVolumeResponse{Volume: volumeToProto(v, false), Created: created}, nil
}

// GetVolume implements VolumeService.
func (s *Server) GetVolume(ctx context.Context, req *volumev1.GetVolumeRequest) (*volumev1.GetVolumeResponse, error) {
	id, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	if req.GetView() == volumev1.VolumeView_VOLUME_VIEW_FULL {
		// Keys have a method of their own, so that the authorization
		// policy, not this handler, says who may read them.
		return nil, status.Error(codes.InvalidArgument, "view: VOLUME_VIEW_FULL is not served by GetVolume; keys are read with GetVolumeWithKeys")
	}
	v, err := s.store.GetVolume(ctx, id, req.GetIncludeReferenceCounts())
	if err != nil {
		return nil, s.toStatus(ctx, "GetVolume", err)
	}
	out := &volumev1.GetVolumeResponse{Volume: volumeToProto(v, false)}
	if req.GetIncludeRedundancy() {
		if out.Redundancy, err = s.volumeRedundancy(ctx, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// GetVolumeWithKeys implements VolumeService: the stored VCR, keys
// included.
func (s *Server) GetVolumeWithKeys(ctx context.Context, req *volumev1.GetVolumeWithKeysRequest) (*volumev1.GetVolumeWithKeysResponse, error) {
	id, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	v, err := s.store.GetVolume(ctx, id, false)
	if err != nil {
		return nil, s.toStatus(ctx, "GetVolumeWithKeys", err)
	}
	return &volumev1.GetVolumeWithKeysResponse{Volume: volumeToProto(v, true)}, nil
}

// GetVolumeStates implements VolumeService.
func (s *Server) GetVolumeStates(ctx context.Context, req *volumev1.GetVolumeStatesRequest) (*volumev1.GetVolumeStatesResponse, error) {
	switch n := len(req.GetVolumeIds()); {
	case n == 0:
		return nil, status.Error(codes.InvalidArgument, "volume_ids: at least one id is required")
	case n > store.MaxVolumeStates:
		return nil, status.Errorf(codes.InvalidArgument, "volume_ids: at most %d, got %d", store.MaxVolumeStates, n)
	}
	vols := make([]uuid.UUID, len(req.GetVolumeIds()))
	for i, v := range req.GetVolumeIds() {
		var err error
		if vols[i], err = ids.Parse(fmt.Sprintf("volume_ids[%d]", i), v); err != nil {
			return nil, err
		}
	}
	states, err := s.store.VolumeStates(ctx, vols)
	if err != nil {
		return nil, s.toStatus(ctx, "GetVolumeStates", err)
	}
	out := &volumev1.GetVolumeStatesResponse{States: make([]*volumev1.VolumeState, len(states))}
	for i, st := range states {
		out.States[i] = &volumev1.VolumeState{VolumeId: st.ID.String(), Found: st.Found}
		if st.TimeDeleted != nil {
			out.States[i].TimeDeleted = timestamppb.New(*st.TimeDeleted)
		}
	}
	return out, nil
}

// ListVolumes implements VolumeService.
func (s *Server) ListVolumes(ctx context.Context, req *volumev1.ListVolumesRequest) (*volumev1.ListVolumesResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	vols, next, err := s.store.ListVolumes(ctx, after, limit, req.GetIncludeDeleted())
	if err != nil {
		return nil, s.toStatus(ctx, "ListVolumes", err)
	}
	out := &volumev1.ListVolumesResponse{NextPageToken: pageToken(next)}
	for _, v := range vols {
		out.Volumes = append(out.Volumes, volumeToProto(v, false))
	}
	return out, nil
}

// CheckoutVolume implements VolumeService.
func (s *Server) CheckoutVolume(ctx context.Context, req *volumev1.CheckoutVolumeRequest) (*volumev1.CheckoutVolumeResponse, error) {
	id, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	var reason store.CheckoutReason
	switch req.GetReason() {
	case volumev1.CheckoutReason_CHECKOUT_REASON_READ_ONLY_COPY:
		reason = store.ReasonReadOnlyCopy
	case volumev1.CheckoutReason_CHECKOUT_REASON_COPY_AND_MODIFY:
		reason = store.ReasonCopyAndModify
	case volumev1.CheckoutReason_CHECKOUT_REASON_CONSTRUCT:
		reason = store.ReasonConstruct
	default:
		return nil, status.Error(codes.InvalidArgument, "reason: required")
	}
	v, err := s.store.Checkout(ctx, id, reason, req.GetRandomizeIds())
	if err != nil {
		return nil, s.toStatus(ctx, "CheckoutVolume", err)
	}
	return &volumev1.CheckoutVolumeResponse{Vcr: vcr.ToProto(v)}, nil
}

// SoftDeleteVolume implements VolumeService.
func (s *Server) SoftDeleteVolume(ctx context.Context, req *volumev1.SoftDeleteVolumeRequest) (*volumev1.SoftDeleteVolumeResponse, error) {
	id, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	opts := store.SoftDeleteOptions{HardIfNothingFreed: req.GetHardDeleteIfNothingFreed()}
	if req.GetOnlyPurpose() != volumev1.VolumePurpose_VOLUME_PURPOSE_UNSPECIFIED {
		if opts.OnlyPurpose, err = purposeFromProto(req.GetOnlyPurpose()); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "only_purpose: unknown value %d", req.GetOnlyPurpose())
		}
	}
	r, err := s.store.SoftDeleteVolumeWith(ctx, id, opts)
	if err != nil {
		return nil, s.toStatus(ctx, "SoftDeleteVolume", err)
	}
	out := &volumev1.SoftDeleteVolumeResponse{VolumeMissing: r.VolumeMissing, AlreadyDeleted: r.AlreadyDeleted, HardDeleted: r.HardDeleted}
	for _, id := range r.Regions {
		out.RegionIds = append(out.RegionIds, id.String())
	}
	for _, rs := range r.RegionSnapshots {
		out.RegionSnapshots = append(out.RegionSnapshots, &commonv1.RegionSnapshotRef{DatasetId: idString(rs.DatasetID),
			RegionId: rs.RegionID.String(), SnapshotId: rs.SnapshotID.String(), TargetId: rs.TargetID().String()})
	}
	return out, nil
}

// HardDeleteVolume implements VolumeService.
func (s *Server) HardDeleteVolume(ctx context.Context, req *volumev1.HardDeleteVolumeRequest) (*volumev1.HardDeleteVolumeResponse, error) {
	id, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	r, err := s.store.HardDeleteVolume(ctx, id)
	if err != nil {
		return nil, s.toStatus(ctx, "HardDeleteVolume", err)
	}
	if !r.Kept {
		return &volumev1.HardDeleteVolumeResponse{Outcome: volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED}, nil
	}
	out := &volumev1.HardDeleteVolumeResponse{Outcome: volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_KEPT}
	for _, id := range r.RemainingRegions {
		out.RemainingRegionIds = append(out.RemainingRegionIds, id.String())
	}
	return out, nil
}

// FindDeletedVolumeRegions implements VolumeService.
func (s *Server) FindDeletedVolumeRegions(ctx context.Context, _ *volumev1.FindDeletedVolumeRegionsRequest) (*volumev1.FindDeletedVolumeRegionsResponse, error) {
	regions, vols, err := s.store.FindDeletedVolumeRegions(ctx)
	if err != nil {
		return nil, s.toStatus(ctx, "FindDeletedVolumeRegions", err)
	}
	out := &volumev1.FindDeletedVolumeRegionsResponse{}
	for _, id := range regions {
		out.RegionIds = append(out.RegionIds, id.String())
	}
	for _, id := range vols {
		out.VolumeIds = append(out.VolumeIds, id.String())
	}
	return out, nil
}

func parseReplace(volume, old, new, stash string, oldField, newField string) (v, o, n, st uuid.UUID, err error) {
	if v, err = ids.Parse("volume_id", volume); err != nil {
		return
	}
	if o, err = ids.Parse(oldField, old); err != nil {
		return
	}
	if n, err = ids.Parse(newField, new); err != nil {
		return
	}
	st, err = ids.Parse("stash_volume_id", stash)
	return
}

// ReplaceReadOnlyTarget implements VolumeService.
func (s *Server) ReplaceReadOnlyTarget(ctx context.Context, req *volumev1.ReplaceReadOnlyTargetRequest) (*volumev1.ReplaceReadOnlyTargetResponse, error) {
	v, o, n, st, err := parseReplace(req.GetVolumeId(), req.GetOldTargetId(), req.GetNewTargetId(), req.GetStashVolumeId(), "old_target_id", "new_target_id")
	if err != nil {
		return nil, err
	}
	r, err := s.store.ReplaceReadOnlyTarget(ctx, v, o, n, st)
	if err != nil {
		return nil, s.toStatus(ctx, "ReplaceReadOnlyTarget", err)
	}
	return &volumev1.ReplaceReadOnlyTargetResponse{Result: replaceToProto[r]}, nil
}

// ReplaceReadOnlyTargets implements VolumeService.
func (s *Server) ReplaceReadOnlyTargets(ctx context.Context, req *volumev1.ReplaceReadOnlyTargetsRequest) (*volumev1.ReplaceReadOnlyTargetsResponse, error) {
	o, err := ids.Parse("old_target_id", req.GetOldTargetId())
	if err != nil {
		return nil, err
	}
	n, err := ids.Parse("new_target_id", req.GetNewTargetId())
	if err != nil {
		return nil, err
	}
	if len(req.GetSwaps()) > store.MaxReadOnlySwaps {
		return nil, status.Errorf(codes.InvalidArgument, "swaps: at most %d, got %d", store.MaxReadOnlySwaps, len(req.GetSwaps()))
	}
	swaps := make([]store.ReadOnlySwap, len(req.GetSwaps()))
	for i, sw := range req.GetSwaps() {
		if swaps[i].Volume, err = ids.Parse(fmt.Sprintf("swaps[%d].volume_id", i), sw.GetVolumeId()); err != nil {
			return nil, err
		}
		if swaps[i].Stash, err = ids.Parse(fmt.Sprintf("swaps[%d].stash_volume_id", i), sw.GetStashVolumeId()); err != nil {
			return nil, err
		}
	}
	rs, err := s.store.ReplaceReadOnlyTargets(ctx, o, n, swaps, req.GetCreateStashes())
	if err != nil {
		return nil, s.toStatus(ctx, "ReplaceReadOnlyTargets", err)
	}
	out := &volumev1.ReplaceReadOnlyTargetsResponse{Results: make([]commonv1.VolumeReplaceResult, len(rs))}
	for i, r := range rs {
		out.Results[i] = replaceToProto[r]
	}
	return out, nil
}

// DeleteReadOnlyStashes implements VolumeService.
func (s *Server) DeleteReadOnlyStashes(ctx context.Context, req *volumev1.DeleteReadOnlyStashesRequest) (*volumev1.DeleteReadOnlyStashesResponse, error) {
	if len(req.GetVolumeIds()) > store.MaxStashDeletes {
		return nil, status.Errorf(codes.InvalidArgument, "volume_ids: at most %d, got %d", store.MaxStashDeletes, len(req.GetVolumeIds()))
	}
	vols := make([]uuid.UUID, len(req.GetVolumeIds()))
	for i, v := range req.GetVolumeIds() {
		var err error
		if vols[i], err = ids.Parse(fmt.Sprintf("volume_ids[%d]", i), v); err != nil {
			return nil, err
		}
	}
	rs, err := s.store.DeleteReadOnlyStashes(ctx, vols)
	if err != nil {
		return nil, s.toStatus(ctx, "DeleteReadOnlyStashes", err)
	}
	out := &volumev1.DeleteReadOnlyStashesResponse{Results: make([]volumev1.StashDeleteResult, len(rs))}
	for i, r := range rs {
		out.Results[i] = stashDeleteToProto[r]
	}
	return out, nil
}

var stashDeleteToProto = map[store.StashDelete]volumev1.StashDeleteResult{
	store.StashRemoved: volumev1.StashDeleteResult_STASH_DELETE_RESULT_REMOVED,
	store.StashMissing: volumev1.StashDeleteResult_STASH_DELETE_RESULT_MISSING,
	store.StashKept:    volumev1.StashDeleteResult_STASH_DELETE_RESULT_KEPT,
}

// ReplaceRegion implements VolumeService.
func (s *Server) ReplaceRegion(ctx context.Context, req *volumev1.ReplaceRegionRequest) (*volumev1.ReplaceRegionResponse, error) {
	v, o, n, st, err := parseReplace(req.GetVolumeId(), req.GetOldRegionId(), req.GetNewRegionId(), req.GetStashVolumeId(), "old_region_id", "new_region_id")
	if err != nil {
		return nil, err
	}
	r, err := s.store.ReplaceRegion(ctx, v, o, n, st)
	if err != nil {
		return nil, s.toStatus(ctx, "ReplaceRegion", err)
	}
	return &volumev1.ReplaceRegionResponse{Result: replaceToProto[r]}, nil
}

// FindVolumesReferencingTarget implements VolumeService.
func (s *Server) FindVolumesReferencingTarget(ctx context.Context, req *volumev1.FindVolumesReferencingTargetRequest) (*volumev1.FindVolumesReferencingTargetResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	t, err := ids.Parse("target_id", req.GetTargetId())
	if err != nil {
		return nil, err
	}
	refs, next, err := s.store.FindVolumesReferencingTarget(ctx, t, req.GetIncludeDeleted(), after, limit)
	if err != nil {
		return nil, s.toStatus(ctx, "FindVolumesReferencingTarget", err)
	}
	out := &volumev1.FindVolumesReferencingTargetResponse{NextPageToken: pageToken(next)}
	for _, r := range refs {
		out.Volumes = append(out.Volumes, &volumev1.VolumeRef{VolumeId: r.ID.String(), SoftDeleted: r.SoftDeleted, Purpose: purposeToProto[r.Purpose]})
	}
	return out, nil
}

// VolumeReferencesReadOnlyTarget implements VolumeService.
func (s *Server) VolumeReferencesReadOnlyTarget(ctx context.Context, req *volumev1.VolumeReferencesReadOnlyTargetRequest) (*volumev1.VolumeReferencesReadOnlyTargetResponse, error) {
	v, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	t, err := ids.Parse("target_id", req.GetTargetId())
	if err != nil {
		return nil, err
	}
	r, err := s.store.VolumeReferencesReadOnlyTarget(ctx, v, t)
	if err != nil {
		return nil, s.toStatus(ctx, "VolumeReferencesReadOnlyTarget", err)
	}
	return &volumev1.VolumeReferencesReadOnlyTargetResponse{VolumeExists: r.Exists, SoftDeleted: r.SoftDeleted, Referenced: r.Referenced, Purpose: purposeToProto[r.Purpose]}, nil
}

// RemoveReadOnlyParent implements VolumeService.
func (s *Server) RemoveReadOnlyParent(ctx context.Context, req *volumev1.RemoveReadOnlyParentRequest) (*volumev1.RemoveReadOnlyParentResponse, error) {
	v, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	t, err := ids.Parse("temp_volume_id", req.GetTempVolumeId())
	if err != nil {
		return nil, err
	}
	removed, err := s.store.RemoveReadOnlyParent(ctx, v, t)
	if err != nil {
		return nil, s.toStatus(ctx, "RemoveReadOnlyParent", err)
	}
	return &volumev1.RemoveReadOnlyParentResponse{Removed: removed}, nil
}

// RegisterTargets implements VolumeService.
func (s *Server) RegisterTargets(ctx context.Context, req *volumev1.RegisterTargetsRequest) (*volumev1.RegisterTargetsResponse, error) {
	regs := make([]store.Registration, 0, len(req.GetTargets()))
	for i, r := range req.GetTargets() {
		var reg store.Registration
		var err error
		p := func(f string) string { return "targets[" + strconv.Itoa(i) + "]." + f }
		if reg.TargetID, err = parseOptionalID(p("target_id"), r.GetTargetId()); err != nil {
			return nil, err
		}
		if reg.RegionID, err = ids.Parse(p("region_id"), r.GetRegionId()); err != nil {
			return nil, err
		}
		if reg.OwnerVolumeID, err = parseOptionalID(p("owner_volume_id"), r.GetOwnerVolumeId()); err != nil {
			return nil, err
		}
		if reg.SnapshotID, err = parseOptionalID(p("snapshot_id"), r.GetSnapshotId()); err != nil {
			return nil, err
		}
		if reg.Kind = kindFromProto(r.GetKind()); reg.Kind == "" {
			return nil, status.Errorf(codes.InvalidArgument, "%s: required", p("kind"))
		}
		regs = append(regs, reg)
	}
	ts, err := s.store.RegisterTargets(ctx, regs)
	if err != nil {
		return nil, s.toStatus(ctx, "RegisterTargets", err)
	}
	return &volumev1.RegisterTargetsResponse{Targets: targetsToProto(ts)}, nil
}

// ActivateTargets implements VolumeService.
func (s *Server) ActivateTargets(ctx context.Context, req *volumev1.ActivateTargetsRequest) (*volumev1.ActivateTargetsResponse, error) {
	acts := make([]store.Activation, 0, len(req.GetTargets()))
	for i, a := range req.GetTargets() {
		var act store.Activation
		var err error
		p := func(f string) string { return "targets[" + strconv.Itoa(i) + "]." + f }
		if act.TargetID, err = ids.Parse(p("target_id"), a.GetTargetId()); err != nil {
			return nil, err
		}
		if act.DatasetID, err = ids.Parse(p("dataset_id"), a.GetDatasetId()); err != nil {
			return nil, err
		}
		act.Address = a.GetAddress()
		acts = append(acts, act)
	}
	ts, err := s.store.ActivateTargets(ctx, acts)
	if err != nil {
		return nil, s.toStatus(ctx, "ActivateTargets", err)
	}
	return &volumev1.ActivateTargetsResponse{Targets: targetsToProto(ts)}, nil
}

// UnregisterTargets implements VolumeService.
func (s *Server) UnregisterTargets(ctx context.Context, req *volumev1.UnregisterTargetsRequest) (*volumev1.UnregisterTargetsResponse, error) {
	idList := make([]uuid.UUID, 0, len(req.GetTargetIds()))
	for i, t := range req.GetTargetIds() {
		id, err := ids.Parse("target_ids["+strconv.Itoa(i)+"]", t)
		if err != nil {
			return nil, err
		}
		idList = append(idList, id)
	}
	n, err := s.store.UnregisterTargets(ctx, idList)
	if err != nil {
		return nil, s.toStatus(ctx, "UnregisterTargets", err)
	}
	return &volumev1.UnregisterTargetsResponse{Removed: int32(n)}, nil
}

// RetireTargets implements VolumeService.
func (s *Server) RetireTargets(ctx context.Context, req *volumev1.RetireTargetsRequest) (*volumev1.RetireTargetsResponse, error) {
	idList := make([]uuid.UUID, 0, len(req.GetTargetIds()))
	for i, t := range req.GetTargetIds() {
		id, err := ids.Parse("target_ids["+strconv.Itoa(i)+"]", t)
		if err != nil {
			return nil, err
		}
		idList = append(idList, id)
	}
	r, err := s.store.RetireTargets(ctx, idList)
	if err != nil {
		return nil, s.toStatus(ctx, "RetireTargets", err)
	}
	return &volumev1.RetireTargetsResponse{
		RetiredTargetIds: idStrings(r.Retired), KeptTargetIds: idStrings(r.Kept), AbsentTargetIds: idStrings(r.Absent),
	}, nil
}

func idStrings(in []uuid.UUID) []string {
	out := make([]string, len(in))
	for i, id := range in {
		out[i] = id.String()
	}
	return out
}

// GetTarget implements VolumeService.
func (s *Server) GetTarget(ctx context.Context, req *volumev1.GetTargetRequest) (*volumev1.GetTargetResponse, error) {
	id, err := ids.Parse("target_id", req.GetTargetId())
	if err != nil {
		return nil, err
	}
	t, err := s.store.GetTarget(ctx, id, req.GetIncludeReferenceCount())
	if err != nil {
		return nil, s.toStatus(ctx, "GetTarget", err)
	}
	return &volumev1.GetTargetResponse{Target: targetToProto(t)}, nil
}

// ListTargets implements VolumeService.
func (s *Server) ListTargets(ctx context.Context, req *volumev1.ListTargetsRequest) (*volumev1.ListTargetsResponse, error) {
	limit, after, err := paging.UUIDRequest(req)
	if err != nil {
		return nil, err
	}
	f := store.TargetFilter{Kind: kindFromProto(req.GetKind()), State: stateFromProto(req.GetState())}
	if f.OwnerVolumeID, err = parseOptionalID("owner_volume_id", req.GetOwnerVolumeId()); err != nil {
		return nil, err
	}
	ts, next, err := s.store.ListTargets(ctx, f, after, limit)
	if err != nil {
		return nil, s.toStatus(ctx, "ListTargets", err)
	}
	return &volumev1.ListTargetsResponse{Targets: targetsToProto(ts), NextPageToken: pageToken(next)}, nil
}

// ResolveAddress implements VolumeService.
func (s *Server) ResolveAddress(ctx context.Context, req *volumev1.ResolveAddressRequest) (*volumev1.ResolveAddressResponse, error) {
	t, err := s.store.ResolveAddress(ctx, req.GetAddress())
	if err != nil {
		return nil, s.toStatus(ctx, "ResolveAddress", err)
	}
	return &volumev1.ResolveAddressResponse{Target: targetToProto(t)}, nil
}

// CheckInvariants implements VolumeService.
func (s *Server) CheckInvariants(ctx context.Context, _ *volumev1.CheckInvariantsRequest) (*volumev1.CheckInvariantsResponse, error) {
	vs, err := s.store.CheckInvariants(ctx)
	if err != nil {
		return nil, s.toStatus(ctx, "CheckInvariants", err)
	}
	out := &volumev1.CheckInvariantsResponse{}
	for _, v := range vs {
		out.Violations = append(out.Violations, &commonv1.Violation{Code: v.Code, Subject: v.Subject, Detail: v.Detail})
	}
	return out, nil
}
