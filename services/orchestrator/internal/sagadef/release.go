package sagadef

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// Undoing the creation of read-only targets.
//
// A saga that creates a read-only target (ro-replacement-start's new region B,
// snapshot-create's region snapshots) publishes it before it ends: B is
// swapped into the snapshot volume, a snapshot volume names its region
// snapshots. From that moment a user can copy it into a volume of their own —
// clone the snapshot — and an unwind that follows does not take that copy
// back. So an undo never destroys such a target on the strength of what the
// saga itself did; it first asks the volume-service to prove that nothing
// references it (RetireTargets: DELETING, irreversibly, or kept), destroys
// only what that proved, and unregisters it last, so that the allocator
// never holds a row the registry does not know. A kept target escaped into
// another volume and belongs to that volume's lifecycle from then on: its
// delete frees it, as it frees any target whose count reaches zero.

// createdTarget is a read-only target a saga created.
type createdTarget struct {
	ID uuid.UUID
	// RegionID is a read-only region's id (then ID) or the region a region
	// snapshot was taken of.
	RegionID uuid.UUID
	// SnapshotID is set for a region snapshot.
	SnapshotID uuid.UUID
}

// releaseCreated undoes the creation of targets: retire, destroy what is
// retired or absent, unregister it. Safe to repeat.
func releaseCreated(ctx context.Context, ac *saga.ActionContext, targets []createdTarget) error {
	d := deps(ac)
	byID := make(map[string]createdTarget, len(targets))
	ids := make([]string, len(targets))
	for i, t := range targets {
		ids[i] = t.ID.String()
		byID[ids[i]] = t
	}
	resp, err := d.Volumes.RetireTargets(ctx, &volumev1.RetireTargetsRequest{TargetIds: ids})
	if err != nil {
		return fmt.Errorf("retire %d created targets: %w", len(ids), err)
	}
	for _, id := range resp.KeptTargetIds {
		ac.Logger().Info("created target escaped into a volume made meanwhile; left to that volume's lifecycle", "target_id", id)
	}
	destroy := append(append([]string(nil), resp.RetiredTargetIds...), resp.AbsentTargetIds...)
	var regions []string
	var snapshots []*allocatorv1.RegionSnapshotKey
	for _, id := range destroy {
		t, ok := byID[id]
		if !ok {
			return fmt.Errorf("%w: volume-service answered for target %s, which was not asked about", errInvalidState, id)
		}
		if t.SnapshotID == uuid.Nil {
			regions = append(regions, t.RegionID.String())
		} else {
			snapshots = append(snapshots, &allocatorv1.RegionSnapshotKey{RegionId: t.RegionID.String(), SnapshotId: t.SnapshotID.String()})
		}
	}
	if len(regions) > 0 {
		if _, err := d.Allocator.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: regions}); err != nil {
			return err
		}
	}
	if len(snapshots) > 0 {
		if _, err := d.Allocator.DeleteRegionSnapshots(ctx, &allocatorv1.DeleteRegionSnapshotsRequest{RegionSnapshots: snapshots}); err != nil {
			return err
		}
	}
	if len(resp.RetiredTargetIds) > 0 {
		if _, err := d.Volumes.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: resp.RetiredTargetIds}); err != nil {
			return err
		}
	}
	return nil
}
