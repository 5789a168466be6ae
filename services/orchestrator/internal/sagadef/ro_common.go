package sagadef

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// RequestRef names a read-only replacement request in saga parameters.
type RequestRef struct {
	RequestID uuid.UUID `json:"request_id"`
}

// createBlankVolume creates an empty volume (no sub-volumes): a stash that
// ReplaceReadOnlyTarget overwrites with the old target, or that is deleted
// unused when the swap found its volume already gone. It is created as a
// stash: from the swap on it names the old target, and the step scan must
// never take it for one more volume to replace the target in.
func createBlankVolume(ctx context.Context, d *Deps, id uuid.UUID) error {
	_, err := d.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
		VolumeId: id.String(), Purpose: volumev1.VolumePurpose_VOLUME_PURPOSE_STASH,
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{
			Volume: &commonv1.VcrVolume{Id: id.String(), BlockSize: 512},
		}},
	})
	return err
}

// removeVolume undoes a volume this saga created, as the volume-delete saga
// would delete it: the soft delete may free what the volume referenced —
// a stash whose swap could not be undone (its volume was deleted meanwhile)
// holds the old target's last reference — so whatever it frees is destroyed
// and unregistered before the row is hard-deleted. Safe to repeat and on a
// missing volume: the soft delete returns its stored result.
func removeVolume(ctx context.Context, d *Deps, id uuid.UUID) error {
	freed, err := d.Volumes.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: id.String()})
	if err != nil {
		return err
	}
	if len(freed.RegionIds) > 0 {
		if _, err := d.Allocator.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: freed.RegionIds}); err != nil {
			return err
		}
	}
	unregister := append([]string(nil), freed.RegionIds...)
	if len(freed.RegionSnapshots) > 0 {
		req := &allocatorv1.DeleteRegionSnapshotsRequest{}
		for _, rs := range freed.RegionSnapshots {
			req.RegionSnapshots = append(req.RegionSnapshots, &allocatorv1.RegionSnapshotKey{RegionId: rs.RegionId, SnapshotId: rs.SnapshotId})
			unregister = append(unregister, rs.TargetId)
		}
		if _, err := d.Allocator.DeleteRegionSnapshots(ctx, req); err != nil {
			return err
		}
	}
	if len(unregister) > 0 {
		if _, err := d.Volumes.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: unregister}); err != nil {
			return err
		}
	}
	resp, err := d.Volumes.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: id.String()})
	if err != nil {
		return err
	}
	if resp.Outcome != volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED {
		return fmt.Errorf("volume %s kept: it owns rw regions %v", id, resp.RemainingRegionIds)
	}
	return nil
}

// targetGone reports whether a target is gone in the volume-service's
// sense: unregistered, or DELETING (its count reached zero, irreversibly).
func targetGone(ctx context.Context, d *Deps, id uuid.UUID) (bool, error) {
	resp, err := d.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: id.String()})
	if isCode(err, codes.NotFound) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return resp.Target.State == commonv1.TargetState_TARGET_STATE_DELETING, nil
}

// TargetGone is targetGone for tasks.
func TargetGone(ctx context.Context, d *Deps, id uuid.UUID) (bool, error) {
	return targetGone(ctx, d, id)
}

// Replacement is what a replace node persists: the two target ids and the
// result, so its undo never recomputes them from a world that has moved on.
type Replacement struct {
	Old    uuid.UUID `json:"old"`
	New    uuid.UUID `json:"new"`
	Stash  uuid.UUID `json:"stash"`
	Volume uuid.UUID `json:"volume"`
	Result string    `json:"result"`
}

// VolumeGone reports whether the swap found the volume deleted.
func (r Replacement) VolumeGone() bool {
	return r.Result == commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_EXISTING_VOLUME_SOFT_DELETED.String() ||
		r.Result == commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_EXISTING_VOLUME_HARD_DELETED.String()
}

func replaceReadOnly(ctx context.Context, d *Deps, r Replacement) (string, error) {
	resp, err := d.Volumes.ReplaceReadOnlyTarget(ctx, &volumev1.ReplaceReadOnlyTargetRequest{
		VolumeId: r.Volume.String(), OldTargetId: r.Old.String(), NewTargetId: r.New.String(), StashVolumeId: r.Stash.String(),
	})
	if err != nil {
		return "", err
	}
	return resp.Result.String(), nil
}

// swapPlan is what a swap node swaps, worked out from the saga's inputs
// as its action does; ok is false when the action swaps nothing.
type swapPlan func(ac *saga.ActionContext) (r Replacement, ok bool, err error)

// undoSwap is the undo of a swap node: it swaps back what the action
// swapped (its output), or, when the action failed with its outcome
// unknown, what it meant to swap (plan): swapping back a swap that never
// landed finds nothing to swap. Every result, including the deleted ones,
// is accepted so the saga never gets stuck holding the record's lock.
func undoSwap(plan swapPlan, swap func(context.Context, *Deps, Replacement) (string, error)) saga.UndoFunc {
	return func(ctx context.Context, ac *saga.ActionContext) error {
		var r Replacement
		if ac.OutcomeUnknown() {
			var ok bool
			var err error
			if r, ok, err = plan(ac); err != nil || !ok {
				return err
			}
		} else if err := ac.Output(&r); err != nil {
			return err
		}
		_, err := swap(ctx, deps(ac), Replacement{Volume: r.Volume, Old: r.New, New: r.Old, Stash: r.Stash})
		return err
	}
}

// deleteVolumeNodes appends a constant holding the delete parameters and
// the volume-delete subsaga on id.
func deleteVolumeNodes(b *saga.Builder, name string, id uuid.UUID) {
	appendDelete(b, name, DeleteParams{VolumeID: id, Embedded: true})
}

// deleteStepStashNodes is deleteVolumeNodes for a step's stash (see
// DeleteParams.ReadOnlyStash).
func deleteStepStashNodes(b *saga.Builder, name string, id uuid.UUID) {
	appendDelete(b, name, DeleteParams{VolumeID: id, Embedded: true, ReadOnlyStash: true})
}

func appendDelete(b *saga.Builder, name string, p DeleteParams) {
	b.Append(saga.ConstantNode(name+"_params", p))
	b.Append(saga.SubsagaNode(name, VolumeDelete, name+"_params", p))
}
