package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/preview"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
)

type replacement struct {
	orchestratorv1.UnimplementedReplacementServiceServer
	s *Server
}

var roStates = map[store.ReadOnlyState]orchestratorv1.ReadOnlyReplacementState{
	store.RORequested:         orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REQUESTED,
	store.ROAllocating:        orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_ALLOCATING,
	store.ROReplacementDone:   orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REPLACEMENT_DONE,
	store.RODeletingOldVolume: orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DELETING_OLD_VOLUME,
	store.RORunning:           orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_RUNNING,
	store.ROCompleting:        orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETING,
	store.ROComplete:          orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE,
	store.RODataLost:          orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST,
	store.ROCancelled:         orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED,
}

var stepStates = map[store.StepState]orchestratorv1.StepState{
	store.StepRequested:     orchestratorv1.StepState_STEP_STATE_REQUESTED,
	store.StepRunning:       orchestratorv1.StepState_STEP_STATE_RUNNING,
	store.StepComplete:      orchestratorv1.StepState_STEP_STATE_COMPLETE,
	store.StepCollecting:    orchestratorv1.StepState_STEP_STATE_COLLECTING,
	store.StepVolumeDeleted: orchestratorv1.StepState_STEP_STATE_VOLUME_DELETED,
}

var rwStates = map[store.RegionState]orchestratorv1.RegionReplacementState{
	store.RWRequested:       orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_REQUESTED,
	store.RWAllocating:      orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_ALLOCATING,
	store.RWRunning:         orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_RUNNING,
	store.RWDriving:         orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DRIVING,
	store.RWReplacementDone: orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_REPLACEMENT_DONE,
	store.RWCompleting:      orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETING,
	store.RWComplete:        orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE,
	store.RWDataLost:        orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DATA_LOST,
	store.RWNeedsOperator:   orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_NEEDS_OPERATOR,
	store.RWCancelled:       orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_CANCELLED,
}

func rwProto(r store.RWReplacement) *orchestratorv1.Replacement {
	return &orchestratorv1.Replacement{
		ReplacementId: r.ID.String(), Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION,
		OldTargetId: r.OldRegionID.String(), OldRegionId: r.OldRegionID.String(), LockVolumeId: r.VolumeID.String(),
		RegionState: rwStates[r.State], OperatingSagaId: idStr(r.OperatingSagaID), NewRegionId: idStr(r.NewRegionID),
		OldSnapshotVolumeId: idStr(r.OldRegionVolumeID),
		RequestTime:         timestamppb.New(r.RequestTime), TimeModified: timestamppb.New(r.TimeModified), Traceparent: r.Traceparent,
		Attempts: int32(r.Attempts.Attempts), LastError: r.LastError, LastErrorTime: optTime(r.LastErrorTime), EndReason: strOrEmpty(r.EndReason),
		Priority: r.Priority, LiveCopies: r.LiveCopies,
	}
}

func optTime(t *time.Time) *timestamppb.Timestamp {
	if t == nil {
		return nil
	}
	return timestamppb.New(*t)
}

