package sagadef

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
)

// rw-replacement-start: replaces one rw region of a volume with a blank new region
// (docs/replacement.md, "rw-replacement-start").
// Requested → Allocating → Running; any unwind returns to Requested. The new
// region holds no data yet: the drive saga gets an Upstairs to repair it.
// Its nodes, each described where it is declared, are in newRWStart.
//
// Why N is registered owned by T and not by the volume: the volume-service
// lets an ACTIVE rw target be unregistered only once its owner is deleted
// (or never existed). Owned by the live volume, N could never be
// unregistered by an unwind after activate_new_region. Owned by T, the
// unwind soft-deletes T (create_stash's undo) before unregistering N, and
// ReplaceRegion moves N to the volume anyway (its undo moves it back to T).

// RWStartParams are rw-replacement-start's parameters: a copy of the request.
type RWStartParams struct {
	RequestID   uuid.UUID `json:"request_id"`
	VolumeID    uuid.UUID `json:"volume_id"`
	OldRegionID uuid.UUID `json:"old_region_id"`
	// Seed makes placement deterministic (tests).
	Seed string `json:"seed,omitempty"`
}

// RWStart is the rw-replacement-start template.
var RWStart = newRWStart()

func newRWStart() *saga.Template {
	t := saga.NewTemplate("rw-replacement-start")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// S = this saga's id, the operating saga id.
		t.Action("saga_id", operatingSagaID, nil).Local(),
		// Generate the new region's id N.
		t.Action("new_region_id", newID, nil).Local(),
		// Generate the stash volume id T (it will own the old region O).
		t.Action("stash_volume_id", newID, nil).Local(),
		// Claim: Requested → Allocating. ⟲ back to Requested.
		t.Action("set_saga_id", rwStartClaim, rwStartClaimUndo),
		// O's geometry; a deleted volume fails here (the task then
		// completes the request).
		t.Action("get_alloc_params", rwAllocParams, nil),
		// Nothing forward. ⟲ hard-delete T, last in the unwind, once N is
		// unregistered.
		t.Action("stash_guard", volumeGuard, rwStashGuardUndo),
		// RegisterTargets N PENDING, owned by T. ⟲ unregister.
		t.Action("register_new_region", rwRegister, rwRegisterUndo),
		// AllocateRegions 3+1 for the volume: O still counts, so its sled
		// stays excluded; O is not removed first (its agent could hand O's
		// port to N). ⟲ DeleteRegions.
		t.Action("alloc_new_region", rwAlloc, rwAllocUndo),
		// EnsureRegions N (blank).
		t.Action("ensure_new_region", rwEnsure, nil),
		// ActivateTargets N.
		t.Action("activate_new_region", rwActivate, nil),
		// Blank volume T. ⟲ soft-delete T, destroying what that frees.
		t.Action("create_stash", rwCreateStash, rwCreateStashUndo),
		// ReplaceRegion(volume, O → N, T): generation bump, N owned by the
		// volume, O by T. A deleted volume fails the node so the saga
		// unwinds. ⟲ swap back.
		t.Action("replace_region", rwReplace, undoSwap(rwSwap, replaceRegion)),
		// Commit: Running with N and T.
		t.Action("update_request", rwStartCommit, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, _ RWStartParams) error {
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

// errVolumeDeleted fails rw-replacement-start when the volume is gone (the
// start saga unwinds; the task then completes the request).
var errVolumeDeleted = errors.New("volume deleted")

func rwStartParams(ac *saga.ActionContext) (RWStartParams, uuid.UUID, error) {
	p, err := saga.Params[RWStartParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func rwIDs(ac *saga.ActionContext) (newRegion, stash uuid.UUID, err error) {
	if newRegion, err = saga.Lookup[uuid.UUID](ac, "new_region_id"); err != nil {
		return
	}
	stash, err = saga.Lookup[uuid.UUID](ac, "stash_volume_id")
	return
}

func rwStartClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwStartParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetRWAllocating(ctx, p.RequestID, s)
}

func rwStartClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := rwStartParams(ac)
	if err != nil {
		return err
	}
	if err := deps(ac).Store.UndoRWAllocating(ctx, p.RequestID, s); err != nil {
		return err
	}
	// Back to Requested: the detector completes it if the volume is gone.
	Wakeup(deps(ac).Wake.RWDetector)
	return nil
}

// VolumeDeleted reports whether a volume is soft- or hard-deleted.
func VolumeDeleted(ctx context.Context, d *Deps, id uuid.UUID) (bool, error) {
	resp, err := d.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: id.String()})
	if isCode(err, codes.NotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return resp.GetVolume().GetTimeDeleted() != nil, nil
}

// DeletedVolumes is VolumeDeleted for many volumes, in calls of at most
// 1000 ids that read no VCR: the tasks ask it of every waiting request on
// every pass.
func DeletedVolumes(ctx context.Context, d *Deps, ids []uuid.UUID) (map[uuid.UUID]bool, error) {
	out := make(map[uuid.UUID]bool, len(ids))
	for chunk := range slices.Chunk(ids, maxVolumeStates) {
		resp, err := d.Volumes.GetVolumeStates(ctx, &volumev1.GetVolumeStatesRequest{VolumeIds: strs(chunk)})
		if err != nil {
			return nil, err
		}
		if len(resp.States) != len(chunk) {
			return nil, fmt.Errorf("%w: %d volume states for %d ids", errInvalidState, len(resp.States), len(chunk))
		}
		for i, st := range resp.States {
			out[chunk[i]] = !st.Found || st.TimeDeleted != nil
		}
	}
	return out, nil
}

// maxVolumeStates is the volume-service's bound on one GetVolumeStates.
const maxVolumeStates = 1000

func rwAllocParams(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, _, err := rwStartParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	gone, err := VolumeDeleted(ctx, d, p.VolumeID)
	if err != nil {
		return nil, err
	}
	if gone {
		return nil, fmt.Errorf("%w: volume %s: nothing to repair", errVolumeDeleted, p.VolumeID)
	}
	old, err := d.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: p.OldRegionID.String()})
	if err != nil {
		return nil, fmt.Errorf("old region %s: %w", p.OldRegionID, err)
	}
	r := old.Region
	if r.ReadOnly {
		return nil, fmt.Errorf("%w: region %s is read-only", errInvalidState, p.OldRegionID)
	}
	return Geometry{BlockSize: r.BlockSize, BlocksPerExtent: r.BlocksPerExtent, ExtentCount: r.ExtentCount}, nil
}

