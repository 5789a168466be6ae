package sagadef

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/ids"
)

// snapshot-create: snapshots a disk. The snapshot id is chosen before the
// saga and is also the snapshot volume's id, so a replacement can always
// name the volume to lock, even after the user deleted the snapshot. Its
// nodes, each described where it is declared, are in newSnapshotCreate.
//
// The lock keeps a replacement from swapping a member of the disk's region
// set while its snapshots are taken (a snapshot of a half-repaired set); the
// registration is refused if the disk is being deleted, in the same
// transaction that would free its regions.
//
// The release on an unwind retires, destroys and unregisters the region
// snapshots (release.go): once create_snapshot_volume committed, a user can
// clone the snapshot, and an unwind from the unlock that follows must not
// destroy region snapshots that clone names. Those are kept, for the clone's
// lifecycle to free.

// SnapshotParams are snapshot-create's parameters.
type SnapshotParams struct {
	DiskVolumeID uuid.UUID `json:"disk_volume_id"`
	SnapshotID   uuid.UUID `json:"snapshot_id"`
}

// SnapshotCreate is the snapshot-create template.
var SnapshotCreate = newSnapshotCreate()

func newSnapshotCreate() *saga.Template {
	t := saga.NewTemplate("snapshot-create")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// Repair lock on the disk's volume. ⟲ unlock.
		t.Action("lock", snapshotLock, snapshotUnlockUndo),
		// The disk's rw regions, from the registry.
		t.Action("disk_regions", snapshotDiskRegions, nil),
		// RegisterTargets PENDING. ⟲ release them.
		t.Action("register_snapshots", registerSnapshots, releaseSnapshots),
		// CreateRegionSnapshots (not atomic: the release above destroys
		// whatever it left on the agents).
		t.Action("create_snapshots", createSnapshots, nil),
		// ActivateTargets.
		t.Action("activate_snapshots", activateSnapshots, nil),
		// CreateVolume(snapshot_of). ⟲ SoftDelete + HardDelete.
		t.Action("create_snapshot_volume", createSnapshotVolume, createSnapshotVolumeUndo),
		// Unlock.
		t.Action("unlock", snapshotUnlock, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, _ SnapshotParams) error {
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

func snapshotLock(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[SnapshotParams](ac)
	if err != nil {
		return nil, err
	}
	err = deps(ac).Store.LockVolume(ctx, p.DiskVolumeID, p.SnapshotID, store.HolderSnapshotCreate)
	if errors.Is(err, store.ErrLockHeld) {
		// Keep the contract's code, so the RPC that waits can answer it,
		// but fail the node at once: ABORTED is otherwise retried in
		// place, and contention must unwind the saga (its caller retries
		// later), not hold it while the other repair runs.
		return nil, saga.Permanent(status.Error(codes.Aborted, err.Error()))
	}
	return nil, err
}

func snapshotUnlock(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[SnapshotParams](ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.UnlockVolume(ctx, p.DiskVolumeID, p.SnapshotID)
}

func snapshotUnlockUndo(ctx context.Context, ac *saga.ActionContext) error {
	_, err := snapshotUnlock(ctx, ac)
	return err
}

// RegionSnapshot is a region snapshot as node outputs carry it.
type RegionSnapshot struct {
	TargetID  uuid.UUID `json:"target_id"`
	RegionID  uuid.UUID `json:"region_id"`
	DatasetID uuid.UUID `json:"dataset_id,omitempty"`
	Address   string    `json:"address,omitempty"`
	// RegionAddress is the address of the region it snapshots.
	RegionAddress string `json:"region_address,omitempty"`
}

func snapshotDiskRegions(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[SnapshotParams](ac)
	if err != nil {
		return nil, err
	}
	resp, err := deps(ac).Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: p.DiskVolumeID.String()})
	if err != nil {
		return nil, fmt.Errorf("disk volume %s: %w", p.DiskVolumeID, err)
	}
	if resp.Volume.GetTimeDeleted() != nil {
		return nil, fmt.Errorf("%w: volume %s is deleted", errInvalidState, p.DiskVolumeID)
	}
	var out []Region
	for _, t := range resp.Volume.Targets {
		if t.Kind != commonv1.TargetKind_TARGET_KIND_RW_REGION {
			continue
		}
		id, err := uuid.Parse(t.RegionId)
		if err != nil {
			return nil, err
		}
		ds, _ := uuid.Parse(t.DatasetId)
		out = append(out, Region{RegionID: id, DatasetID: ds, Address: t.Address})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: volume %s has no rw regions to snapshot", errInvalidState, p.DiskVolumeID)
	}
	return out, nil
}

func snapshotTargets(ac *saga.ActionContext) (SnapshotParams, []Region, error) {
	p, err := saga.Params[SnapshotParams](ac)
	if err != nil {
		return p, nil, err
	}
	regions, err := saga.Lookup[[]Region](ac, "disk_regions")
	return p, regions, err
}

func registerSnapshots(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, regions, err := snapshotTargets(ac)
	if err != nil {
		return nil, err
	}
	req := &volumev1.RegisterTargetsRequest{}
	for _, r := range regions {
		req.Targets = append(req.Targets, &volumev1.TargetRegistration{
			TargetId: ids.RegionSnapshotTargetID(r.RegionID, p.SnapshotID).String(),
			Kind:     commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT,
			RegionId: r.RegionID.String(), SnapshotId: p.SnapshotID.String(),
		})
	}
	_, err = deps(ac).Volumes.RegisterTargets(ctx, req)
	return nil, err
}

// releaseSnapshots undoes registration and creation of the region
// snapshots together, keeping any a clone made meanwhile names.
func releaseSnapshots(ctx context.Context, ac *saga.ActionContext) error {
	p, regions, err := snapshotTargets(ac)
	if err != nil {
		return err
	}
	created := make([]createdTarget, len(regions))
	for i, r := range regions {
		created[i] = createdTarget{ID: ids.RegionSnapshotTargetID(r.RegionID, p.SnapshotID), RegionID: r.RegionID, SnapshotID: p.SnapshotID}
	}
	return releaseCreated(ctx, ac, created)
}

func createSnapshots(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, regions, err := snapshotTargets(ac)
	if err != nil {
		return nil, err
	}
	resp, err := deps(ac).Allocator.CreateRegionSnapshots(ctx, &allocatorv1.CreateRegionSnapshotsRequest{
		SnapshotId: p.SnapshotID.String(), RegionIds: strs(regionIDs(regions)),
	})
	if err != nil {
		return nil, err
	}
	byRegion := map[string]string{}
	for _, r := range regions {
		byRegion[r.RegionID.String()] = r.Address
	}
	out := make([]RegionSnapshot, 0, len(resp.RegionSnapshots))
	for _, rs := range resp.RegionSnapshots {
		rid, err := uuid.Parse(rs.RegionId)
		if err != nil {
			return nil, err
		}
		ds, err := uuid.Parse(rs.DatasetId)
		if err != nil {
			return nil, err
		}
		out = append(out, RegionSnapshot{
			TargetID: ids.RegionSnapshotTargetID(rid, p.SnapshotID), RegionID: rid, DatasetID: ds,
			Address: rs.Address, RegionAddress: byRegion[rs.RegionId],
		})
	}
	if len(out) != len(regions) {
		return nil, fmt.Errorf("%w: %d region snapshots for %d regions", errInvalidState, len(out), len(regions))
	}
	return out, nil
}

func regionIDs(rs []Region) []uuid.UUID {
	out := make([]uuid.UUID, len(rs))
	for i, r := range rs {
		out[i] = r.RegionID
	}
	return out
}

func activateSnapshots(ctx context.Context, ac *saga.ActionContext) (any, error) {
	snaps, err := saga.Lookup[[]RegionSnapshot](ac, "create_snapshots")
	if err != nil {
		return nil, err
	}
	req := &volumev1.ActivateTargetsRequest{}
	for _, s := range snaps {
		req.Targets = append(req.Targets, &volumev1.TargetActivation{
			TargetId: s.TargetID.String(), DatasetId: s.DatasetID.String(), Address: s.Address,
		})
	}
	_, err = deps(ac).Volumes.ActivateTargets(ctx, req)
	return nil, err
}

func createSnapshotVolume(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[SnapshotParams](ac)
	if err != nil {
		return nil, err
	}
	snaps, err := saga.Lookup[[]RegionSnapshot](ac, "create_snapshots")
	if err != nil {
		return nil, err
	}
	m := map[string]string{}
	for _, s := range snaps {
		m[s.RegionAddress] = s.Address
	}
	_, err = deps(ac).Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
		VolumeId:   p.SnapshotID.String(),
		SnapshotOf: &volumev1.SnapshotOf{SourceVolumeId: p.DiskVolumeID.String(), TargetMap: m},
	})
	return nil, err
}

func createSnapshotVolumeUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, err := saga.Params[SnapshotParams](ac)
	if err != nil {
		return err
	}
	v := deps(ac).Volumes
	if _, err := v.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: p.SnapshotID.String()}); err != nil {
		return err
	}
	_, err = v.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: p.SnapshotID.String()})
	return err
}
