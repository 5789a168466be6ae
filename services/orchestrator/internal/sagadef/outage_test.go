package sagadef_test

import (
	"context"
	"testing"
	"time"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/testsupport/stack"
)

// A real fault, not a hook: volume-create fails at its last node and
// unwinds while the volume-service process is stopped, for longer than
// the gRPC client's own retries (five tries within about a second). The
// undos that call it (register_regions' UnregisterTargets, then
// volume_guard's volume delete) fail with UNAVAILABLE until it is back;
// the engine retries them in place, and the unwind finishes: not stuck,
// nothing left behind.
func TestUndoOutlastsVolumeServiceOutage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	base := census(t, e)
	vol := e.Stack.Proc(stack.Volume)
	const outage = 4 * time.Second
	restarted := make(chan error, 1)
	var stopped time.Time
	h := &saga.Hooks{BeforeNode: func(_ context.Context, node string) {
		if node != "create_volume" {
			return
		}
		vol.Stop(10 * time.Second)
		stopped = time.Now()
		go func() {
			time.Sleep(outage)
			restarted <- vol.Restart()
		}()
	}}
	h.InjectError("create_volume")

	o := e.Run(t, sagadef.VolumeCreate, diskParams(), saga.WithHooks(h))
	if stopped.IsZero() {
		t.Fatal("the volume-service was never stopped")
	}
	if err := <-restarted; err != nil {
		t.Fatalf("restart the volume-service: %v", err)
	}
	if o.Kind != saga.Failed || o.FailedNode != "create_volume" {
		t.Fatalf("outcome %v at %q (%v), want failed at create_volume, unwound", o.Kind, o.FailedNode, o.Error())
	}
	if took := time.Since(stopped); took < outage {
		t.Fatalf("the unwind finished %v after the volume-service stopped, before it was back", took)
	}
	v, err := e.SEC.Get(context.Background(), o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range v.Nodes {
		switch n.Name {
		case "register_regions", "volume_guard":
			if n.Status != "undo_finished" {
				t.Errorf("node %s: %s, want undo_finished", n.Name, n.Status)
			}
		}
		if n.Name == "register_regions" {
			if n.Attempts < 2 {
				t.Errorf("register_regions' undo ran %d times: it never met the outage", n.Attempts)
			}
			t.Logf("register_regions' undo ran %d times over a %v outage", n.Attempts, outage)
		}
	}
	sagatest.NoUndoFailed(t, e.Pool)
	expectWorld(t, e, base)
}
