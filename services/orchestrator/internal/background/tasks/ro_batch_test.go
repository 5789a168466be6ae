package tasks

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
)

// An unwound batch's steps are back at Requested from its claim's undo
// before the task charges them the failed attempt. A pass that reads them
// in that moment must neither batch them again nor start them twice: the
// attempt is what sends them the per-volume way. The batch here never
// runs; the test ends it, failed, right after the pass has read the
// Requested steps, and waits until its end is fully handled.
func TestUnwoundBatchIsNotBatchedAgain(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	clones := []uuid.UUID{f.clone(snap), f.clone(snap), f.clone(snap)}
	f.toRunning(f.request(snap, f.regionSnapshots(snap)[0]))

	var mu sync.Mutex
	var batches []chan saga.Outcome
	f.env.StepBatch = 8
	f.env.Retry = RetryBackoff{Initial: time.Millisecond, Max: time.Millisecond}
	f.env.Start = func(ctx context.Context, tpl *saga.Template, params any, opts ...saga.CreateOption) (uuid.UUID, <-chan saga.Outcome, error) {
		if tpl != sagadef.ROStepBatch {
			return f.rec.start(ctx, tpl, params, opts...)
		}
		done := make(chan saga.Outcome, 1)
		mu.Lock()
		batches = append(batches, done)
		mu.Unlock()
		return uuid.New(), done, nil
	}
	task := f.step()
	ctx := context.Background()

	st := task.Activate(ctx).(*StepStatus)
	noErrors(t, st.Errors)
	if len(batches) != 1 || len(st.StepInvokedOK) != len(clones) {
		t.Fatalf("first pass: %d batches, status %+v; want one batch of %d", len(batches), st, len(clones))
	}

	task.afterRequestedRead = func() {
		task.afterRequestedRead = nil
		batches[0] <- saga.Outcome{Kind: saga.Failed, FailedNode: "notify_upstairs", Err: &saga.ActionError{Message: "notifier unavailable"}}
		deadline := time.Now().Add(30 * time.Second)
		for {
			task.mu.Lock()
			n := len(task.inflight)
			task.mu.Unlock()
			if n == 0 {
				return
			}
			if time.Now().After(deadline) {
				t.Error("the failed batch's end was not handled in 30 s")
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	st = task.Activate(ctx).(*StepStatus)
	noErrors(t, st.Errors)
	if len(batches) != 1 {
		t.Fatalf("the unwound batch's steps were batched again (%d batches): %+v", len(batches), st.StepInvokedOK)
	}

	// The next pass sends each the per-volume way, once.
	st = task.Activate(ctx).(*StepStatus)
	noErrors(t, st.Errors)
	if got := f.rec.count(sagadef.ROStep.Name()); got != len(clones) || len(batches) != 1 {
		t.Fatalf("%d ro-replacement-step and %d batches after the unwind; want %d and 1 (status %+v)", got, len(batches), len(clones), st)
	}
	f.rec.settle(t)
}
