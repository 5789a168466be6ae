// Package orchestrator tests the orchestrator as a process: a crash at every
// point of every lifecycle saga node, failover between two orchestrators,
// and fencing of a paused leader.
package orchestrator

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// soak runs every case; otherwise a fixed sample that fits the CI budget.
func soak() bool { return os.Getenv("STORAGECP_SOAK") == "1" }

// lifecycleCase starts one saga of a template (without waiting) and returns
// its id. prepare runs first with the orchestrator healthy.
type lifecycleCase struct {
	template string
	prepare  func(t *testing.T, r *rack.Rack) (start func() string)
	// unwind makes the saga fail at a later node, so its undos run: the
	// agent fault to inject.
	unwind allocatorv1.AgentOperation
}

func lifecycleCases() []lifecycleCase {
	return []lifecycleCase{
		{
			template: "volume-create",
			prepare: func(t *testing.T, r *rack.Rack) func() string {
				return func() string {
					resp, err := r.Lifecycle.CreateVolume(context.Background(), &orchestratorv1.CreateVolumeRequest{SizeBytes: rack.GiB})
					if err != nil {
						return "" // the orchestrator died before answering
					}
					return resp.Saga.SagaId
				}
			},
			unwind: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION,
		},
		{
			template: "snapshot-create",
			prepare: func(t *testing.T, r *rack.Rack) func() string {
				disk := r.CreateDisk(t)
				return func() string {
					resp, err := r.Lifecycle.SnapshotVolume(context.Background(), &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk})
					if err != nil {
						return "" // the orchestrator died before answering
					}
					return resp.Saga.SagaId
				}
			},
			unwind: allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT,
		},
		{
			template: "volume-clone",
			prepare: func(t *testing.T, r *rack.Rack) func() string {
				snap := r.Snapshot(t, r.CreateDisk(t))
				return func() string {
					resp, err := r.Lifecycle.CloneVolume(context.Background(), &orchestratorv1.CloneVolumeRequest{SnapshotId: snap})
					if err != nil {
						return "" // the orchestrator died before answering
					}
					return resp.Saga.SagaId
				}
			},
			unwind: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION,
		},
		{
			template: "volume-delete",
			prepare: func(t *testing.T, r *rack.Rack) func() string {
				disk := r.CreateDisk(t)
				r.Snapshot(t, disk) // so the delete also exercises KEPT
				return func() string {
					resp, err := r.Lifecycle.DeleteVolume(context.Background(), &orchestratorv1.DeleteVolumeRequest{VolumeId: disk})
					if err != nil {
						return "" // the orchestrator died before answering
					}
					return resp.Saga.SagaId
				}
			},
		},
	}
}

// nodes returns the action nodes of a finished saga, and which have undos
// that ran (for the unwinding case).
func nodes(t *testing.T, r *rack.Rack, sagaID string) (all, undone []string) {
	t.Helper()
	resp, err := r.Admin.GetSaga(context.Background(), &orchestratorv1.GetSagaRequest{SagaId: sagaID})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.Nodes {
		if n.Kind != "action" {
			continue
		}
		all = append(all, n.Name)
		if n.Status == "undo_finished" && n.HasUndo {
			undone = append(undone, n.Name)
		}
	}
	return all, undone
}

