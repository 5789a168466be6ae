package sagadef

import (
	"context"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
)

// ro-replacement-step-garbage-collect: deletes a Complete step's stash, dropping that
// volume's old reference to A. Complete → Collecting → VolumeDeleted; the
// Collecting claim (docs/replacement.md, "Step") keeps two task
// passes from collecting one stash concurrently. Its nodes, each described
// where it is appended, are in newROStepGarbageCollect's build function.

// StepGCParams are ro-replacement-step-garbage-collect's parameters.
type StepGCParams struct {
	StepID  uuid.UUID `json:"step_id"`
	StashID uuid.UUID `json:"stash_id"`
}

// ROStepGarbageCollect is the ro-replacement-step-garbage-collect template.
var ROStepGarbageCollect = newROStepGarbageCollect()

func newROStepGarbageCollect() *saga.Template {
	t := saga.NewTemplate("ro-replacement-step-garbage-collect")
	id := t.Action("saga_id", operatingSagaID, nil).Local()
	claim := t.Action("set_saga_id", stepGCClaim, stepGCClaimUndo)
	commit := t.Action("update_request", stepGCCommit, nil)
	// The nodes, in order, each after the one before it.
	saga.SetBuild(t, func(b *saga.Builder, p StepGCParams) error {
		// saga_id: S = this saga's id.
		b.Append(id.Node())
		// set_saga_id: claim: Complete → Collecting. ⟲ back to Complete.
		b.Append(claim.Node())
		// delete_stash: volume-delete subsaga on the step's stash (after
		// its parameters, the constant delete_stash_params).
		deleteStepStashNodes(b, "delete_stash", p.StashID)
		// update_request: commit: VolumeDeleted.
		b.Append(commit.Node())
		return nil
	})
	return t
}

func stepGCParams(ac *saga.ActionContext) (StepGCParams, uuid.UUID, error) {
	p, err := saga.Params[StepGCParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func stepGCClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := stepGCParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetStepCollecting(ctx, p.StepID, s)
}

func stepGCClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := stepGCParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoStepCollecting(ctx, p.StepID, s)
}

func stepGCCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := stepGCParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetStepVolumeDeleted(ctx, p.StepID, s); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.ROFinish)
	return nil, nil
}
