package sagadef

import (
	"context"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
)

// ro-replacement-garbage-collect: deletes the request's stash volume, dropping the
// snapshot volume's old reference to A (if it was the last one, A is freed).
// ReplacementDone → DeletingOldVolume → Running; an unwind returns to
// ReplacementDone. Its nodes, each described where it is appended, are in
// newROGarbageCollect's build function.

// GCParams are ro-replacement-garbage-collect's parameters.
type GCParams struct {
	RequestID uuid.UUID `json:"request_id"`
	StashID   uuid.UUID `json:"stash_id"`
}

// ROGarbageCollect is the ro-replacement-garbage-collect template.
var ROGarbageCollect = newROGarbageCollect()

func newROGarbageCollect() *saga.Template {
	t := saga.NewTemplate("ro-replacement-garbage-collect")
	id := t.Action("saga_id", operatingSagaID, nil).Local()
	claim := t.Action("set_saga_id", roGCClaim, roGCClaimUndo)
	commit := t.Action("update_request", roGCCommit, nil)
	// The nodes, in order, each after the one before it.
	saga.SetBuild(t, func(b *saga.Builder, p GCParams) error {
		// saga_id: S = this saga's id.
		b.Append(id.Node())
		// set_saga_id: claim: ReplacementDone → DeletingOldVolume. ⟲ back.
		b.Append(claim.Node())
		// delete_stash: volume-delete subsaga on the stash (after its
		// parameters, the constant delete_stash_params).
		deleteVolumeNodes(b, "delete_stash", p.StashID)
		// update_request: commit: Running.
		b.Append(commit.Node())
		return nil
	})
	return t
}

func gcParams(ac *saga.ActionContext) (GCParams, uuid.UUID, error) {
	p, err := saga.Params[GCParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func roGCClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := gcParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetRODeletingOldVolume(ctx, p.RequestID, s)
}

func roGCClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := gcParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoRODeletingOldVolume(ctx, p.RequestID, s)
}

func roGCCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := gcParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetRORunning(ctx, p.RequestID, s); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.ROStep, d.Wake.ROFinish)
	return nil, nil
}