// rwStashGuardUndo hard-deletes T at the end of the unwind. T is missing
// (never created), or soft-deleted by create_stash's undo; N, which T may
// own, is unregistered by then. KEPT is accepted only for regions other
// than N: the old region, parked in T by a swap the volume's deletion kept
// from being undone, whose region snapshots pin it; the volume-delete that
// frees it with its last snapshot hard-deletes T then.
func rwStashGuardUndo(ctx context.Context, ac *saga.ActionContext) error {
	n, stash, err := rwIDs(ac)
	if err != nil {
		return err
	}
	resp, err := deps(ac).Volumes.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: stash.String()})
	if err != nil {
		return err
	}
	if resp.Outcome != volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED && slices.Contains(resp.RemainingRegionIds, n.String()) {
		return fmt.Errorf("stash volume %s kept: it still owns the new region %s", stash, n)
	}
	return nil
}

func rwRegister(ctx context.Context, ac *saga.ActionContext) (any, error) {
	n, stash, err := rwIDs(ac)
	if err != nil {
		return nil, err
	}
	_, err = deps(ac).Volumes.RegisterTargets(ctx, &volumev1.RegisterTargetsRequest{Targets: []*volumev1.TargetRegistration{{
		TargetId: n.String(), Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION, RegionId: n.String(),
		OwnerVolumeId: stash.String(),
	}}})
	return nil, err
}

func rwRegisterUndo(ctx context.Context, ac *saga.ActionContext) error {
	n, _, err := rwIDs(ac)
	if err != nil {
		return err
	}
	_, err = deps(ac).Volumes.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: []string{n.String()}})
	return err
}

// rwAlloc is where the repair is admitted under the rebuild budgets
// (store.AdmitRebuild): its sources are the sleds of the region set's
// surviving members (a repair may read from any of them); refused, the saga
// unwinds and the request waits in Requested for a slot. The slot is held
// until the request reaches ReplacementDone.
func rwAlloc(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwStartParams(ac)
	if err != nil {
		return nil, err
	}
	g, err := saga.Lookup[Geometry](ac, "get_alloc_params")
	if err != nil {
		return nil, err
	}
	n, _, err := rwIDs(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	sources, err := RepairSourceSleds(ctx, d, p.VolumeID, p.OldRegionID, n)
	if err != nil {
		return nil, err
	}
	req := &allocatorv1.AllocateRegionsRequest{
		VolumeId: p.VolumeID.String(), BlockSize: g.BlockSize, BlocksPerExtent: g.BlocksPerExtent, ExtentCount: g.ExtentCount,
		Strategy: allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
		Seed:     p.Seed, Redundancy: 3 + 1, NewRegionIds: []string{n.String()},
	}
	var out Region
	_, err = d.Store.AdmitRebuild(ctx, store.RebuildClaim{RecordID: p.RequestID, Kind: store.RebuildRepair, SagaID: s, Sources: sources},
		func(ctx context.Context, exclude []uuid.UUID) (uuid.UUID, error) {
			r, err := allocateOne(ctx, d, req, n, exclude)
			if err != nil {
				return uuid.Nil, err
			}
			out = Region{RegionID: n, DatasetID: uuid.MustParse(r.DatasetId)}
			return uuid.Parse(r.SledId)
		})
	if err != nil {
		return nil, budgetPermanent(err)
	}
	return out, nil
}

// RepairSourceSleds lists the sleds of the rw regions allocated for the
// volume that a repair of it may read from: on an in-service disk, other
// than the region being replaced and the new one, and not a replacement
// region that was never repaired.
func RepairSourceSleds(ctx context.Context, d *Deps, volumeID, oldRegionID, newRegionID uuid.UUID) ([]uuid.UUID, error) {
	regions, err := d.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: volumeID.String(), PageSize: 1000})
	if err != nil {
		return nil, err
	}
	unrepaired, err := d.Store.UnrepairedRegions(ctx, volumeID)
	if err != nil {
		return nil, err
	}
	var sleds []string
	for _, r := range regions.Regions {
		id := parseOrNil(r.RegionId)
		if r.ReadOnly || id == oldRegionID || id == newRegionID || unrepaired[id] {
			continue
		}
		in, err := DiskInService(r.DiskPolicy, "region "+r.RegionId)
		if err != nil {
			return nil, err
		}
		if in {
			sleds = append(sleds, r.SledId)
		}
	}
	return sledIDs(sleds...), nil
}

