package waiting

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// An operator abandons a replacement's saga while its agent call is slow:
// the saga unwinds (the call, finishing within the unwind grace, is undone
// too), the request goes back to Requested with the abandonment as a
// failed attempt, its task starts a new saga, and the request completes.
// Afterwards ValidateSystem is empty and no lock is held. What cannot be
// abandoned is refused, saying why.
func TestAbandonRunningSagaUnwindsAndTheRequestCompletes(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	// The new region's agent call takes 3 s: the saga is caught in flight,
	// and the call ends well within the 10 s unwind grace.
	if _, err := faults.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1, Delay: durationpb.New(3 * time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	req, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil {
		t.Fatal(err)
	}
	id := req.Replacement.ReplacementId
	var sagaID string
	harness.Eventually(t, 30*time.Second, "a saga works on the request", func() error {
		rep := get(t, r, id).Replacement
		if rep.OperatingSagaId == "" || rep.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_ALLOCATING {
			return fmt.Errorf("request %v, saga %q", rep.ReadOnlyState, rep.OperatingSagaId)
		}
		sagaID = rep.OperatingSagaId
		return nil
	})

	// Bad input changes nothing.
	for _, bad := range []*orchestratorv1.AbandonSagaRequest{
		{SagaId: "nope", Comment: "x"},
		{SagaId: sagaID, Comment: "x", Wait: durationpb.New(time.Hour)},
	} {
		if _, err := r.Admin.AbandonSaga(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Fatalf("abandon %v: %v, want InvalidArgument", bad, err)
		}
	}
	if _, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: uuid.NewString(), Comment: "x"}); status.Code(err) != codes.NotFound {
		t.Fatalf("abandon an unknown saga: %v", err)
	}

	const why = "the agent is too slow today"
	began := time.Now()
	ab, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: sagaID, Comment: why})
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(began)
	if !ab.Unwound || !ab.Finished || ab.Saga.State != orchestratorv1.SagaState_SAGA_STATE_DONE || ab.Saga.Outcome != "failed" || ab.Saga.UnwindComment != why {
		t.Fatalf("abandon: unwound %v finished %v, saga %v outcome %q comment %q", ab.Unwound, ab.Finished, ab.Saga.State, ab.Saga.Outcome, ab.Saga.UnwindComment)
	}
	if len(ab.Reconciled) != 1 || ab.Reconciled[0].Id != id || ab.Reconciled[0].FromState != "allocating" {
		t.Fatalf("reconciled %v, want the request, from allocating", ab.Reconciled)
	}
	t.Logf("abandon answered in %v: request %s %s → %s", took.Round(time.Millisecond), id, ab.Reconciled[0].FromState, ab.Reconciled[0].ToState)
	if _, err := r.Admin.AbandonSaga(ctx, &orchestratorv1.AbandonSagaRequest{SagaId: sagaID, Comment: "again"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("abandon a saga that finished unwinding: %v", err)
	}

	reqs := r.WaitRequests(t, 60*time.Second)
	for _, rep := range reqs {
		if rep.ReplacementId != id {
			continue
		}
		if rep.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			t.Fatalf("request ended %v (%s)", rep.ReadOnlyState, rep.EndReason)
		}
		if rep.Attempts < 1 || !strings.Contains(rep.LastError, why) {
			t.Fatalf("request: %d attempts, last error %q; want the abandonment counted, with its comment", rep.Attempts, rep.LastError)
		}
	}
	locks, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(locks.Locks) != 0 {
		t.Fatalf("locks held after the request completed: %v", locks.Locks)
	}
	finish(t, r, clone, snap, disk)
}
