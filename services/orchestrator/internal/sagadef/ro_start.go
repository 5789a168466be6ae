package sagadef

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
)

// ro-replacement-start: replaces a read-only target (region snapshot or read-only
// region) in the snapshot volume with a new read-only region cloned from a
// surviving copy (docs/replacement.md, "ro-replacement-start").
// Requested → Allocating → ReplacementDone; any unwind returns to Requested.
// Its nodes, each described where it is declared, are in newROStart.
//
// After it, DataLost aside, the snapshot volume (if it still exists) names
// B; T holds A's reference until the garbage-collect saga deletes it.
//
// Releasing B on an unwind (release.go): from replace_in_snapshot on, the
// snapshot volume names B, and a user who clones the snapshot then copies B
// into the clone. The unwind swaps A back into the snapshot volume but
// cannot take B out of the clone, so B is destroyed only once the
// volume-service proves nothing references it; one the clone still names
// is left to the clone's lifecycle, and the request, back in Requested, is
// retried with a new region (B still counts among the snapshot volume's
// regions, so the next allocation asks for one more). That is one undo, on
// the registration, after every node that could have published B has been
// undone: allocation and ensure are its forward half.

// StartParams are ro-replacement-start's parameters: a copy of the request.
type StartParams struct {
	RequestID     uuid.UUID  `json:"request_id"`
	Kind          string     `json:"kind"`
	OldTargetID   uuid.UUID  `json:"old_target_id"`
	OldRegionID   uuid.UUID  `json:"old_region_id"`
	OldSnapshotID uuid.UUID  `json:"old_snapshot_id"`
	OldDatasetID  *uuid.UUID `json:"old_dataset_id,omitempty"`
	// Seed makes placement deterministic (tests).
	Seed string `json:"seed,omitempty"`
}

// ROStart is the ro-replacement-start template.
var ROStart = newROStart()

