package tasks

import (
	"context"
	"fmt"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// roStart drives Requested requests (docs/replacement.md, "How the
// background tasks chain"): a request whose target is already gone
// completes at once (nothing can reference it any
// more); the others get an ro-replacement-start saga. A deleted snapshot volume is no
// reason to skip: copies of its targets may live on in clones.
type roStart struct {
	env     Env
	limiter *background.Limiter
	lost    lostAnswers // requests whose completion ended in an error
}

// StartStatus is the start task's status per activation.
type StartStatus struct {
	StartInvokedOK      []string `json:"start_invoked_ok"`
	RequestsCompletedOK []string `json:"requests_completed_ok"`
	// DataLost lists every request that ended with no surviving copy of its
	// data: a standing alert, repeated on every activation.
	DataLost []string `json:"data_lost"`
	Skipped  Skips    `json:"skipped"`
	Errors   []string `json:"errors"`
	// Budgets: the rebuild budgets' plan this pass (shared with the rw
	// detector): what was admitted in which order, what was held back by
	// which budget.
	Budgets *BudgetStatus `json:"budgets,omitempty"`
}

// ROStartName is the task's name (AdminService, metrics, logs).
const ROStartName = "ro_replacement_start"

func (t *roStart) Name() string { return ROStartName }
func (t *roStart) Description() string {
	return "starts ro-replacement-start for requested read-only replacements, or completes those whose target is gone"
}

func (t *roStart) Activate(ctx context.Context) any {
	st := &StartStatus{StartInvokedOK: []string{}, RequestsCompletedOK: []string{}, DataLost: []string{}, Errors: []string{}}
	d := t.env.Deps
	if lost, err := d.Store.ROReplacementsIn(ctx, store.RODataLost); err != nil {
		errf(&st.Errors, "listing data_lost: %v", err)
	} else {
		for _, r := range lost {
			st.DataLost = append(st.DataLost, fmt.Sprintf("request %s: target %s of snapshot %s", r.ID, r.OldTargetID, r.OldSnapshotID))
		}
	}
	reqs, err := d.Store.ROReplacementsIn(ctx, store.RORequested)
	if err != nil {
		errf(&st.Errors, "listing requested: %v", err)
		return st
	}
	completed := advancedPast(&t.lost, reqs, func(r store.ROReplacement) uuid.UUID { return r.ID }) > 0
	waiting := reqs[:0:0]
	for _, r := range reqs {
		if t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()) {
			waiting = append(waiting, r)
			continue
		}
		gone, err := sagadef.TargetGone(ctx, d, r.OldTargetID)
		if err != nil {
			errf(&st.Errors, "request %s: target %s: %v", r.ID, r.OldTargetID, err)
			waiting = append(waiting, r)
			continue
		}
		if !gone {
			waiting = append(waiting, r)
			continue
		}
		if err := d.Store.SetROCompleteFromRequested(ctx, r.ID); err != nil {
			errf(&st.Errors, "request %s: complete: %v", r.ID, err)
			t.lost.note(r.ID)
			waiting = append(waiting, r)
			continue
		}
		st.RequestsCompletedOK = append(st.RequestsCompletedOK, "replacement "+r.ID.String())
		completed = true
	}
	// The others start in the budgets' order, as far as they have room.
	admitted, other, budgets, err := t.env.planFrom(ctx, kindRO, requestedLists{ro: waiting, haveRO: true})
	st.Budgets = budgets
	if err != nil {
		errf(&st.Errors, "planning under the rebuild budgets: %v", err)
	}
	for _, c := range admitted {
		r := c.ro
		p := sagadef.StartParams{
			RequestID: r.ID, Kind: string(r.Kind), OldTargetID: r.OldTargetID, OldRegionID: r.OldRegionID,
			OldSnapshotID: r.OldSnapshotID, OldDatasetID: r.OldDatasetID,
		}
		adm := t.env.Admission
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: r.ID.String(), record: r.ID, request: r.ID, task: t.Name(), attempts: r.Attempts, skipped: &st.Skipped,
			ended: func() { adm.ended(r.ID) }}, sagadef.ROStart, p,
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(r.ID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "request %s: start saga: %v", r.ID, err)
		case ok:
			st.StartInvokedOK = append(st.StartInvokedOK, "request "+r.ID.String())
		}
	}
	if other {
		sagadef.Wakeup(d.Wake.RWDetector)
	}
	if completed {
		// A released snapshot-volume lock may unblock another target.
		sagadef.Wakeup(d.Wake.RODetector)
	}
	return st
}
