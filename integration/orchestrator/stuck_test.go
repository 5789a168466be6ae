package orchestrator

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// A saga whose undo fails with a permanent error is stuck: shown as stuck,
// with the reason, holding its lock, never retried (not even by a restarted
// orchestrator), reported by ValidateSystem — until an operator, having
// dealt with what the failed undo left, abandons it: the undo is skipped,
// the rest unwinds, and the lock is released. (An undo failing with a retryable error is
// retried until it clears instead: see saga's package comment.)
func TestStuckSagaIsKeptVisibleUntilAbandoned(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	for _, f := range []*allocatorv1.InjectAgentFaultRequest{
		// the node fails …
		{Operation: allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT, Count: 1000, Fail: true},
		// … and so does its cleanup, for good
		{Operation: allocatorv1.AgentOperation_AGENT_OPERATION_DELETE_SNAPSHOT, Count: 1000, Fail: true, Permanent: true},
	} {
		if _, err := faults.InjectAgentFault(ctx, f); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Saga.Outcome != orchestratorv1.SagaOutcome_SAGA_OUTCOME_STUCK {
		t.Fatalf("outcome %v, want STUCK", resp.Saga.Outcome)
	}
	if _, err := faults.ClearAgentFaults(ctx, &allocatorv1.ClearAgentFaultsRequest{}); err != nil {
		t.Fatal(err)
	}
	id := resp.Saga.SagaId
	stuck := func() *orchestratorv1.GetSagaResponse {
		t.Helper()
		s, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: id})
		if err != nil {
			t.Fatal(err)
		}
		if s.Saga.Outcome != "stuck" {
			t.Fatalf("saga shows %q, want stuck", s.Saga.Outcome)
		}
		return s
	}
	first := stuck()
	events := len(first.Events)
	var why string
	for _, n := range first.Nodes {
		if n.Status == "undo_failed" {
			why = n.ErrorReason
		}
	}
	if why != "grpc:FailedPrecondition" {
		t.Fatalf("the stuck node's error reason is %q, want grpc:FailedPrecondition", why)
	}
	lockHeld := func() bool {
		locks, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range locks.Locks {
			if l.VolumeId == disk {
				return true
			}
		}
		return false
	}
	if !lockHeld() {
		t.Fatal("the stuck saga released the disk's lock")
	}
	// A restarted orchestrator does not retry it.
	r.RestartOrchestrator(t)
	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	if after := stuck(); len(after.Events) != events {
		t.Fatalf("the stuck saga was retried: %d events, then %d", events, len(after.Events))
	}
	v, err := r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, x := range v.Violations {
		if x.Code == "stuck_saga" && x.Subject == id {
			found = true
		}
	}
	if !found {
		t.Fatalf("ValidateSystem does not report the stuck saga: %v", v.Violations)
	}
	// Marking it abandoned without unwinding races its owner, who holds a
	// live lease: refused unless forced.
	if _, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: id, Comment: "test", KeepEffects: true}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("abandon keeping effects without force while the owner leads: %v", err)
	}
	// The operator's way back: they dealt with the snapshot the failed undo
	// left, and abandon the saga, which skips that undo and unwinds the rest
	// (releasing the lock).
	ab, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: id, Comment: "deleted the snapshot by hand"})
	if err != nil {
		t.Fatal(err)
	}
	if !ab.Unwound || !ab.Finished || len(ab.SkippedUndos) != 1 {
		t.Fatalf("abandon: unwound %v finished %v skipped %v", ab.Unwound, ab.Finished, ab.SkippedUndos)
	}
	if ab.Saga.State != orchestratorv1.SagaState_SAGA_STATE_DONE || ab.Saga.Outcome != "failed" || ab.Saga.UnwindComment != "deleted the snapshot by hand" {
		t.Fatalf("saga after the abandon: %v, outcome %q, comment %q", ab.Saga.State, ab.Saga.Outcome, ab.Saga.UnwindComment)
	}
	if lockHeld() {
		t.Fatal("the unwound saga still holds the disk's lock")
	}
	got, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: id})
	if err != nil {
		t.Fatal(err)
	}
	skipped := 0
	for _, n := range got.Nodes {
		if n.Status == "undo_skipped" {
			skipped++
		}
	}
	if skipped != 1 {
		t.Fatalf("%d undo_skipped nodes, want 1", skipped)
	}
	if _, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: id, Comment: "again"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("abandon of a saga that finished unwinding: %v", err)
	}
	v, err = r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range v.Violations {
		if x.Subject == id {
			t.Fatalf("ValidateSystem still reports the saga: %v", x)
		}
	}
	// The disk can be snapshotted again.
	harness.Eventually(t, 10*time.Second, "disk snapshot after abandon", func() error {
		_, err := r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: true})
		return err
	})
}
