package orchestrator

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// ListSagas shows every saga's real outcome, the one GetSaga shows:
// succeeded, failed (unwound), stuck, running, abandoned — not "running"
// for everything finished.
func TestListSagasShowsEachOutcome(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	inject := func(op allocatorv1.AgentOperation, fail bool, delay time.Duration) {
		t.Helper()
		// Permanent: an undo meeting a retryable fault retries until it
		// clears; only a permanent one leaves its saga stuck.
		req := &allocatorv1.InjectAgentFaultRequest{Operation: op, Count: 1000, Fail: fail, Permanent: fail}
		if delay > 0 {
			req.Delay = durationpb.New(delay)
		}
		if _, err := faults.InjectAgentFault(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	clearFaults := func() {
		t.Helper()
		if _, err := faults.ClearAgentFaults(ctx, &allocatorv1.ClearAgentFaultsRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	snapshot := func(disk string, wait bool) *orchestratorv1.SagaResult {
		t.Helper()
		resp, err := r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: wait})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Saga
	}

	created, err := r.Lifecycle.CreateVolume(ctx, &orchestratorv1.CreateVolumeRequest{SizeBytes: rack.GiB, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	rack.WantSucceeded(t, "create", created.Saga)
	want := map[string]string{created.Saga.SagaId: "succeeded"}

	// A snapshot whose agent call fails unwinds cleanly: failed.
	inject(allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT, true, 0)
	failed := snapshot(created.VolumeId, true)
	if failed.Outcome != orchestratorv1.SagaOutcome_SAGA_OUTCOME_FAILED {
		t.Fatalf("snapshot with a failing agent: %v", failed.Outcome)
	}
	want[failed.SagaId] = "failed"
	// … and when its cleanup fails too: stuck (on another disk, since a
	// stuck saga keeps its lock).
	inject(allocatorv1.AgentOperation_AGENT_OPERATION_DELETE_SNAPSHOT, true, 0)
	stuck := snapshot(r.CreateDisk(t), true)
	if stuck.Outcome != orchestratorv1.SagaOutcome_SAGA_OUTCOME_STUCK {
		t.Fatalf("snapshot with failing agent and cleanup: %v", stuck.Outcome)
	}
	want[stuck.SagaId] = "stuck"
	clearFaults()
	// Two snapshots held in their agent call: running; one is then
	// abandoned.
	inject(allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT, false, time.Minute)
	running := snapshot(r.CreateDisk(t), false)
	abandoned := snapshot(r.CreateDisk(t), false)
	want[running.SagaId], want[abandoned.SagaId] = "running", "abandoned"
	if _, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: abandoned.SagaId, Comment: "test", Force: true, KeepEffects: true}); err != nil {
		t.Fatal(err)
	}

	list, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range list.Sagas {
		got, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
		if err != nil {
			t.Fatal(err)
		}
		if s.Outcome != got.Saga.Outcome {
			t.Errorf("%s saga %s: ListSagas says %q, GetSaga says %q", s.Name, s.SagaId, s.Outcome, got.Saga.Outcome)
		}
		if w, ok := want[s.SagaId]; ok {
			seen[s.SagaId] = true
			if s.Outcome != w {
				t.Errorf("%s saga %s: ListSagas says %q, want %q", s.Name, s.SagaId, s.Outcome, w)
			}
		}
	}
	if len(seen) != len(want) {
		t.Errorf("listed %d of the %d sagas of interest", len(seen), len(want))
	}
	// The state filter keeps the outcomes; an undefined state is refused.
	done, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000, State: orchestratorv1.SagaState_SAGA_STATE_DONE})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range done.Sagas {
		if s.Outcome == "running" || s.Outcome == "abandoned" {
			t.Errorf("done saga %s listed as %q", s.SagaId, s.Outcome)
		}
	}
	_, err = r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{State: orchestratorv1.SagaState(42)})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("ListSagas with an undefined state: %v", err)
	}
}