func strOrEmpty(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func reverse[K comparable, V comparable](m map[K]V, v V) (K, bool) {
	for k, x := range m {
		if x == v {
			return k, true
		}
	}
	var zero K
	return zero, false
}

func idStr(id *uuid.UUID) string {
	if id == nil {
		return ""
	}
	return id.String()
}

func roProto(r store.ROReplacement) *orchestratorv1.Replacement {
	kind := orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT
	if r.Kind == store.KindReadOnlyRegion {
		kind = orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION
	}
	return &orchestratorv1.Replacement{
		ReplacementId: r.ID.String(), Kind: kind, OldTargetId: r.OldTargetID.String(), OldRegionId: r.OldRegionID.String(),
		OldDatasetId: idStr(r.OldDatasetID), OldSnapshotId: r.OldSnapshotID.String(), LockVolumeId: r.LockVolumeID.String(),
		ReadOnlyState: roStates[r.State], OperatingSagaId: idStr(r.OperatingSagaID), NewRegionId: idStr(r.NewRegionID),
		NewRegionVolumeId: idStr(r.NewRegionVolumeID), OldSnapshotVolumeId: idStr(r.OldSnapshotVolumeID),
		RequestTime: timestamppb.New(r.RequestTime), TimeModified: timestamppb.New(r.TimeModified), Traceparent: r.Traceparent,
		Attempts: int32(r.Attempts.Attempts), LastError: r.LastError, LastErrorTime: optTime(r.LastErrorTime), EndReason: strOrEmpty(r.EndReason),
		Priority: r.Priority, LiveCopies: r.LiveCopies,
	}
}

func stepProto(s store.Step) *orchestratorv1.Step {
	return &orchestratorv1.Step{
		StepId: s.ID.String(), ReplacementId: s.RequestID.String(), VolumeId: s.VolumeID.String(), State: stepStates[s.State],
		OperatingSagaId: idStr(s.OperatingSagaID), OldSnapshotVolumeId: idStr(s.OldSnapshotVolumeID),
		RequestTime: timestamppb.New(s.RequestTime), TimeModified: timestamppb.New(s.TimeModified),
		Attempts: int32(s.Attempts.Attempts), LastError: s.LastError, LastErrorTime: optTime(s.LastErrorTime),
	}
}

// RequestReplacement creates a read-only replacement request for a target
// by hand (the detector does the same for expunged disks).
func (r *replacement) RequestReplacement(ctx context.Context, req *orchestratorv1.RequestReplacementRequest) (*orchestratorv1.RequestReplacementResponse, error) {
	id, err := ids.Parse("target_id", req.TargetId)
	if err != nil {
		return nil, err
	}
	// A request found still Requested wakes its task as creating (or
	// reopening) it did: this may be the caller's retry after the first
	// call's COMMIT answer was lost, and that call woke nobody.
	if existing, err := r.s.store.GetROReplacementByTarget(ctx, id); err == nil {
		switch existing.State {
		case store.ROCancelled:
			return r.reopen(ctx, existing.ID)
		case store.RORequested:
			sagadef.Wakeup(r.s.deps.Wake.ROStart)
		}
		return &orchestratorv1.RequestReplacementResponse{Replacement: roProto(existing)}, nil
	}
	if existing, err := r.s.store.GetRWReplacementByRegion(ctx, id); err == nil {
		switch existing.State {
		case store.RWCancelled:
			return r.reopen(ctx, existing.ID)
		case store.RWRequested:
			sagadef.Wakeup(r.s.deps.Wake.RWDetector)
		}
		return &orchestratorv1.RequestReplacementResponse{Replacement: rwProto(existing)}, nil
	}
	tr, err := r.s.deps.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: id.String()})
	if err != nil {
		return nil, err
	}
	t := tr.Target
	rec := store.ROReplacement{ID: uuid.New(), OldTargetID: id}
	switch t.Kind {
	case commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT:
		rec.Kind = store.KindRegionSnapshot
		rec.OldSnapshotID, err = uuid.Parse(t.SnapshotId)
		if err == nil {
			var ds uuid.UUID
			if ds, err = uuid.Parse(t.DatasetId); err == nil {
				rec.OldDatasetID = &ds
			}
		}
	case commonv1.TargetKind_TARGET_KIND_RO_REGION:
		rec.Kind = store.KindReadOnlyRegion
		rec.OldSnapshotID, err = uuid.Parse(t.OwnerVolumeId)
	default:
		return nil, status.Errorf(codes.InvalidArgument, "target_id: %s is a %s; only read-only targets are replaced by request (rw regions are replaced when their disk is expunged)", id, t.Kind)
	}
	if err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "target %s is not fully registered: %v", id, err)
	}
	if rec.OldRegionID, err = uuid.Parse(t.RegionId); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "target %s has no region: %v", id, err)
	}
	rec.LockVolumeID = rec.OldSnapshotID
	rec.Traceparent = requestTrace(ctx, rec)
	got, created, err := r.s.store.InsertROReplacement(ctx, rec)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	sagadef.Wakeup(r.s.deps.Wake.ROStart)
	return &orchestratorv1.RequestReplacementResponse{Replacement: roProto(got), Created: created}, nil
}

