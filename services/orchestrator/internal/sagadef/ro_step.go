package sagadef

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	"storagecp.dev/orchestrator/internal/saga"
)

// ro-replacement-step: replaces A with B in one more volume that still names A, and
// tells its running Upstairs. Step Requested → Running → Complete; an
// unwind returns the step to Requested and a later pass retries it. Its
// nodes, each described where it is declared, are in newROStep.

// StepParams are ro-replacement-step's parameters.
type StepParams struct {
	StepID    uuid.UUID `json:"step_id"`
	RequestID uuid.UUID `json:"request_id"`
	VolumeID  uuid.UUID `json:"volume_id"`
}

// ROStep is the ro-replacement-step template.
var ROStep = newROStep()

func newROStep() *saga.Template {
	t := saga.NewTemplate("ro-replacement-step")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// S = this saga's id.
		t.Action("saga_id", operatingSagaID, nil).Local(),
		// Generate the step's stash id T.
		t.Action("new_volume_id", newID, nil).Local(),
		// Claim: Requested → Running. ⟲ back to Requested.
		t.Action("set_saga_id", stepClaim, stepClaimUndo),
		// A and B, computed once and persisted (B must be alive: the
		// request's reference volume guarantees it, and replace_in_volume
		// refuses it otherwise).
		t.Action("create_replace_params", stepReplaceParams, nil),
		// Blank stash T. ⟲ remove it.
		t.Action("create_stash", stepCreateStash, stepCreateStashUndo),
		// ReplaceReadOnlyTarget(volume, A → B, T). ⟲ swap back.
		t.Action("replace_in_volume", stepReplace, undoSwap(stepSwap, replaceReadOnly)),
		// NotifyReplacement, unless the swap found the volume deleted
		// (nobody can be running it); a delete that lands after the swap
		// is VOLUME_DELETED, also done.
		t.Action("notify_upstairs", stepNotify, nil),
		// Commit: Complete with T (releases the volume's lock).
		t.Action("update_request", stepCommit, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, _ StepParams) error {
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

func stepParams(ac *saga.ActionContext) (StepParams, uuid.UUID, error) {
	p, err := saga.Params[StepParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func stepClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := stepParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetStepRunning(ctx, p.StepID, s)
}

func stepClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := stepParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoStepRunning(ctx, p.StepID, s)
}

// ReplaceParams are a step's A and B.
type ReplaceParams struct {
	Old uuid.UUID `json:"old"`
	New uuid.UUID `json:"new"`
}

func stepReplaceParams(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, _, err := stepParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	req, err := d.Store.GetROReplacement(ctx, p.RequestID)
	if err != nil {
		return nil, err
	}
	if req.NewRegionID == nil {
		return nil, fmt.Errorf("%w: request %s has no new region yet", errInvalidState, req.ID)
	}
	// B's liveness is not asked here: replace_in_volume refuses a B that
	// is not a registered ACTIVE target (FailedPrecondition), which unwinds
	// this saga the same way, and a fan-out saves a call per volume.
	return ReplaceParams{Old: req.OldTargetID, New: *req.NewRegionID}, nil
}

func stepCreateStash(ctx context.Context, ac *saga.ActionContext) (any, error) {
	id, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return nil, err
	}
	return nil, createBlankVolume(ctx, deps(ac), id)
}

func stepCreateStashUndo(ctx context.Context, ac *saga.ActionContext) error {
	id, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return err
	}
	return removeVolume(ctx, deps(ac), id)
}

// stepSwap is what replace_in_volume swaps: the volume's old target for
// the new one, the old one kept in the stash.
func stepSwap(ac *saga.ActionContext) (Replacement, bool, error) {
	p, _, err := stepParams(ac)
	if err != nil {
		return Replacement{}, false, err
	}
	rp, err := saga.Lookup[ReplaceParams](ac, "create_replace_params")
	if err != nil {
		return Replacement{}, false, err
	}
	stash, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return Replacement{}, false, err
	}
	return Replacement{Volume: p.VolumeID, Old: rp.Old, New: rp.New, Stash: stash}, true, nil
}

func stepReplace(ctx context.Context, ac *saga.ActionContext) (any, error) {
	r, _, err := stepSwap(ac)
	if err != nil {
		return nil, err
	}
	if r, ok := sabotageSkipSwap(ac, r); ok {
		return r, nil
	}
	r.Result, err = replaceReadOnly(ctx, deps(ac), r)
	return r, err
}

// stepNotify tells the volume's running Upstairs to switch to the VCR that
// now names B. The notifier reads the VCR itself (keys never pass through
// here). Any Upstairs still starting, migrating or stopping makes it fail:
// the saga unwinds and a later pass retries, so a consumer that checked out
// the old VCR can never be missed. With nothing attached there is nothing to
// tell: any later construction reads the new VCR.
func stepNotify(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, _, err := stepParams(ac)
	if err != nil {
		return nil, err
	}
	r, err := saga.Lookup[Replacement](ac, "replace_in_volume")
	if err != nil {
		return nil, err
	}
	if r.VolumeGone() {
		return "volume deleted: nothing to notify", nil
	}
	resp, err := deps(ac).Notifier.NotifyReplacement(ctx, &notifierv1.NotifyReplacementRequest{
		VolumeId: p.VolumeID.String(), StepKey: p.StepID.String(),
	})
	if isCode(err, codes.NotFound) {
		// The swap found the volume; only its hard delete since makes it
		// unknown now. Nobody runs a deleted volume.
		return "volume deleted since the swap: nothing to notify", nil
	}
	if err != nil {
		return nil, err
	}
	// VOLUME_DELETED (deleted since the swap, its Upstairs detached rather
	// than told) completes the step like NOTIFIED: the seed's rule that a
	// step whose volume is deleted skips the notification holds whenever
	// the delete lands, not only when the swap itself saw it.
	return resp.Outcome.String(), nil
}

func stepCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := stepParams(ac)
	if err != nil {
		return nil, err
	}
	stash, err := saga.Lookup[uuid.UUID](ac, "new_volume_id")
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetStepComplete(ctx, p.StepID, s, stash); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.ROStep)
	return nil, nil
}
