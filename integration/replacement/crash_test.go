package replacement

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// The orchestrator crashes at each point of each node of the seven read-only
// replacement sagas (ro-replacement-step-batch and
// ro-replacement-step-garbage-collect-batch run with --step-batch, on a
// clone no Upstairs runs) (the volume-delete subsaga nodes they embed included):
// right after `started` is committed, right after the action's effect, and
// right after the undo's effect of every node that has one (reached by
// failing the saga's last node with STORAGECP_FAIL_AT). Restarted, it
// recovers the saga — finishing it, or finishing the unwind and retrying —
// and the replacement still ends Complete with the world consistent and no
// data-loss probe.
func TestCrashAtEveryReplacementNode(t *testing.T) {
	templates := []string{"ro-replacement-start", "ro-replacement-garbage-collect", "ro-replacement-step", "ro-replacement-step-garbage-collect", "ro-replacement-finish", batchTemplate, gcBatchTemplate}
	every := 5
	if os.Getenv("STORAGECP_SOAK") == "1" {
		every = 1
	}
	if only := os.Getenv("STORAGECP_CRASH_TEMPLATE"); only != "" {
		templates = []string{only}
	}
	n, ran := 0, 0
	for _, tmpl := range templates {
		t.Run(tmpl, func(t *testing.T) {
			// Every case expunges a disk: a fresh rack every 12 cases keeps
			// capacity for the replacements.
			var r *rack.Rack
			var nodes []sagaNode
			cases := 0
			fresh := func() {
				r = rack.Start(t, 8, 4, configFor(tmpl))
				nodes = replacementNodes(t, r, tmpl)
				cases = 0
			}
			fresh()
			type point struct{ node, at string }
			var points []point
			for _, nd := range nodes {
				points = append(points, point{nd.name, "after_started"}, point{nd.name, "after_action"})
			}
			for _, nd := range nodes {
				if nd.hasUndo && nd.name != failNode {
					points = append(points, point{nd.name, "after_undo"})
				}
			}
			for _, p := range points {
				n++
				if n%every != 0 {
					continue
				}
				if cases == 12 {
					fresh()
				}
				cases++
				ran++
				t.Run(p.node+"/"+p.at, func(t *testing.T) {
					crashCase(t, r, tmpl, p.node, p.at)
				})
			}
		})
	}
	t.Logf("%d of %d crash points run", ran, n)
}

// batchTemplate is the batch swap's saga, which only an orchestrator run
// with --step-batch starts (for the steps of volumes no Upstairs runs);
// gcBatchTemplate collects Complete steps' stashes with it.
const (
	batchTemplate   = "ro-replacement-step-batch"
	gcBatchTemplate = "ro-replacement-step-garbage-collect-batch"
)

func configFor(tmpl string) stack.Config {
	switch tmpl {
	case batchTemplate:
		return stack.Config{ExtraArgs: map[string][]string{stack.Orchestrator: {"--step-batch=64"}}}
	case gcBatchTemplate:
		// A batch of one: the reference run's single clone is collected
		// in a batch (fewer waiting than --step-batch's size, or 16, are
		// collected one by one).
		return stack.Config{ExtraArgs: map[string][]string{stack.Orchestrator: {"--step-batch=1"}}}
	case "ro-replacement-step", "ro-replacement-step-garbage-collect":
		// The per-volume path: what every step takes without the batch
		// swap, and a volume with an Upstairs takes with it (the
		// per-step collect: every step without it, and with it a step
		// whose stash holds the old target's last reference).
		return stack.Config{ExtraArgs: map[string][]string{stack.Orchestrator: {"--step-batch=0"}}}
	}
	return stack.Config{}
}

// failNode ends every read-only replacement saga: failing it unwinds
// through every undo the saga has.
const failNode = "update_request"

// sagaNode is one action node of a saga as GetSaga shows it.
type sagaNode struct {
	name    string
	hasUndo bool
}

// replacementNodes runs one replacement and reads a template's action
// nodes from its saga.
func replacementNodes(t *testing.T, r *rack.Rack, tmpl string) []sagaNode {
	t.Helper()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	r.Clone(t, snap)
	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	r.WaitRequests(t, 60*time.Second)
	ctx := context.Background()
	sagas, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sagas.Sagas {
		if s.Name != tmpl {
			continue
		}
		got, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
		if err != nil {
			t.Fatal(err)
		}
		var out []sagaNode
		for _, n := range got.Nodes {
			if n.Kind == "action" {
				out = append(out, sagaNode{n.Name, n.HasUndo})
			}
		}
		return out
	}
	t.Fatalf("no %s saga in the reference run", tmpl)
	return nil
}

func crashCase(t *testing.T, r *rack.Rack, tmpl, node, at string) {
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	att := r.Construct(t, clone, 0)
	if tmpl == batchTemplate {
		r.Clone(t, snap) // run by nobody: its step takes the batch
	}
	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	env := []string{fmt.Sprintf("STORAGECP_CRASH_AT=%s/%s/%s", tmpl, node, at)}
	if at == "after_undo" {
		env = append(env, fmt.Sprintf("STORAGECP_FAIL_AT=%s/%s", tmpl, failNode))
	}
	r.RestartOrchestrator(t, env...)
	defer func() {
		if t.Failed() {
			r.RestartOrchestrator(t)
		}
	}()
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	proc := r.Stack.Proc(stack.Orchestrator)
	if !proc.Wait(60 * time.Second) {
		t.Fatalf("orchestrator did not crash at %s/%s/%s", tmpl, node, at)
	}
	if err := proc.RestartWithEnv(); err != nil {
		t.Fatal(err)
	}
	r.WaitLeader(t, r.Admin)
	// After the crash nothing else activates the tasks: the restarted
	// leader activates every task once at start, and they chain.
	reqs := r.WaitRequests(t, 90*time.Second)
	for _, q := range reqs {
		if q.OldTargetId == old.TargetId && q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			t.Fatalf("request %s ended %v", q.ReplacementId, q.ReadOnlyState)
		}
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
	_ = att
	if t.Failed() {
		dumpUnsucceededSagas(t, r)
	}
}

// dumpUnsucceededSagas logs every saga that did not succeed, with the
// failing node and its error.
func dumpUnsucceededSagas(t *testing.T, r *rack.Rack) {
	ctx := context.Background()
	resp, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Logf("list sagas: %v", err)
		return
	}
	for _, s := range resp.Sagas {
		if s.Outcome == "succeeded" {
			continue
		}
		g, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
		if err != nil {
			continue
		}
		t.Logf("saga %s %s: state %v outcome %s", s.Name, s.SagaId, s.State, s.Outcome)
		for _, n := range g.Nodes {
			if n.Status == "failed" || n.Status == "undo_failed" || n.Status == "started" || n.Status == "undo_started" {
				t.Logf("  node %s %s %s", n.Name, n.Status, n.DataJson)
			}
		}
	}
}
