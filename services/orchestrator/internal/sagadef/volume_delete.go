package sagadef

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// volume-delete: the single place Crucible resources are freed. Used alone
// for disks and snapshots and as a subsaga by the replacement sagas (stash
// and reference volumes). Safe twice and safe on a missing volume: every
// node is idempotent and the soft delete returns its stored result on a
// re-run. It has no undos: a failed delete is retried, never rolled back.
// Its nodes, each described where it is declared, are in newVolumeDelete.

// DeleteParams are volume-delete's parameters.
type DeleteParams struct {
	VolumeID uuid.UUID `json:"volume_id"`
	// Embedded: run as a replacement saga's subsaga, whose own commit
	// activates the tasks that wait on it; it activates every task only if
	// it freed something. A delete of its own (a user's) always does, since
	// any task may wait on the volume.
	Embedded bool `json:"embedded,omitempty"`
	// ReadOnlyStash: a step's stash, a one-target read-only stub the
	// replacement made, which no Upstairs was ever built from and which
	// owns no rw region. Nothing can be attached to detach, and it has no
	// region of its own for FindDeletedVolumeRegions to free: only when its
	// soft delete freed a region snapshot (the last reference to the old
	// target) may that free a deleted disk's regions. A fan-out deletes
	// one stash per volume, so these two calls add up.
	ReadOnlyStash bool `json:"read_only_stash,omitempty"`
}

// DeleteResult is volume-delete's output.
type DeleteResult struct {
	HardDeleted bool `json:"hard_deleted"`
}

// VolumeDelete is the volume-delete template.
var VolumeDelete = newVolumeDelete()

func newVolumeDelete() *saga.Template {
	t := saga.NewTemplate("volume-delete")
	// The nodes, in order, stage by stage: each stage's nodes run
	// concurrently, after every node of the stage before. Only the third
	// stage has two.
	//
	// The nodes between the soft and the hard delete often have nothing to
	// do (a fan-out's stash deletes free nothing but the last): they say
	// so from the parameters and soft_delete's output, and the engine then
	// completes them without a commit or a task of their own.
	stages := [][]*saga.Action{
		// SoftDeleteVolume → regions and region snapshots now free (a
		// read-only stash that frees nothing is removed at once: every
		// node below then has nothing to do).
		{t.Action("soft_delete", softDelete, nil)},
		// Detach every Upstairs still built from the volume (e.g. a Pantry
		// a rw replacement reconciled it on), so nothing reads regions
		// about to be destroyed.
		{t.Action("detach_upstairs", detachUpstairs, nil).Shortcut(nothingToDetach)},
		// delete_regions ∥ delete_region_snapshots: destroy them on their
		// agents.
		{
			t.Action("delete_regions", deleteFreedRegions("soft_delete"), nil).Shortcut(noFreedRegions("soft_delete")),
			t.Action("delete_region_snapshots", deleteFreedSnapshots, nil).Shortcut(noFreedSnapshots),
		},
		// UnregisterTargets for both.
		{t.Action("unregister_freed", unregisterFreed("soft_delete", true), nil).Shortcut(nothingToUnregister("soft_delete", true))},
		// FindDeletedVolumeRegions: rw regions whose last snapshot is
		// gone, and volumes that frees.
		{t.Action("find_freed", findFreed, nil).Shortcut(nothingToFind)},
		// Destroy those.
		{t.Action("delete_freed_regions", deleteFreedRegions("find_freed"), nil).Shortcut(noFreedRegions("find_freed"))},
		// UnregisterTargets.
		{t.Action("unregister_freed_regions", unregisterFreed("find_freed", false), nil).Shortcut(nothingToUnregister("find_freed", false))},
		// HardDeleteVolume for the freed volumes and this one (KEPT while
		// rw regions are still owned).
		{t.Action("hard_delete", hardDelete, nil).Shortcut(alreadyHardDeleted)},
	}
	saga.SetBuild(t, func(b *saga.Builder, _ DeleteParams) error {
		for _, stage := range stages {
			nodes := make([]saga.Node, len(stage))
			for i, a := range stage {
				nodes[i] = a.Node()
			}
			b.AppendParallel(nodes...)
		}
		return nil
	})
	return t
}