// reopen takes a cancelled request back to Requested, as asking for its
// target again does.
func (r *replacement) reopen(ctx context.Context, id uuid.UUID) (*orchestratorv1.RequestReplacementResponse, error) {
	if err := r.s.store.Reopen(ctx, id); err != nil {
		return nil, r.s.status(ctx, err)
	}
	sagadef.Wakeup(r.s.deps.Wake.ROStart, r.s.deps.Wake.RWDetector)
	got, err := r.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id.String()})
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.RequestReplacementResponse{Replacement: got.Replacement, Created: true}, nil
}

// CancelReplacement implements ReplacementService (the states each answer
// are the store's Cancel).
func (r *replacement) CancelReplacement(ctx context.Context, req *orchestratorv1.CancelReplacementRequest) (*orchestratorv1.CancelReplacementResponse, error) {
	id, err := ids.Parse("replacement_id", req.ReplacementId)
	if err != nil {
		return nil, err
	}
	reason := strings.TrimSpace(req.Reason)
	if reason == "" {
		return nil, status.Error(codes.InvalidArgument, "reason: required (it is recorded as the request's end reason)")
	}
	if len(reason) > 1000 {
		return nil, status.Error(codes.InvalidArgument, "reason: longer than 1000 bytes")
	}
	if err := r.s.store.Cancel(ctx, id, "cancelled by an operator: "+reason); err != nil {
		return nil, r.s.status(ctx, err)
	}
	// The released lock may let another request of the volume proceed.
	sagadef.Wakeup(r.s.deps.Wake.RODetector, r.s.deps.Wake.ROStep, r.s.deps.Wake.RWDetector)
	got, err := r.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id.String()})
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.CancelReplacementResponse{Replacement: got.Replacement}, nil
}

// maxPriority bounds an operator's priority either way: wide enough for
// any ranking, narrow enough that a typo is caught.
const maxPriority = 1000

// SetReplacementPriority implements ReplacementService: the priority only
// orders admission under the rebuild budgets, so any request in any state
// may have it set.
func (r *replacement) SetReplacementPriority(ctx context.Context, req *orchestratorv1.SetReplacementPriorityRequest) (*orchestratorv1.SetReplacementPriorityResponse, error) {
	id, err := ids.Parse("replacement_id", req.ReplacementId)
	if err != nil {
		return nil, err
	}
	if req.Priority < -maxPriority || req.Priority > maxPriority {
		return nil, status.Errorf(codes.InvalidArgument, "priority: must be between %d and %d", -maxPriority, maxPriority)
	}
	if err := r.s.store.SetPriority(ctx, id, req.Priority); err != nil {
		return nil, r.s.status(ctx, err)
	}
	// The order changed: plan again now.
	sagadef.Wakeup(r.s.deps.Wake.ROStart, r.s.deps.Wake.RWDetector, r.s.deps.Wake.ROStep)
	got, err := r.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id.String()})
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.SetReplacementPriorityResponse{Replacement: got.Replacement}, nil
}

// requestTrace starts the root span of a manual request, linked to the
// calling RPC's span, and returns its traceparent.
// PreviewExpunge implements ReplacementService (package preview holds the
// operation).
func (r *replacement) PreviewExpunge(ctx context.Context, req *orchestratorv1.PreviewExpungeRequest) (*orchestratorv1.PreviewExpungeResponse, error) {
	var sel preview.Selection
	var err error
	if req.DiskId != "" {
		if sel.DiskID, err = ids.Parse("disk_id", req.DiskId); err != nil {
			return nil, err
		}
	}
	if req.SledId != "" {
		if sel.SledID, err = ids.Parse("sled_id", req.SledId); err != nil {
			return nil, err
		}
	}
	for i, s := range req.DiskIds {
		id, err := ids.Parse(fmt.Sprintf("disk_ids[%d]", i), s)
		if err != nil {
			return nil, err
		}
		sel.DiskIDs = append(sel.DiskIDs, id)
	}
	for i, s := range req.SledIds {
		id, err := ids.Parse(fmt.Sprintf("sled_ids[%d]", i), s)
		if err != nil {
			return nil, err
		}
		sel.SledIDs = append(sel.SledIDs, id)
	}
	c := preview.Clients{Volumes: r.s.deps.Volumes, Allocator: r.s.deps.Allocator}
	var out *orchestratorv1.PreviewExpungeResponse
	switch {
	case req.OkToExpungeMax < 0:
		return nil, status.Errorf(codes.InvalidArgument, "ok_to_expunge_max: %d is negative", req.OkToExpungeMax)
	case req.OkToExpungeMax > 0:
		out, err = preview.OkToExpunge(ctx, c, sel, int(req.OkToExpungeMax))
	case sel.DiskID == uuid.Nil && sel.SledID == uuid.Nil && len(sel.DiskIDs) == 0 && len(sel.SledIDs) == 0:
		return nil, status.Error(codes.InvalidArgument, "disk_id: name at least one disk or sled (disk_id, sled_id, disk_ids, sled_ids)")
	default:
		out, err = preview.Expunge(ctx, c, sel)
	}
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	return out, nil
}