func rwAllocUndo(ctx context.Context, ac *saga.ActionContext) error {
	n, _, err := rwIDs(ac)
	if err != nil {
		return err
	}
	_, err = deps(ac).Allocator.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{n.String()}})
	return err
}

func rwEnsure(ctx context.Context, ac *saga.ActionContext) (any, error) {
	n, _, err := rwIDs(ac)
	if err != nil {
		return nil, err
	}
	resp, err := deps(ac).Allocator.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
		RegionId: n.String(),
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

func rwActivate(ctx context.Context, ac *saga.ActionContext) (any, error) {
	r, err := saga.Lookup[Region](ac, "ensure_new_region")
	if err != nil {
		return nil, err
	}
	_, err = deps(ac).Volumes.ActivateTargets(ctx, &volumev1.ActivateTargetsRequest{Targets: []*volumev1.TargetActivation{{
		TargetId: r.RegionID.String(), DatasetId: r.DatasetID.String(), Address: r.Address,
	}}})
	return nil, err
}

func rwCreateStash(ctx context.Context, ac *saga.ActionContext) (any, error) {
	_, stash, err := rwIDs(ac)
	if err != nil {
		return nil, err
	}
	return nil, createBlankVolume(ctx, deps(ac), stash)
}

// rwCreateStashUndo soft-deletes T and destroys whatever that frees: after
// a swap back, T's VCR names N (the allocation's undo destroys it too); if
// the volume was deleted before the swap could be undone, T keeps the old
// region, which nothing else would ever free. stash_guard hard-deletes the
// row last, once N is unregistered.
func rwCreateStashUndo(ctx context.Context, ac *saga.ActionContext) error {
	_, stash, err := rwIDs(ac)
	if err != nil {
		return err
	}
	d := deps(ac)
	resp, err := d.Volumes.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: stash.String()})
	if err != nil || len(resp.RegionIds) == 0 {
		return err
	}
	if _, err := d.Allocator.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: resp.RegionIds}); err != nil {
		return err
	}
	_, err = d.Volumes.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: resp.RegionIds})
	return err
}

func replaceRegion(ctx context.Context, d *Deps, r Replacement) (string, error) {
	resp, err := d.Volumes.ReplaceRegion(ctx, &volumev1.ReplaceRegionRequest{
		VolumeId: r.Volume.String(), OldRegionId: r.Old.String(), NewRegionId: r.New.String(), StashVolumeId: r.Stash.String(),
	})
	if err != nil {
		return "", err
	}
	return resp.Result.String(), nil
}

// rwReplace swaps O for N in the volume (generation bump). Unlike the
// read-only swap, a deleted volume is a failure: there is nothing left to
// repair, the unwind frees N, and the detector completes the request.
// rwSwap is what replace_region swaps: in the volume, the old region for
// the new one, the old one kept in the stash.
func rwSwap(ac *saga.ActionContext) (Replacement, bool, error) {
	p, _, err := rwStartParams(ac)
	if err != nil {
		return Replacement{}, false, err
	}
	n, stash, err := rwIDs(ac)
	if err != nil {
		return Replacement{}, false, err
	}
	return Replacement{Volume: p.VolumeID, Old: p.OldRegionID, New: n, Stash: stash}, true, nil
}

func rwReplace(ctx context.Context, ac *saga.ActionContext) (any, error) {
	r, _, err := rwSwap(ac)
	if err != nil {
		return nil, err
	}
	if r.Result, err = replaceRegion(ctx, deps(ac), r); err != nil {
		return nil, err
	}
	if r.VolumeGone() {
		return nil, fmt.Errorf("%w: ReplaceRegion on volume %s answered %s", errVolumeDeleted, r.Volume, r.Result)
	}
	return r, nil
}

func rwStartCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwStartParams(ac)
	if err != nil {
		return nil, err
	}
	n, stash, err := rwIDs(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetRWRunning(ctx, p.RequestID, s, n, stash); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.RWDrive)
	return nil, nil
}
