package sagadef

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// ro-replacement-step-garbage-collect-batch: ro-replacement-step-garbage-collect
// for many Complete steps of one request (docs/replacement.md, "The batch
// collect"). A fan-out's stashes all name the same old target, and all but
// the last to go free nothing: for those, the whole of volume-delete is one
// soft delete that removes the row. This saga does that for a batch of
// stashes in one volume-service transaction, with one claim and one commit
// for the batch. A stash whose removal would free something (the last
// reference to the target) or that the volume-service cannot remove
// outright is kept, and its step goes back to Complete for
// ro-replacement-step-garbage-collect, which frees what it must. Its nodes,
// each described where it is declared, are in newROStepGCBatch.

// GCBatchStep is one step of a collect batch, with the stash its Complete
// state records.
type GCBatchStep struct {
	StepID  uuid.UUID `json:"step_id"`
	StashID uuid.UUID `json:"stash_id"`
}

// StepGCBatchParams are ro-replacement-step-garbage-collect-batch's
// parameters: Complete steps of one request, each with a distinct stash.
type StepGCBatchParams struct {
	RequestID uuid.UUID     `json:"request_id"`
	Steps     []GCBatchStep `json:"steps"`
}

// GCBatchCollected is delete_stashes' output: the claimed steps whose
// stash is gone (removed now or before), and those whose stash was kept.
type GCBatchCollected struct {
	Collected []uuid.UUID `json:"collected"`
	Kept      []uuid.UUID `json:"kept"`
}

// ROStepGCBatch is the ro-replacement-step-garbage-collect-batch template.
var ROStepGCBatch = newROStepGCBatch()

func newROStepGCBatch() *saga.Template {
	t := saga.NewTemplate("ro-replacement-step-garbage-collect-batch")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// S = this saga's id.
		t.Action("saga_id", operatingSagaID, nil).Local(),
		// Claim: Complete → Collecting for every step still Complete with
		// the stash the parameters name, in one transaction; the output
		// is the steps claimed. ⟲ every step this saga holds back to
		// Complete.
		t.Action("set_saga_id", gcBatchClaim, gcBatchClaimUndo),
		// DeleteReadOnlyStashes on the claimed steps' stashes. No undo: a
		// delete is never rolled back, and a stash removed here is, to a
		// step an unwind returns to Complete, a missing volume, which
		// volume-delete deletes by doing nothing.
		t.Action("delete_stashes", gcBatchDelete, nil),
		// Commit: VolumeDeleted for the steps whose stash is gone,
		// Complete again for those kept, in one transaction.
		t.Action("update_request", gcBatchCommit, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, p StepGCBatchParams) error {
		if err := checkGCBatch(p); err != nil {
			return err
		}
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

// checkGCBatch refuses parameters the volume-service would refuse whole.
func checkGCBatch(p StepGCBatchParams) error {
	_, stashes := gcBatchIDs(p)
	return checkBatchIDs("stash", stashes)
}

func gcBatchParams(ac *saga.ActionContext) (StepGCBatchParams, uuid.UUID, error) {
	p, err := saga.Params[StepGCBatchParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func gcBatchIDs(p StepGCBatchParams) (steps, stashes []uuid.UUID) {
	for _, s := range p.Steps {
		steps = append(steps, s.StepID)
		stashes = append(stashes, s.StashID)
	}
	return steps, stashes
}

func gcBatchClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := gcBatchParams(ac)
	if err != nil {
		return nil, err
	}
	steps, stashes := gcBatchIDs(p)
	return deps(ac).Store.SetStepsCollecting(ctx, steps, stashes, s)
}

func gcBatchClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := gcBatchParams(ac)
	if err != nil {
		return err
	}
	steps, _ := gcBatchIDs(p)
	return deps(ac).Store.UndoStepsCollecting(ctx, steps, s)
}

func gcBatchDelete(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, err := saga.Params[StepGCBatchParams](ac)
	if err != nil {
		return nil, err
	}
	claimed, err := saga.Lookup[[]uuid.UUID](ac, "set_saga_id")
	if err != nil {
		return nil, err
	}
	stash := map[uuid.UUID]uuid.UUID{}
	for _, s := range p.Steps {
		stash[s.StepID] = s.StashID
	}
	req := &volumev1.DeleteReadOnlyStashesRequest{}
	for _, id := range claimed {
		req.VolumeIds = append(req.VolumeIds, stash[id].String())
	}
	out := GCBatchCollected{Collected: []uuid.UUID{}, Kept: []uuid.UUID{}}
	if len(claimed) == 0 {
		return out, nil
	}
	resp, err := deps(ac).Volumes.DeleteReadOnlyStashes(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.Results) != len(claimed) {
		return nil, fmt.Errorf("%w: %d results for %d stashes", errInvalidState, len(resp.Results), len(claimed))
	}
	for i, r := range resp.Results {
		switch r {
		case volumev1.StashDeleteResult_STASH_DELETE_RESULT_REMOVED, volumev1.StashDeleteResult_STASH_DELETE_RESULT_MISSING:
			out.Collected = append(out.Collected, claimed[i])
		case volumev1.StashDeleteResult_STASH_DELETE_RESULT_KEPT:
			out.Kept = append(out.Kept, claimed[i])
		default:
			return nil, fmt.Errorf("%w: stash %s: result %s", errInvalidState, req.VolumeIds[i], r)
		}
	}
	return out, nil
}

func gcBatchCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	_, s, err := gcBatchParams(ac)
	if err != nil {
		return nil, err
	}
	c, err := saga.Lookup[GCBatchCollected](ac, "delete_stashes")
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetStepsCollected(ctx, s, c.Collected, c.Kept); err != nil {
		return nil, err
	}
	if len(c.Collected) > 0 {
		Wakeup(d.Wake.ROFinish)
	}
	if len(c.Kept) > 0 {
		Wakeup(d.Wake.ROStep)
	}
	return nil, nil
}
