package sagadef

import (
	"context"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
)

// ro-replacement-finish: once no step is in progress and A is gone, deletes the
// reference volume (dropping only its reference to B: real volumes keep B
// alive, and an unused B is freed, not leaked) and completes the request,
// releasing the snapshot volume's lock. Running → Completing → Complete; an
// unwind returns to Running. Its nodes, each described where it is
// appended, are in newROFinish's build function.

// FinishParams are ro-replacement-finish's parameters.
type FinishParams struct {
	RequestID         uuid.UUID  `json:"request_id"`
	NewRegionVolumeID *uuid.UUID `json:"new_region_volume_id,omitempty"`
}

// ROFinish is the ro-replacement-finish template.
var ROFinish = newROFinish()

func newROFinish() *saga.Template {
	t := saga.NewTemplate("ro-replacement-finish")
	id := t.Action("saga_id", operatingSagaID, nil).Local()
	claim := t.Action("set_saga_id", finishClaim, finishClaimUndo)
	commit := t.Action("update_request", finishCommit, nil)
	// The nodes, in order, each after the one before it.
	saga.SetBuild(t, func(b *saga.Builder, p FinishParams) error {
		// saga_id: S = this saga's id.
		b.Append(id.Node())
		// set_saga_id: claim: Running → Completing. ⟲ back to Running.
		b.Append(claim.Node())
		// delete_region_volume: volume-delete subsaga on the reference
		// volume (after its parameters, the constant
		// delete_region_volume_params).
		//
		// The DAG's shape depends on the parameters; safe because the
		// reference volume id never changes after ReplacementDone.
		if p.NewRegionVolumeID != nil {
			deleteVolumeNodes(b, "delete_region_volume", *p.NewRegionVolumeID)
		}
		// update_request: commit: Complete, lock released.
		b.Append(commit.Node())
		return nil
	})
	return t
}

func finishParams(ac *saga.ActionContext) (FinishParams, uuid.UUID, error) {
	p, err := saga.Params[FinishParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func finishClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := finishParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetROCompleting(ctx, p.RequestID, s)
}

func finishClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := finishParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoROCompleting(ctx, p.RequestID, s)
}

func finishCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := finishParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if err := d.Store.SetROComplete(ctx, p.RequestID, s); err != nil {
		return nil, err
	}
	Wakeup(d.Wake.RODetector)
	return nil, nil
}
