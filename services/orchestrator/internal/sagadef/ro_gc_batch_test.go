package sagadef_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// completeBatch runs a request to Running (its start's stash collected,
// so only the steps' stashes still hold A) and swaps F and n more clones
// in one batch: every step Complete with its stash. It returns the collect
// batch of those steps.
func (h *roHarness) completeBatch(t testing.TB, n int) (store.ROReplacement, sagadef.StepGCBatchParams, []store.Step) {
	t.Helper()
	more := h.clones(t, n)
	r := h.runToRunning(t, 0)
	p, steps := h.batchOf(t, r, append([]uuid.UUID{h.f}, more...))
	h.e.MustSucceed(t, sagadef.ROStepBatch, p)
	gc := sagadef.StepGCBatchParams{RequestID: r.ID}
	for i, s := range steps {
		got, err := h.e.Store.GetStep(context.Background(), s.ID)
		if err != nil || got.OldSnapshotVolumeID == nil {
			t.Fatalf("step %+v %v", got, err)
		}
		steps[i] = got
		gc.Steps = append(gc.Steps, sagadef.GCBatchStep{StepID: s.ID, StashID: *got.OldSnapshotVolumeID})
	}
	return r, gc, steps
}

func stepState(t testing.TB, e *testenv.Env, id uuid.UUID) store.Step {
	t.Helper()
	got, err := e.Store.GetStep(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// The collect batch removes every stash but the one holding A's last
// reference, whose step goes back to Complete; the per-step collect then
// frees A. The helpers on it: every action twice, an error at every node,
// every undo twice, a transient undo fault, lost answers.
func TestROStepGCBatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r, p, steps := h.completeBatch(t, 2)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROStepGCBatch, p)
	for _, s := range steps[:2] {
		if got := stepState(t, e, s.ID); got.State != store.StepVolumeDeleted || got.OperatingSagaID != nil {
			t.Fatalf("collected step %+v", got)
		}
		if volumeExists(t, e, *s.OldSnapshotVolumeID) {
			t.Fatalf("stash %s of a collected step still exists", *s.OldSnapshotVolumeID)
		}
	}
	last := stepState(t, e, steps[2].ID)
	if last.State != store.StepComplete || last.OperatingSagaID != nil || !volumeExists(t, e, *last.OldSnapshotVolumeID) {
		t.Fatalf("the last reference's step %+v: want Complete with its stash", last)
	}
	if targetGone(t, e, r.OldTargetID) {
		t.Fatal("the batch freed A")
	}
	invariantsHold(t, e)
	// Alone, it takes the per-step collect, which frees A.
	e.MustSucceed(t, sagadef.ROStepGarbageCollect, sagadef.StepGCParams{StepID: last.ID, StashID: *last.OldSnapshotVolumeID})
	if got := stepState(t, e, last.ID); got.State != store.StepVolumeDeleted {
		t.Fatalf("last step %+v", got)
	}
	if !targetGone(t, e, r.OldTargetID) {
		t.Fatal("A not freed by the last stash's delete")
	}
	invariantsHold(t, e)
	validateHolds(t, e)

	var cur []store.Step
	setup := func() any {
		hh := newROHarness(t, e)
		_, p, steps := hh.completeBatch(t, 1)
		cur = steps
		return p
	}
	check := func(t testing.TB) {
		for _, s := range cur {
			got := stepState(t, e, s.ID)
			if got.State != store.StepComplete || got.OperatingSagaID != nil || got.OldSnapshotVolumeID == nil || *got.OldSnapshotVolumeID != *s.OldSnapshotVolumeID {
				t.Fatalf("step after unwind %+v", got)
			}
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROStepGCBatch, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROStepGCBatch, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROStepGCBatch, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROStepGCBatch, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// A step the batch collect cannot claim (moved on, or Complete with
// another stash) is left alone; none claimable fails the claim with
// nothing changed.
func TestROStepGCBatchClaimsOnlyCompleteStepsWithTheirStash(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	_, p, steps := h.completeBatch(t, 2)
	wrong := p
	wrong.Steps = append([]sagadef.GCBatchStep(nil), p.Steps...)
	wrong.Steps[0].StashID = uuid.New()
	o := e.Run(t, sagadef.ROStepGCBatch, sagadef.StepGCBatchParams{RequestID: p.RequestID, Steps: wrong.Steps[:1]})
	if o.Kind != saga.Failed || o.FailedNode != "set_saga_id" {
		t.Fatalf("batch of a step with another stash: %v at %q", o.Kind, o.FailedNode)
	}
	if got := stepState(t, e, steps[0].ID); got.State != store.StepComplete || !volumeExists(t, e, *got.OldSnapshotVolumeID) {
		t.Fatalf("step %+v", got)
	}
	e.MustSucceed(t, sagadef.ROStepGCBatch, wrong)
	if got := stepState(t, e, steps[0].ID); got.State != store.StepComplete || !volumeExists(t, e, *got.OldSnapshotVolumeID) {
		t.Fatalf("step named with another stash was collected: %+v", got)
	}
	if got := stepState(t, e, steps[1].ID); got.State != store.StepVolumeDeleted {
		t.Fatalf("step %+v", got)
	}
	invariantsHold(t, e)
}

func targetGone(t testing.TB, e *testenv.Env, id uuid.UUID) bool {
	t.Helper()
	gone, err := sagadef.TargetGone(context.Background(), e.Deps, id)
	if err != nil {
		t.Fatal(err)
	}
	return gone
}