func newROStart() *saga.Template {
	t := saga.NewTemplate("ro-replacement-start")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// S = this saga's id, the operating saga id.
		t.Action("saga_id", operatingSagaID, nil).Local(),
		// Generate the stash volume id (it will hold A).
		t.Action("new_volume_id", newID, nil).Local(),
		// Generate the reference volume id (keeps B alive).
		t.Action("new_region_volume_id", newID, nil).Local(),
		// Generate B's region id.
		t.Action("new_region_id", newID, nil).Local(),
		// Claim: Requested → Allocating. ⟲ back to Requested.
		t.Action("set_saga_id", roStartClaim, roStartClaimUndo),
		// A surviving copy of the data, chosen before allocating (or
		// DataLost: terminal, no endless retry).
		t.Action("get_clone_source", roCloneSource, nil),
		// Geometry of the old region; the snapshot volume's current
		// read-only regions.
		t.Action("get_alloc_params", roAllocParams, nil),
		// RegisterTargets B PENDING. ⟲ release B.
		t.Action("register_new_region", roRegister, roReleaseNewRegion),
		// AllocateRegions current+1 (excludes the snapshot's copies)
		// before anything frees A's port.
		t.Action("alloc_new_region", roAlloc, nil),
		// EnsureRegions, cloning from the source.
		t.Action("ensure_new_region", roEnsure, nil),
		// ActivateTargets B.
		t.Action("activate_new_region", roActivate, nil),
		// The reference volume naming B. ⟲ remove it.
		t.Action("new_region_volume", roRefVolume, roRefVolumeUndo),
		// Blank stash volume T. ⟲ remove it.
		t.Action("create_stash", roCreateStash, roCreateStashUndo),
		// ReplaceReadOnlyTarget(snapshot volume, A → B, T); a deleted
		// snapshot volume is a success. ⟲ swap back.
		t.Action("replace_in_snapshot", roReplace, undoSwap(roSwap, replaceReadOnly)),
		// Commit: ReplacementDone with B, the reference volume and T.
		t.Action("update_request", roStartCommit, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, _ StartParams) error {
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

func startParams(ac *saga.ActionContext) (StartParams, uuid.UUID, error) {
	p, err := saga.Params[StartParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func roStartClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := startParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetROAllocating(ctx, p.RequestID, s)
}

func roStartClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := startParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoROAllocating(ctx, p.RequestID, s)
}

// CloneSource is the surviving copy B is cloned from, or why none is needed
// or possible.
type CloneSource struct {
	TargetID uuid.UUID `json:"target_id"`
	Address  string    `json:"address"`
	Kind     string    `json:"kind"` // region_snapshot | read_only_region
	// SledID is the source's sled (empty in outputs written before the
	// rebuild budgets: such a clone counts against no source sled).
	SledID string `json:"sled_id,omitempty"`
	// DataLost: no surviving copy; the request ended DataLost.
	DataLost bool `json:"data_lost,omitempty"`
	// TargetGone: nothing references the target any more; the request
	// ended Complete.
	TargetGone bool `json:"target_gone,omitempty"`
}

// lost reports whether get_clone_source already ended the request (DataLost
// or target gone); every later node then does nothing.
func lost(ac *saga.ActionContext) (bool, error) {
	src, err := saga.Lookup[CloneSource](ac, "get_clone_source")
	return src.DataLost || src.TargetGone, err
}

// roCloneSource picks, in order (get_clone_source): another region snapshot
// of the snapshot on an in-service disk; a read-only region of the snapshot
// volume on an in-service disk; the target itself if its own disk is still
// in service. Candidates whose target is gone are skipped. With none, the
// data is lost: the request ends DataLost (terminal, lock released) instead
// of failing on every pass forever.
func roCloneSource(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := startParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	// A target that is gone (its count reached zero, irreversibly) needs no
	// replacement: users deleted every volume that named it, possibly while
	// this saga waited. Without this check, the same deletes that destroyed
	// every copy would read as data loss.
	if gone, err := targetGone(ctx, d, p.OldTargetID); err != nil {
		return nil, err
	} else if gone {
		if err := d.Store.SetROCompleteFromAllocating(ctx, p.RequestID, s); err != nil {
			return nil, err
		}
		return CloneSource{TargetGone: true}, nil
	}
	resp, err := d.Allocator.ListCloneSources(ctx, &allocatorv1.ListCloneSourcesRequest{
		SnapshotId: p.OldSnapshotID.String(), VolumeId: p.OldSnapshotID.String(),
	})
	if err != nil {
		return nil, err
	}
	src, ok, err := ChooseCloneSource(ctx, resp, p.OldTargetID, nil, func(ctx context.Context, id uuid.UUID) (bool, error) {
		return targetGone(ctx, d, id)
	})
	if err != nil {
		return nil, err
	}
	if ok {
		return &CloneSource{TargetID: src.TargetID, Address: src.Address, Kind: src.Kind, SledID: src.SledID}, nil
	}
	// No copy survives. Lost only if something still references the target:
	// checked after the listing, since gone is irreversible — a target not
	// gone now was not gone while we looked for copies.
	if gone, err := targetGone(ctx, d, p.OldTargetID); err != nil {
		return nil, err
	} else if gone {
		if err := d.Store.SetROCompleteFromAllocating(ctx, p.RequestID, s); err != nil {
			return nil, err
		}
		return CloneSource{TargetGone: true}, nil
	}
	reason := fmt.Sprintf("no surviving copy of snapshot %s to clone from: every region snapshot and read-only region is on an expunged disk or gone", p.OldSnapshotID)
	if err := d.Store.SetRODataLost(ctx, p.RequestID, s, reason); err != nil {
		return nil, err
	}
	ac.Logger().Error("read-only replacement: data lost", "request_id", p.RequestID, "snapshot_id", p.OldSnapshotID)
	if c, err := otel.Meter("storagecp/replacement").Int64Counter("storagecp.replacement.data_lost",
		metric.WithDescription("read-only replacement requests that ended DataLost: no surviving copy to clone from")); err == nil {
		c.Add(ctx, 1, metric.WithAttributes(attribute.String("kind", p.Kind)))
	}
	// The snapshot volume's lock is released: another of its targets may
	// now get its request.
	Wakeup(d.Wake.RODetector, d.Wake.ROStart)
	return CloneSource{DataLost: true}, nil
}

// AllocParams are the inputs of the allocation, computed once.
type AllocParams struct {
	Geometry Geometry `json:"geometry"`
	// Current is how many read-only regions the snapshot volume has.
	Current int `json:"current"`
}

func roAllocParams(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return AllocParams{}, err
	}
	p, _, err := startParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	old, err := d.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: p.OldRegionID.String()})
	if err != nil {
		return nil, fmt.Errorf("old region %s: %w", p.OldRegionID, err)
	}
	cur, err := d.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: p.OldSnapshotID.String(), PageSize: 1000})
	if err != nil {
		return nil, err
	}
	r := old.Region
	return AllocParams{
		Geometry: Geometry{BlockSize: r.BlockSize, BlocksPerExtent: r.BlocksPerExtent, ExtentCount: r.ExtentCount},
		Current:  len(cur.Regions),
	}, nil
}

func newRegionID(ac *saga.ActionContext) (uuid.UUID, error) {
	return saga.Lookup[uuid.UUID](ac, "new_region_id")
}

