package tasks

import (
	"context"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// rwFinish starts rw-replacement-finish for ReplacementDone requests: delete the stash
// (freeing the old region) and complete, releasing the volume's lock.
type rwFinish struct {
	env     Env
	limiter *background.Limiter
}

// RWFinishName is the task's name (AdminService, metrics, logs).
const RWFinishName = "rw_replacement_finish"

func (t *rwFinish) Name() string { return RWFinishName }
func (t *rwFinish) Description() string {
	return "completes rw region replacements whose new region is repaired, freeing the old region"
}

func (t *rwFinish) Activate(ctx context.Context) any {
	st := &FinishStatus{FinishInvokedOK: []string{}, Errors: []string{}}
	d := t.env.Deps
	reqs, err := d.Store.RWReplacementsIn(ctx, store.RWReplacementDone)
	if err != nil {
		errf(&st.Errors, "listing replacement_done: %v", err)
		return st
	}
	for _, r := range reqs {
		if t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()) {
			continue
		}
		if r.OldRegionVolumeID == nil {
			errf(&st.Errors, "request %s: done without a stash volume", r.ID)
			continue
		}
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: r.ID.String(), record: r.ID, request: r.ID, task: t.Name(), attempts: r.Attempts, skipped: &st.Skipped}, sagadef.RWFinish,
			sagadef.RWFinishParams{RequestID: r.ID, StashVolumeID: *r.OldRegionVolumeID},
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