// Freed is what a soft delete or a freed-region scan returned.
type Freed struct {
	RegionIDs       []string        `json:"region_ids"`
	RegionSnapshots []FreedSnapshot `json:"region_snapshots,omitempty"`
	VolumeIDs       []string        `json:"volume_ids,omitempty"`
	// HardDeleted: the soft delete freed nothing and removed the row too
	// (asked for a read-only stash).
	HardDeleted bool `json:"hard_deleted,omitempty"`
}

// FreedSnapshot identifies a freed region snapshot.
type FreedSnapshot struct {
	RegionID   string `json:"region_id"`
	SnapshotID string `json:"snapshot_id"`
	TargetID   string `json:"target_id"`
}

func softDelete(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[DeleteParams](ac)
	if err != nil {
		return nil, err
	}
	// A read-only stash that frees nothing has nothing for the nodes up
	// to hard_delete to do: the volume-service removes its row at once.
	req := &volumev1.SoftDeleteVolumeRequest{
		VolumeId: p.VolumeID.String(), HardDeleteIfNothingFreed: p.Embedded && p.ReadOnlyStash,
	}
	if !p.Embedded {
		// A user's delete: never a replacement's stash or reference
		// volume, which its replacement deletes when it is done with it
		// (taken from under it, an unwinding swap could not put the old
		// target back).
		req.OnlyPurpose = volumev1.VolumePurpose_VOLUME_PURPOSE_DATA
	}
	resp, err := deps(ac).Volumes.SoftDeleteVolume(ctx, req)
	if err != nil {
		return nil, err
	}
	out := Freed{RegionIDs: resp.RegionIds, HardDeleted: resp.HardDeleted}
	for _, rs := range resp.RegionSnapshots {
		out.RegionSnapshots = append(out.RegionSnapshots, FreedSnapshot{RegionID: rs.RegionId, SnapshotID: rs.SnapshotId, TargetID: rs.TargetId})
	}
	return out, nil
}

// nothingToDetach: a read-only stash was never attached.
func nothingToDetach(ac *saga.ActionContext) (any, bool, error) {
	p, err := saga.Params[DeleteParams](ac)
	if err != nil || !p.ReadOnlyStash {
		return nil, false, err
	}
	return 0, true, nil
}

func detachUpstairs(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[DeleteParams](ac)
	if err != nil {
		return nil, err
	}
	n := deps(ac).Notifier
	detached := 0
	for token := ""; ; {
		resp, err := n.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{VolumeId: p.VolumeID.String(), PageSize: 100, PageToken: token})
		if err != nil {
			return nil, err
		}
		for _, a := range resp.Attachments {
			if _, err := n.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: a.AttachmentId}); notFoundOK(err) != nil {
				return nil, fmt.Errorf("detach %s from %s: %w", p.VolumeID, a.Endpoint, err)
			}
			detached++
		}
		if token = resp.NextPageToken; token == "" {
			break
		}
	}
	return detached, nil
}

func noFreedRegions(from string) saga.ShortcutFunc {
	return func(ac *saga.ActionContext) (any, bool, error) {
		f, err := saga.Lookup[Freed](ac, from)
		return nil, err == nil && len(f.RegionIDs) == 0, err
	}
}

func deleteFreedRegions(from string) saga.ActionFunc {
	return func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		f, err := saga.Lookup[Freed](ac, from)
		if err != nil {
			return nil, err
		}
		_, err = deps(ac).Allocator.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: f.RegionIDs})
		return nil, err
	}
}

func noFreedSnapshots(ac *saga.ActionContext) (any, bool, error) {
	f, err := saga.Lookup[Freed](ac, "soft_delete")
	return nil, err == nil && len(f.RegionSnapshots) == 0, err
}