func requestTrace(ctx context.Context, rec store.ROReplacement) string {
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithAttributes(
		attribute.String("replacement.id", rec.ID.String()), attribute.String("replacement.target_id", rec.OldTargetID.String()))}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	c, span := otel.Tracer("storagecp/replacement").Start(ctx, "read-only replacement", opts...)
	defer span.End()
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(c, carrier)
	return carrier["traceparent"]
}

func (r *replacement) GetReplacement(ctx context.Context, req *orchestratorv1.GetReplacementRequest) (*orchestratorv1.GetReplacementResponse, error) {
	id, err := ids.Parse("replacement_id", req.ReplacementId)
	if err != nil {
		return nil, err
	}
	rec, err := r.s.store.GetROReplacement(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return r.getRegionReplacement(ctx, id)
	}
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	steps, err := r.s.store.StepsOfRequest(ctx, id, "")
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	w, err := r.s.newWaits(ctx, true)
	if err != nil {
		return nil, err
	}
	out := &orchestratorv1.GetReplacementResponse{Replacement: roProto(rec)}
	w.describeRO(ctx, out.Replacement, rec)
	for _, s := range steps {
		p := stepProto(s)
		p.Wait = w.step(ctx, s)
		out.Steps = append(out.Steps, p)
	}
	return out, nil
}

func (r *replacement) getRegionReplacement(ctx context.Context, id uuid.UUID) (*orchestratorv1.GetReplacementResponse, error) {
	rec, err := r.s.store.GetRWReplacement(ctx, id)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	drives, err := r.s.store.DriveSteps(ctx, id)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	w, err := r.s.newWaits(ctx, true)
	if err != nil {
		return nil, err
	}
	out := &orchestratorv1.GetReplacementResponse{Replacement: rwProto(rec)}
	w.describeRW(ctx, out.Replacement, rec)
	for _, d := range drives {
		ds := &orchestratorv1.DriveStep{
			DriveStepId: d.ID.String(), ReplacementId: d.RequestID.String(), Time: timestamppb.New(d.Time),
			StepType: d.StepType, AttachmentId: idStr(d.AttachmentID), Endpoint: d.Endpoint,
		}
		if d.Incarnation != nil {
			ds.Incarnation = *d.Incarnation
		}
		out.DriveSteps = append(out.DriveSteps, ds)
	}
	return out, nil
}

func pageArgs(size int32, token string) (uuid.UUID, int, error) {
	limit, err := paging.Size(size)
	if err != nil {
		return uuid.Nil, 0, err
	}
	after, err := paging.UUID(token)
	if err != nil {
		return uuid.Nil, 0, err
	}
	return after, limit, nil
}

