package tasks

import (
	"context"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// roFinish starts ro-replacement-finish for Running requests with no step in progress
// whose old target is gone (docs/replacement.md, "Why finishing needs both
// conditions"). Both are needed: right after the garbage collect no step
// exists yet, and a Complete step's stash still holds A until it is
// collected.
type roFinish struct {
	env     Env
	limiter *background.Limiter
}

// FinishStatus is the finish task's status per activation.
type FinishStatus struct {
	FinishInvokedOK []string `json:"finish_invoked_ok"`
	Skipped         Skips    `json:"skipped"`
	Errors          []string `json:"errors"`
}

// ROFinishName is the task's name (AdminService, metrics, logs).
const ROFinishName = "ro_replacement_finish"

func (t *roFinish) Name() string { return ROFinishName }
func (t *roFinish) Description() string {
	return "completes read-only replacements whose steps are all done and whose old target is gone"
}

func (t *roFinish) Activate(ctx context.Context) any {
	st := &FinishStatus{FinishInvokedOK: []string{}, Errors: []string{}}
	d := t.env.Deps
	reqs, err := d.Store.ROReplacementsIn(ctx, store.RORunning)
	if err != nil {
		errf(&st.Errors, "listing running: %v", err)
		return st
	}
	for _, r := range reqs {
		if t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()) {
			continue
		}
		busy, err := d.Store.HasStepsInProgress(ctx, r.ID)
		if err != nil {
			errf(&st.Errors, "request %s: steps: %v", r.ID, err)
			continue
		}
		if busy {
			st.Skipped.Add("request %s: steps still in progress", r.ID)
			continue
		}
		gone, err := sagadef.TargetGone(ctx, d, r.OldTargetID)
		if err != nil {
			errf(&st.Errors, "request %s: target: %v", r.ID, err)
			continue
		}
		if !gone {
			// Some volume (a stash being deleted, say) still references it.
			st.Skipped.Add("request %s: old target %s still referenced", r.ID, r.OldTargetID)
			continue
		}
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: r.ID.String(), record: r.ID, request: r.ID, task: t.Name(), attempts: r.Attempts, skipped: &st.Skipped}, sagadef.ROFinish,
			sagadef.FinishParams{RequestID: r.ID, NewRegionVolumeID: r.NewRegionVolumeID},
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(r.ID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "request %s: start saga: %v", r.ID, err)
		case ok:
			st.FinishInvokedOK = append(st.FinishInvokedOK, "request "+r.ID.String())
		}
	}
	return st
}