func deleteFreedSnapshots(ctx context.Context, ac *saga.ActionContext) (any, error) {
	f, err := saga.Lookup[Freed](ac, "soft_delete")
	if err != nil {
		return nil, err
	}
	req := &allocatorv1.DeleteRegionSnapshotsRequest{}
	for _, rs := range f.RegionSnapshots {
		req.RegionSnapshots = append(req.RegionSnapshots, &allocatorv1.RegionSnapshotKey{RegionId: rs.RegionID, SnapshotId: rs.SnapshotID})
	}
	_, err = deps(ac).Allocator.DeleteRegionSnapshots(ctx, req)
	return nil, err
}

func nothingToUnregister(from string, withSnapshots bool) saga.ShortcutFunc {
	return func(ac *saga.ActionContext) (any, bool, error) {
		f, err := saga.Lookup[Freed](ac, from)
		return nil, err == nil && len(f.RegionIDs) == 0 && (!withSnapshots || len(f.RegionSnapshots) == 0), err
	}
}

func unregisterFreed(from string, withSnapshots bool) saga.ActionFunc {
	return func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		f, err := saga.Lookup[Freed](ac, from)
		if err != nil {
			return nil, err
		}
		ids := append([]string(nil), f.RegionIDs...)
		if withSnapshots {
			for _, rs := range f.RegionSnapshots {
				ids = append(ids, rs.TargetID)
			}
		}
		_, err = deps(ac).Volumes.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: ids})
		return nil, err
	}
}

// nothingToFind: a read-only stash owns no region, so its delete can only
// free a deleted disk's regions when it freed that disk's last region
// snapshot.
func nothingToFind(ac *saga.ActionContext) (any, bool, error) {
	p, err := saga.Params[DeleteParams](ac)
	if err != nil || !p.ReadOnlyStash {
		return nil, false, err
	}
	soft, err := saga.Lookup[Freed](ac, "soft_delete")
	if err != nil || len(soft.RegionSnapshots) > 0 {
		return nil, false, err
	}
	return Freed{}, true, nil
}

func findFreed(ctx context.Context, ac *saga.ActionContext) (any, error) {
	resp, err := deps(ac).Volumes.FindDeletedVolumeRegions(ctx, &volumev1.FindDeletedVolumeRegionsRequest{})
	if err != nil {
		return nil, err
	}
	return Freed{RegionIDs: resp.RegionIds, VolumeIDs: resp.VolumeIds}, nil
}

// alreadyHardDeleted: the soft delete of an embedded delete removed the row
// (it freed nothing, so no task needs waking either).
func alreadyHardDeleted(ac *saga.ActionContext) (any, bool, error) {
	p, err := saga.Params[DeleteParams](ac)
	if err != nil || !p.Embedded {
		return nil, false, err
	}
	soft, err := saga.Lookup[Freed](ac, "soft_delete")
	if err != nil || !soft.HardDeleted {
		return nil, false, err
	}
	f, err := saga.Lookup[Freed](ac, "find_freed")
	if err != nil || len(f.RegionIDs)+len(f.VolumeIDs) > 0 {
		return nil, false, err
	}
	return DeleteResult{HardDeleted: true}, true, nil
}

func hardDelete(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[DeleteParams](ac)
	if err != nil {
		return nil, err
	}
	f, err := saga.Lookup[Freed](ac, "find_freed")
	if err != nil {
		return nil, err
	}
	v := deps(ac).Volumes
	for _, id := range f.VolumeIDs {
		if id == p.VolumeID.String() {
			continue
		}
		if _, err := v.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: id}); err != nil {
			return nil, fmt.Errorf("hard delete freed volume %s: %w", id, err)
		}
	}
	resp, err := v.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: p.VolumeID.String()})
	if err != nil {
		return nil, err
	}
	soft, err := saga.Lookup[Freed](ac, "soft_delete")
	if err != nil {
		return nil, err
	}
	// Freed storage (or other volumes hard-deleted) may be what any task
	// waits on; an embedded delete that freed nothing leaves the wake-ups to
	// its saga (a fan-out's thousands of stash deletes would otherwise run
	// every detector once each).
	if !p.Embedded || len(soft.RegionIDs)+len(soft.RegionSnapshots)+len(f.RegionIDs)+len(f.VolumeIDs) > 0 {
		Wakeup(deps(ac).Wake.All)
	}
	return DeleteResult{HardDeleted: resp.Outcome == volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED}, nil
}
