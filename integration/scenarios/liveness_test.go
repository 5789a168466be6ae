package scenarios

import (
	"fmt"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
)

// Without any pass of the period, a request whose clones are all stepped
// must still complete: each phase activates the next. An ro-replacement-step saga's
// last node marks the step Complete and activates the step task, whose
// collect phase starts ro-replacement-step-garbage-collect through the same limiter
// under the same key (the step id) — while the finishing ro-replacement-step saga may
// still hold that key's slot. TryAcquire then fails silently, nothing is
// started or reported, and nothing activates the task again: the step
// stays Complete (the request Running) until the period. Fixed (its own
// key for the garbage collect; a released slot re-activates its task);
// timing-dependent (it hit about one step in ten), hence many clones.
func TestStepCompletionCollectedWithoutPeriod(t *testing.T) {
	w := newWorld(t, 4)
	for i := 0; i < 8; i++ {
		w.clone(t)
	}
	id := w.request(t, w.A.TargetId)
	harness.Eventually(t, 30*time.Second, "Complete with no pass of the period", func() error {
		got, err := w.Replacement.GetReplacement(w.ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id})
		if err != nil {
			return err
		}
		if got.Replacement.ReadOnlyState != roComplete {
			return fmt.Errorf("request %v, steps %v", got.Replacement.ReadOnlyState, got.Steps)
		}
		return nil
	})
	w.finish(t)
}