func roRegister(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	p, _, err := startParams(ac)
	if err != nil {
		return nil, err
	}
	b, err := newRegionID(ac)
	if err != nil {
		return nil, err
	}
	_, err = deps(ac).Volumes.RegisterTargets(ctx, &volumev1.RegisterTargetsRequest{Targets: []*volumev1.TargetRegistration{{
		TargetId: b.String(), Kind: commonv1.TargetKind_TARGET_KIND_RO_REGION, RegionId: b.String(),
		OwnerVolumeId: p.OldSnapshotID.String(),
	}}})
	return nil, err
}

// roReleaseNewRegion undoes registration, allocation and ensure of B
// together: retire it, destroy it (the agent may hold a failed create), and
// unregister it, unless it escaped into a clone made while B was in the
// snapshot volume.
func roReleaseNewRegion(ctx context.Context, ac *saga.ActionContext) error {
	b, err := newRegionID(ac)
	if err != nil {
		return err
	}
	return releaseCreated(ctx, ac, []createdTarget{{ID: b, RegionID: b}})
}

// roAlloc allocates B before anything removes A: were A's downstairs torn
// down first, its agent could hand A's port to B and the two addresses
// would collide. It is where the clone is admitted under the rebuild
// budgets (store.AdmitRebuild): refused, the saga unwinds having cloned
// nothing, and the request waits in Requested for a slot.
func roAlloc(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	p, s, err := startParams(ac)
	if err != nil {
		return nil, err
	}
	src, err := saga.Lookup[CloneSource](ac, "get_clone_source")
	if err != nil {
		return nil, err
	}
	ap, err := saga.Lookup[AllocParams](ac, "get_alloc_params")
	if err != nil {
		return nil, err
	}
	b, err := newRegionID(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	req := &allocatorv1.AllocateRegionsRequest{
		VolumeId: p.OldSnapshotID.String(), SnapshotId: p.OldSnapshotID.String(),
		BlockSize: ap.Geometry.BlockSize, BlocksPerExtent: ap.Geometry.BlocksPerExtent, ExtentCount: ap.Geometry.ExtentCount,
		ReadOnly: true, Strategy: allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
		Seed: p.Seed, Redundancy: int32(ap.Current + 1), NewRegionIds: []string{b.String()},
	}
	var out Region
	_, err = d.Store.AdmitRebuild(ctx, store.RebuildClaim{RecordID: p.RequestID, Kind: store.RebuildClone, SagaID: s, Sources: sledIDs(src.SledID)},
		func(ctx context.Context, exclude []uuid.UUID) (uuid.UUID, error) {
			r, err := allocateOne(ctx, d, req, b, exclude)
			if err != nil {
				return uuid.Nil, err
			}
			out = Region{RegionID: b, DatasetID: uuid.MustParse(r.DatasetId)}
			return uuid.Parse(r.SledId)
		})
	if err != nil {
		return nil, budgetPermanent(err)
	}
	return out, nil
}

// allocateOne runs an allocation that must create region id, with the
// sleds in exclude left out, and returns that region. An allocation that
// found no room only because of the exclusions (a dry run without them
// finds some) is store.ErrDestinationsFull: the destination budget, not
// the rack's capacity, holds it back.
func allocateOne(ctx context.Context, d *Deps, req *allocatorv1.AllocateRegionsRequest, id uuid.UUID, exclude []uuid.UUID) (*allocatorv1.Region, error) {
	req = proto.CloneOf(req)
	for _, sled := range exclude {
		req.ExcludeSledIds = append(req.ExcludeSledIds, sled.String())
	}
	resp, err := d.Allocator.AllocateRegions(ctx, req)
	if status.Code(err) == codes.ResourceExhausted && len(exclude) > 0 {
		dry := proto.CloneOf(req)
		dry.ExcludeSledIds, dry.NewRegionIds = nil, nil
		if _, derr := d.Allocator.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{Allocation: dry}); derr == nil {
			return nil, fmt.Errorf("%w: %w", store.ErrDestinationsFull, err)
		}
	}
	if err != nil {
		return nil, err
	}
	for _, r := range resp.Regions {
		if r.RegionId == id.String() {
			return r, nil
		}
	}
	return nil, fmt.Errorf("%w: allocation for volume %s did not create region %s (another allocation raced it, or it already has its regions)", errInvalidState, req.VolumeId, id)
}

// sledIDs parses the sleds that are set, skipping empty or malformed ones.
func sledIDs(in ...string) []uuid.UUID {
	var out []uuid.UUID
	for _, s := range in {
		if id, err := uuid.Parse(s); err == nil && !slices.Contains(out, id) {
			out = append(out, id)
		}
	}
	return out
}

// budgetPermanent marks a budget refusal permanent: retrying the node in
// place would only hold the saga while the slot stays taken; unwinding
// returns the record to its task, which admits it when a slot frees.
func budgetPermanent(err error) error {
	var be *store.BudgetError
	if errors.As(err, &be) {
		return saga.Permanent(err)
	}
	return err
}

