package sagadef

import (
	"context"

	"github.com/google/uuid"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// rw-replacement-finish: the new region is repaired (or the volume is gone). Detaches
// the Pantry attachments the drive saga created (a reconciled volume must
// not keep a second rw consumer that would refuse the user's next
// instance), deletes the stash volume — which frees the old region — and
// completes the request, releasing the volume's lock.
// ReplacementDone → Completing → Complete; an unwind returns to
// ReplacementDone. Its nodes, each described where it is appended, are in
// newRWFinish's build function.

// RWFinishParams are rw-replacement-finish's parameters.
type RWFinishParams struct {
	RequestID     uuid.UUID `json:"request_id"`
	StashVolumeID uuid.UUID `json:"stash_volume_id"`
}

// RWFinish is the rw-replacement-finish template.
var RWFinish = newRWFinish()

func newRWFinish() *saga.Template {
	t := saga.NewTemplate("rw-replacement-finish")
	id := t.Action("saga_id", operatingSagaID, nil).Local()
	claim := t.Action("set_saga_id", rwFinishClaim, rwFinishClaimUndo)
	detach := t.Action("detach_pantry", rwDetachPantry, nil)
	commit := t.Action("update_request", rwFinishCommit, nil)
	// The nodes, in order, each after the one before it.
	saga.SetBuild(t, func(b *saga.Builder, p RWFinishParams) error {
		// saga_id: S = this saga's id.
		b.Append(id.Node())
		// set_saga_id: claim: ReplacementDone → Completing. ⟲ back.
		b.Append(claim.Node())
		// detach_pantry: DetachUpstairs for every Pantry attachment a drive
		// step recorded (idempotent).
		b.Append(detach.Node())
		// delete_stash: volume-delete subsaga on the stash volume (after
		// its parameters, the constant delete_stash_params).
		deleteVolumeNodes(b, "delete_stash", p.StashVolumeID)
		// update_request: commit: Complete, lock released.
		b.Append(commit.Node())
		return nil
	})
	return t
}

func rwFinishParams(ac *saga.ActionContext) (RWFinishParams, uuid.UUID, error) {
	p, err := saga.Params[RWFinishParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func rwFinishClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwFinishParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetRWCompleting(ctx, p.RequestID, s)
}

func rwFinishClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := rwFinishParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoRWCompleting(ctx, p.RequestID, s)
}

func rwDetachPantry(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, _, err := rwFinishParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	steps, err := d.Store.DriveSteps(ctx, p.RequestID)
	if err != nil {
		return nil, err
	}
	seen := map[uuid.UUID]bool{}
	var detached []string
	for _, s := range steps {
		if s.StepType != StepPantry || s.AttachmentID == nil || seen[*s.AttachmentID] {
			continue
		}
		seen[*s.AttachmentID] = true
		if _, err := d.Notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: s.AttachmentID.String()}); err != nil {
			return nil, err
		}
		detached = append(detached, s.AttachmentID.String())
	}
	return detached, nil
}

func rwFinishCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwFinishParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetRWComplete(ctx, p.RequestID, s); err != nil {
		return nil, err
	}
	// The volume's lock is released: another of its regions may now get a
	// request, and read-only requests on the same volume may proceed.
	Wakeup(d.Wake.RWDetector, d.Wake.RODetector)
	return nil, nil
}
