package sagadef

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// The nodes that give a new disk its region set, shared by volume-create and
// volume-clone. Register before create (docs/architecture.md, "Register
// before create"): the targets are PENDING in the volume-service before the
// allocator makes them, so no
// volume can name them until they are ACTIVE, and an unwind unregisters them
// only after the allocator destroyed them.

// declareRegionSetActions declares the region-set nodes' actions on t, in
// node order: this list is their one declaration, and addRegionSetNodes
// appends them as they are, each after the one before it.
func declareRegionSetActions(t *saga.Template) []*saga.Action {
	return []*saga.Action{
		// Generate the three region ids.
		t.Action("region_ids", newIDs(3), nil).Local(),
		// – (nothing forward). ⟲ hard-delete the volume row (last).
		t.Action("volume_guard", volumeGuard, volumeGuardUndo),
		// RegisterTargets PENDING. ⟲ UnregisterTargets.
		t.Action("register_regions", registerRegions, registerRegionsUndo),
		// AllocateRegions. ⟲ DeleteRegions (agents and rows).
		t.Action("alloc_regions", allocRegions, allocRegionsUndo),
		// EnsureRegions.
		t.Action("ensure_regions", ensureRegions, nil),
		// ActivateTargets.
		t.Action("activate_regions", activateRegions, nil),
		// CreateVolume. ⟲ SoftDeleteVolume.
		t.Action("create_volume", createDiskVolume, createDiskVolumeUndo),
	}
}

// addRegionSetNodes appends the region-set nodes to b, in the order
// declareRegionSetActions lists them.
func addRegionSetNodes(b *saga.Builder, nodes []*saga.Action) {
	for _, a := range nodes {
		b.Append(a.Node())
	}
}

// RegionSetParams are what the region-set nodes read from their saga's
// parameters.
type RegionSetParams struct {
	VolumeID uuid.UUID `json:"volume_id"`
	// Geometry is fixed by the caller (create) or read from the snapshot
	// (clone: node "snapshot_geometry").
	Geometry *Geometry `json:"geometry,omitempty"`
	// SnapshotID, for a clone: the snapshot whose volume becomes the
	// read-only parent.
	SnapshotID *uuid.UUID `json:"snapshot_id,omitempty"`
	// Seed makes placement deterministic (tests).
	Seed string `json:"seed,omitempty"`
}

// Region is a placed region as node outputs carry it.
type Region struct {
	RegionID  uuid.UUID `json:"region_id"`
	DatasetID uuid.UUID `json:"dataset_id"`
	Address   string    `json:"address,omitempty"`
}

func geometryOf(ac *saga.ActionContext, p RegionSetParams) (Geometry, error) {
	if p.Geometry != nil {
		return *p.Geometry, nil
	}
	return saga.Lookup[Geometry](ac, "snapshot_geometry")
}

// snapshotGeometry reads the region geometry of a snapshot's volume.
func snapshotGeometry(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[RegionSetParams](ac)
	if err != nil {
		return nil, err
	}
	if p.SnapshotID == nil {
		return nil, fmt.Errorf("%w: clone without a snapshot id", errInvalidState)
	}
	resp, err := deps(ac).Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: p.SnapshotID.String()})
	if err != nil {
		return nil, fmt.Errorf("snapshot volume %s: %w", p.SnapshotID, err)
	}
	v := resp.GetVolume()
	if v.GetTimeDeleted() != nil {
		return nil, fmt.Errorf("%w: snapshot %s is deleted", errInvalidState, p.SnapshotID)
	}
	for _, sv := range v.GetVcr().GetVolume().GetSubVolumes() {
		if r := sv.GetRegion(); r != nil {
			return Geometry{BlockSize: r.BlockSize, BlocksPerExtent: r.BlocksPerExtent, ExtentCount: r.ExtentCount}, nil
		}
	}
	return nil, fmt.Errorf("%w: snapshot %s has no region set", errInvalidState, p.SnapshotID)
}

// volumeGuard does nothing forward; its undo hard-deletes the volume row,
// last in the unwind, once the regions it owned are destroyed and
// unregistered (before that the volume-service would answer KEPT).
func volumeGuard(context.Context, *saga.ActionContext) (any, error) { return nil, nil }

func volumeGuardUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, err := saga.Params[RegionSetParams](ac)
	if err != nil {
		return err
	}
	resp, err := deps(ac).Volumes.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: p.VolumeID.String()})
	if err != nil {
		return err
	}
	if resp.Outcome != volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED {
		return fmt.Errorf("volume %s kept: regions %v still owned", p.VolumeID, resp.RemainingRegionIds)
	}
	return nil
}

func registerRegions(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[RegionSetParams](ac)
	if err != nil {
		return nil, err
	}
	ids, err := saga.Lookup[[]uuid.UUID](ac, "region_ids")
	if err != nil {
		return nil, err
	}
	req := &volumev1.RegisterTargetsRequest{}
	for _, id := range ids {
		req.Targets = append(req.Targets, &volumev1.TargetRegistration{
			TargetId: id.String(), Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION,
			RegionId: id.String(), OwnerVolumeId: p.VolumeID.String(),
		})
	}
	_, err = deps(ac).Volumes.RegisterTargets(ctx, req)
	return nil, err
}