// ListReplacements pages through read-only requests, then rw ones (a page
// token "rw:<id>" marks the second part).
func (r *replacement) ListReplacements(ctx context.Context, req *orchestratorv1.ListReplacementsRequest) (*orchestratorv1.ListReplacementsResponse, error) {
	limit, err := paging.Size(req.PageSize)
	if err != nil {
		return nil, err
	}
	token, rwPart := strings.CutPrefix(req.PageToken, "rw:")
	after, err := paging.UUID(token)
	if err != nil {
		return nil, paging.BadToken(req.PageToken)
	}
	wantRO := req.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION &&
		req.RegionState == orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_UNSPECIFIED
	wantRW := (req.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_UNSPECIFIED ||
		req.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION) &&
		req.ReadOnlyState == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_UNSPECIFIED
	w, err := r.s.newWaits(ctx, false)
	if err != nil {
		return nil, err
	}
	out := &orchestratorv1.ListReplacementsResponse{RackPause: pauseProto(w.holds.Rack)}
	// Only held requests: a filter on rows, like kind's (a page may come
	// back short, never wrong).
	skip := func(id uuid.UUID) bool { return req.Paused && w.holds.Of(id) == nil }
	if wantRO && !rwPart {
		var state store.ReadOnlyState
		if req.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_UNSPECIFIED {
			st, ok := reverse(roStates, req.ReadOnlyState)
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "read_only_state: unknown %v", req.ReadOnlyState)
			}
			state = st
		}
		recs, err := r.s.store.ListROReplacements(ctx, state, after, limit)
		if err != nil {
			return nil, r.s.status(ctx, err)
		}
		for _, rec := range recs {
			p := roProto(rec)
			if req.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_UNSPECIFIED && p.Kind != req.Kind {
				continue
			}
			if skip(rec.ID) || (req.Paused && rec.State.Terminal()) {
				continue
			}
			w.describeRO(ctx, p, rec)
			out.Replacements = append(out.Replacements, p)
		}
		if len(recs) == limit {
			out.NextPageToken = recs[len(recs)-1].ID.String()
			return out, nil
		}
		after, limit = uuid.Nil, limit-len(recs)
		if !wantRW || limit == 0 {
			if wantRW {
				out.NextPageToken = "rw:" + uuid.Nil.String()
			}
			return out, nil
		}
	}
	if wantRW {
		var state store.RegionState
		if req.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_UNSPECIFIED {
			st, ok := reverse(rwStates, req.RegionState)
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "region_state: unknown %v", req.RegionState)
			}
			state = st
		}
		recs, err := r.s.store.ListRWReplacements(ctx, state, after, limit)
		if err != nil {
			return nil, r.s.status(ctx, err)
		}
		for _, rec := range recs {
			if skip(rec.ID) || (req.Paused && rec.State.Terminal()) {
				continue
			}
			p := rwProto(rec)
			w.describeRW(ctx, p, rec)
			out.Replacements = append(out.Replacements, p)
		}
		if len(recs) == limit {
			out.NextPageToken = "rw:" + recs[len(recs)-1].ID.String()
		}
	}
	return out, nil
}

func (r *replacement) ListSteps(ctx context.Context, req *orchestratorv1.ListStepsRequest) (*orchestratorv1.ListStepsResponse, error) {
	after, limit, err := pageArgs(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	var reqID *uuid.UUID
	if req.ReplacementId != "" {
		id, err := ids.Parse("replacement_id", req.ReplacementId)
		if err != nil {
			return nil, err
		}
		reqID = &id
	}
	f := store.StepFilter{RequestID: reqID}
	if req.VolumeId != "" {
		id, err := ids.Parse("volume_id", req.VolumeId)
		if err != nil {
			return nil, err
		}
		f.VolumeID = &id
	}
	if req.State != orchestratorv1.StepState_STEP_STATE_UNSPECIFIED {
		s, ok := reverse(stepStates, req.State)
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "state: unknown %v", req.State)
		}
		f.State = s
	}
	steps, err := r.s.store.ListSteps(ctx, f, after, limit)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	w, err := r.s.newWaits(ctx, false)
	if err != nil {
		return nil, err
	}
	out := &orchestratorv1.ListStepsResponse{}
	for _, s := range steps {
		p := stepProto(s)
		p.Wait = w.step(ctx, s)
		out.Steps = append(out.Steps, p)
	}
	if len(steps) == limit {
		out.NextPageToken = steps[len(steps)-1].ID.String()
	}
	return out, nil
}