func roEnsure(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	src, err := saga.Lookup[CloneSource](ac, "get_clone_source")
	if err != nil {
		return nil, err
	}
	if src.Address, err = sabotageCloneSource(ctx, ac, src.Address); err != nil {
		return nil, err
	}
	b, err := newRegionID(ac)
	if err != nil {
		return nil, err
	}
	resp, err := deps(ac).Allocator.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
		RegionId: b.String(), CloneSourceAddress: src.Address,
	}}})
	if err != nil {
		return nil, err
	}
	out, err := regionsOut(resp.Regions)
	if err != nil || len(out) != 1 {
		return nil, errors.Join(err, fmt.Errorf("%w: ensure returned %d regions", errInvalidState, len(out)))
	}
	return out[0], nil
}

func roActivate(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	r, err := saga.Lookup[Region](ac, "ensure_new_region")
	if err != nil {
		return nil, err
	}
	_, err = deps(ac).Volumes.ActivateTargets(ctx, &volumev1.ActivateTargetsRequest{Targets: []*volumev1.TargetActivation{{
		TargetId: r.RegionID.String(), DatasetId: r.DatasetID.String(), Address: r.Address,
	}}})
	return nil, err
}

// roRefVolume creates the volume that holds one reference to B for the
// life of the request: without it, a user deleting the snapshot right after
// the swap would free B before the steps could put it in the other volumes
// (the race the seed found).
func roRefVolume(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	id, err := saga.Lookup[uuid.UUID](ac, "new_region_volume_id")
	if err != nil {
		return nil, err
	}
	r, err := saga.Lookup[Region](ac, "ensure_new_region")
	if err != nil {
		return nil, err
	}
	_, err = deps(ac).Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
		VolumeId: id.String(), Purpose: volumev1.VolumePurpose_VOLUME_PURPOSE_REFERENCE,
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
			Id: id.String(), BlockSize: 512,
			SubVolumes: []*commonv1.VolumeConstructionRequest{{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
				BlockSize: 512, BlocksPerExtent: 1, ExtentCount: 1, Gen: 1,
				Opts: &commonv1.CrucibleOpts{Id: id.String(), Target: []string{r.Address}, ReadOnly: true},
			}}}},
		}}},
	})
	return nil, err
}

func roRefVolumeUndo(ctx context.Context, ac *saga.ActionContext) error {
	id, err := saga.Lookup[uuid.UUID](ac, "new_region_volume_id")
	if err != nil {
		return err
	}
	return removeVolume(ctx, deps(ac), id)
}

// roCreateStash creates T blank, not naming B: if the swap does not happen
// (the snapshot volume is gone), the garbage-collect saga deletes T and must
// not take B with it.
func roCreateStash(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	id, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return nil, err
	}
	return nil, createBlankVolume(ctx, deps(ac), id)
}

func roCreateStashUndo(ctx context.Context, ac *saga.ActionContext) error {
	id, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return err
	}
	return removeVolume(ctx, deps(ac), id)
}

// roReplace swaps A for B in the snapshot volume. A deleted snapshot volume
// is a success: other volumes may still name A and need B, and treating it
// as a failure would break idempotency (swap, crash, user deletes snapshot,
// re-run).
// roSwap is what replace_in_snapshot swaps: in the snapshot's volume, the
// old target for the new read-only region, the old one kept in the stash;
// nothing when the data is lost.
func roSwap(ac *saga.ActionContext) (Replacement, bool, error) {
	if l, err := lost(ac); l || err != nil {
		return Replacement{}, false, err
	}
	p, _, err := startParams(ac)
	if err != nil {
		return Replacement{}, false, err
	}
	b, err := newRegionID(ac)
	if err != nil {
		return Replacement{}, false, err
	}
	stash, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return Replacement{}, false, err
	}
	return Replacement{Volume: p.OldSnapshotID, Old: p.OldTargetID, New: b, Stash: stash}, true, nil
}

func roReplace(ctx context.Context, ac *saga.ActionContext) (any, error) {
	r, ok, err := roSwap(ac)
	if err != nil || !ok {
		return r, err
	}
	r.Result, err = replaceReadOnly(ctx, deps(ac), r)
	return r, err
}

func roStartCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	if l, err := lost(ac); l || err != nil {
		return nil, err
	}
	p, s, err := startParams(ac)
	if err != nil {
		return nil, err
	}
	b, err := newRegionID(ac)
	if err != nil {
		return nil, err
	}
	ref, err := saga.Lookup[uuid.UUID](ac, "new_region_volume_id")
	if err != nil {
		return nil, err
	}
	stash, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetROReplacementDone(ctx, p.RequestID, s, b, ref, stash); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.ROGarbageCollect)
	return nil, nil
}
