package tasks

import (
	"context"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// roGC starts ro-replacement-garbage-collect for ReplacementDone requests
// (docs/replacement.md, "ro-replacement-garbage-collect").
type roGC struct {
	env     Env
	limiter *background.Limiter
}

// GCStatus is the garbage-collect task's status per activation.
type GCStatus struct {
	GarbageCollectRequested []string `json:"garbage_collect_requested"`
	Skipped                 Skips    `json:"skipped"`
	Errors                  []string `json:"errors"`
}

// ROGarbageCollectName is the task's name (AdminService, metrics, logs).
const ROGarbageCollectName = "ro_replacement_garbage_collect"

func (t *roGC) Name() string { return ROGarbageCollectName }
func (t *roGC) Description() string {
	return "deletes the stash volume of read-only replacements whose snapshot volume was swapped"
}

func (t *roGC) Activate(ctx context.Context) any {
	st := &GCStatus{GarbageCollectRequested: []string{}, Errors: []string{}}
	reqs, err := t.env.Deps.Store.ROReplacementsIn(ctx, store.ROReplacementDone)
	if err != nil {
		errf(&st.Errors, "listing replacement_done: %v", err)
		return st
	}
	for _, r := range reqs {
		if t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()) {
			continue
		}
		if r.OldSnapshotVolumeID == nil {
			errf(&st.Errors, "request %s: illegal state: replacement_done without a stash volume", r.ID)
			continue
		}
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: r.ID.String(), record: r.ID, request: r.ID, task: t.Name(), attempts: r.Attempts, skipped: &st.Skipped}, sagadef.ROGarbageCollect,
			sagadef.GCParams{RequestID: r.ID, StashID: *r.OldSnapshotVolumeID},
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(r.ID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "request %s: start saga: %v", r.ID, err)
		case ok:
			st.GarbageCollectRequested = append(st.GarbageCollectRequested, "request "+r.ID.String())
		}
	}
	return st
}