// newestSaga finds the most recently created saga of a template (the one a
// crashed orchestrator started but could not report).
func newestSaga(t *testing.T, r *rack.Rack, template string) string {
	t.Helper()
	resp, err := r.Admin.ListSagas(context.Background(), &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var best *orchestratorv1.Saga
	for _, s := range resp.Sagas {
		if s.Name == template && (best == nil || s.TimeCreated.AsTime().After(best.TimeCreated.AsTime())) {
			best = s
		}
	}
	if best == nil {
		t.Fatalf("no %s saga found", template)
	}
	return best.SagaId
}

func waitSaga(t *testing.T, r *rack.Rack, id string) *orchestratorv1.Saga {
	t.Helper()
	var out *orchestratorv1.Saga
	harness.Eventually(t, 60*time.Second, "saga "+id+" done", func() error {
		resp, err := r.Admin.GetSaga(context.Background(), &orchestratorv1.GetSagaRequest{SagaId: id})
		if err != nil {
			return err
		}
		if resp.Saga.State != orchestratorv1.SagaState_SAGA_STATE_DONE {
			return fmt.Errorf("saga is %v", resp.Saga.State)
		}
		out = resp.Saga
		return nil
	})
	return out
}

func (c lifecycleCase) inject(t *testing.T, r *rack.Rack) {
	t.Helper()
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	// More failures than the client's retries, so the node fails.
	if _, err := faults.InjectAgentFault(context.Background(), &allocatorv1.InjectAgentFaultRequest{Operation: c.unwind, Count: 1000, Fail: true}); err != nil {
		t.Fatal(err)
	}
}

func clearFaults(t *testing.T, r *rack.Rack) {
	t.Helper()
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	if _, err := faults.ClearAgentFaults(context.Background(), &allocatorv1.ClearAgentFaultsRequest{}); err != nil {
		t.Fatal(err)
	}
}

// A crash at each point of each lifecycle saga node (right after `started`
// is committed, right after the action's effect, right after an undo's
// effect): the restarted orchestrator recovers the saga, which finishes —
// forward, or unwound for undo points — with the world consistent.
func TestCrashAtEveryLifecycleNode(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{})
	ctx := context.Background()
	n := 0
	for _, c := range lifecycleCases() {
		// A reference run names the nodes (and, unwinding, the undos).
		start := c.prepare(t, r)
		all, _ := nodes(t, r, waitSaga(t, r, start()).SagaId)
		var undone []string
		if c.unwind != allocatorv1.AgentOperation_AGENT_OPERATION_UNSPECIFIED {
			start = c.prepare(t, r)
			c.inject(t, r)
			_, undone = nodes(t, r, waitSaga(t, r, start()).SagaId)
			clearFaults(t, r)
		}
		type point struct{ node, at string }
		var points []point
		for _, node := range all {
			points = append(points, point{node, "after_started"}, point{node, "after_action"})
		}
		for _, node := range undone {
			points = append(points, point{node, "after_undo"})
		}
		for _, p := range points {
			n++
			if !soak() && n%3 != 0 {
				continue // the CI sample: every third case; make soak runs all
			}
			t.Run(fmt.Sprintf("%s/%s/%s", c.template, p.node, p.at), func(t *testing.T) {
				// Whatever happens, leave no fault and no crash point for
				// the next case.
				defer func() {
					clearFaults(t, r)
					if t.Failed() {
						r.RestartOrchestrator(t)
					}
				}()
				start := c.prepare(t, r)
				r.RestartOrchestrator(t, fmt.Sprintf("STORAGECP_CRASH_AT=%s/%s/%s", c.template, p.node, p.at))
				if p.at == "after_undo" {
					c.inject(t, r)
				}
				id := start()
				proc := r.Stack.Proc(stack.Orchestrator)
				if !proc.Wait(60 * time.Second) {
					t.Fatalf("orchestrator did not crash at %s/%s", p.node, p.at)
				}
				clearFaults(t, r)
				if err := proc.RestartWithEnv(); err != nil {
					t.Fatal(err)
				}
				r.WaitLeader(t, r.Admin)
				if id == "" {
					id = newestSaga(t, r, c.template)
				}
				s := waitSaga(t, r, id)
				want := "succeeded"
				if p.at == "after_undo" {
					want = "failed"
				}
				if s.Outcome != want {
					t.Fatalf("saga %s ended %s, want %s", id, s.Outcome, want)
				}
				if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
					t.Fatal(err)
				}
				r.Invariants(t)
				r.Validate(t)
			})
		}
	}
	t.Logf("%d crash cases in all (%s)", n, map[bool]string{true: "all run", false: "every third run; make soak runs all"}[soak()])
}