func registerRegionsUndo(ctx context.Context, ac *saga.ActionContext) error {
	ids, err := saga.Lookup[[]uuid.UUID](ac, "region_ids")
	if err != nil {
		return err
	}
	_, err = deps(ac).Volumes.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: strs(ids)})
	return err
}

func allocRegions(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[RegionSetParams](ac)
	if err != nil {
		return nil, err
	}
	g, err := geometryOf(ac, p)
	if err != nil {
		return nil, err
	}
	ids, err := saga.Lookup[[]uuid.UUID](ac, "region_ids")
	if err != nil {
		return nil, err
	}
	resp, err := deps(ac).Allocator.AllocateRegions(ctx, &allocatorv1.AllocateRegionsRequest{
		VolumeId: p.VolumeID.String(), BlockSize: g.BlockSize, BlocksPerExtent: g.BlocksPerExtent, ExtentCount: g.ExtentCount,
		Strategy: allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS, Seed: p.Seed,
		Redundancy: int32(len(ids)), NewRegionIds: strs(ids),
	})
	if err != nil {
		return nil, err
	}
	return regionsOut(resp.Regions)
}

// allocRegionsUndo destroys the regions on their agents (ensure is not
// atomic, so some may exist there) and removes their rows.
func allocRegionsUndo(ctx context.Context, ac *saga.ActionContext) error {
	ids, err := saga.Lookup[[]uuid.UUID](ac, "region_ids")
	if err != nil {
		return err
	}
	_, err = deps(ac).Allocator.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: strs(ids)})
	return err
}

func ensureRegions(ctx context.Context, ac *saga.ActionContext) (any, error) {
	ids, err := saga.Lookup[[]uuid.UUID](ac, "region_ids")
	if err != nil {
		return nil, err
	}
	req := &allocatorv1.EnsureRegionsRequest{}
	for _, id := range ids {
		req.Regions = append(req.Regions, &allocatorv1.RegionEnsure{RegionId: id.String()})
	}
	resp, err := deps(ac).Allocator.EnsureRegions(ctx, req)
	if err != nil {
		return nil, err
	}
	return regionsOut(resp.Regions)
}

func activateRegions(ctx context.Context, ac *saga.ActionContext) (any, error) {
	regions, err := saga.Lookup[[]Region](ac, "ensure_regions")
	if err != nil {
		return nil, err
	}
	req := &volumev1.ActivateTargetsRequest{}
	for _, r := range regions {
		req.Targets = append(req.Targets, &volumev1.TargetActivation{
			TargetId: r.RegionID.String(), DatasetId: r.DatasetID.String(), Address: r.Address,
		})
	}
	_, err = deps(ac).Volumes.ActivateTargets(ctx, req)
	return nil, err
}

// createDiskVolume creates the disk's volume: one region set over the new
// regions (with a fresh encryption key, generated here and never written to
// the saga log; a re-run's different key is ignored because CreateVolume is
// idempotent on the id) and, for a clone, the snapshot as read-only parent.
func createDiskVolume(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[RegionSetParams](ac)
	if err != nil {
		return nil, err
	}
	g, err := geometryOf(ac, p)
	if err != nil {
		return nil, err
	}
	regions, err := saga.Lookup[[]Region](ac, "ensure_regions")
	if err != nil {
		return nil, err
	}
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		return nil, err
	}
	keyText := base64.StdEncoding.EncodeToString(key)
	targets := make([]string, len(regions))
	for i, r := range regions {
		targets[i] = r.Address
	}
	vcr := &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
		Id: p.VolumeID.String(), BlockSize: g.BlockSize,
		SubVolumes: []*commonv1.VolumeConstructionRequest{{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
			BlockSize: g.BlockSize, BlocksPerExtent: g.BlocksPerExtent, ExtentCount: g.ExtentCount, Gen: 1,
			Opts: &commonv1.CrucibleOpts{Id: uuid.NewString(), Target: targets, Key: &keyText},
		}}}},
	}}}
	req := &volumev1.CreateVolumeRequest{VolumeId: p.VolumeID.String(), Vcr: vcr}
	if p.SnapshotID != nil {
		req.ReadOnlyParentFromVolumeId = p.SnapshotID.String()
	}
	if _, err := deps(ac).Volumes.CreateVolume(ctx, req); err != nil {
		return nil, err
	}
	return nil, nil
}

// createDiskVolumeUndo soft-deletes the volume, dropping any references its
// read-only parent took; volume_guard hard-deletes the row at the end.
func createDiskVolumeUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, err := saga.Params[RegionSetParams](ac)
	if err != nil {
		return err
	}
	_, err = deps(ac).Volumes.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: p.VolumeID.String()})
	return err
}

func regionsOut(in []*allocatorv1.Region) ([]Region, error) {
	out := make([]Region, 0, len(in))
	for _, r := range in {
		id, err := uuid.Parse(r.RegionId)
		if err != nil {
			return nil, err
		}
		ds, err := uuid.Parse(r.DatasetId)
		if err != nil {
			return nil, err
		}
		out = append(out, Region{RegionID: id, DatasetID: ds, Address: r.Address})
	}
	return out, nil
}