func (r *replacement) ListLocks(ctx context.Context, req *orchestratorv1.ListLocksRequest) (*orchestratorv1.ListLocksResponse, error) {
	after, limit, err := pageArgs(req.PageSize, req.PageToken)
	if err != nil {
		return nil, err
	}
	locks, err := r.s.store.ListLocks(ctx, after, limit)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	out := &orchestratorv1.ListLocksResponse{}
	for _, l := range locks {
		out.Locks = append(out.Locks, &orchestratorv1.Lock{
			VolumeId: l.VolumeID.String(), RepairId: l.RepairID.String(), HolderKind: string(l.HolderKind),
			TimeAcquired: timestamppb.New(l.TimeAcquired),
		})
	}
	if len(locks) == limit {
		out.NextPageToken = locks[len(locks)-1].VolumeID.String()
	}
	return out, nil
}

// WatchReplacement streams the watched requests and step counts whenever
// they change, until every watched request is terminal.
func (r *replacement) WatchReplacement(req *orchestratorv1.WatchReplacementRequest, stream orchestratorv1.ReplacementService_WatchReplacementServer) error {
	ctx := stream.Context()
	var only *uuid.UUID
	if req.ReplacementId != "" {
		id, err := ids.Parse("replacement_id", req.ReplacementId)
		if err != nil {
			return err
		}
		if _, err := r.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id.String()}); err != nil {
			return err
		}
		only = &id
	}
	var last string
	for {
		msg, err := r.snapshot(ctx, only)
		if err != nil {
			return err
		}
		// An estimate moves with the clock; only a change in the records
		// makes a new message (which then carries a fresh estimate).
		key := watchKey(msg)
		if key != last {
			if err := stream.Send(msg); err != nil {
				return err
			}
			last = key
		}
		if msg.Done {
			return nil
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (r *replacement) snapshot(ctx context.Context, only *uuid.UUID) (*orchestratorv1.WatchReplacementResponse, error) {
	var recs []store.ROReplacement
	var rws []store.RWReplacement
	if only != nil {
		rec, err := r.s.store.GetROReplacement(ctx, *only)
		switch {
		case errors.Is(err, store.ErrNotFound):
			rw, err := r.s.store.GetRWReplacement(ctx, *only)
			if err != nil {
				return nil, r.s.status(ctx, err)
			}
			rws = append(rws, rw)
		case err != nil:
			return nil, r.s.status(ctx, err)
		default:
			recs = append(recs, rec)
		}
	} else {
		allRW, err := r.s.store.ListRWReplacements(ctx, "", uuid.Nil, 1000)
		if err != nil {
			return nil, r.s.status(ctx, err)
		}
		for _, rw := range allRW {
			if !rw.State.Terminal() {
				rws = append(rws, rw)
			}
		}
		all, err := r.s.store.ListROReplacements(ctx, "", uuid.Nil, 1000)
		if err != nil {
			return nil, r.s.status(ctx, err)
		}
		for _, rec := range all {
			if !rec.State.Terminal() {
				recs = append(recs, rec)
			}
		}
	}
	counts, err := r.s.store.StepCounts(ctx, only)
	if err != nil {
		return nil, r.s.status(ctx, err)
	}
	w, err := r.s.newWaits(ctx, true)
	if err != nil {
		return nil, err
	}
	msg := &orchestratorv1.WatchReplacementResponse{Done: true, Steps: stepCountsProto(counts), RackPause: pauseProto(w.holds.Rack)}
	for _, rec := range recs {
		p := roProto(rec)
		w.describeRO(ctx, p, rec)
		// The modification time changes on every transition; strip it so an
		// unchanged record does not look changed.
		p.TimeModified = nil
		msg.Replacements = append(msg.Replacements, p)
		if !rec.State.Terminal() {
			msg.Done = false
		}
	}
	for _, rw := range rws {
		p := rwProto(rw)
		w.describeRW(ctx, p, rw)
		p.TimeModified = nil
		msg.Replacements = append(msg.Replacements, p)
		if !rw.State.Terminal() {
			msg.Done = false
		}
	}
	return msg, nil
}
