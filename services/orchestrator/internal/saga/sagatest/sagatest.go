// Package sagatest holds the test helpers every saga type runs
// (docs/testing.md, "Layer 2: every saga against the real services"):
// every action twice, an error injected at every node unwinds cleanly,
// every undo twice, an undo whose transient fault outlasts the
// client's retries still unwinds, and a hook run right before each node.
package sagatest

import (
	"context"
	"hash/fnv"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/orchestrator/internal/saga"
)

// Timeout bounds each saga run of the helpers.
const Timeout = 60 * time.Second

func actionNodes(t testing.TB, tmpl *saga.Template, params any) []string {
	t.Helper()
	d, err := tmpl.BuildDAG(params)
	if err != nil {
		t.Fatalf("build DAG of %s: %v", tmpl.Name(), err)
	}
	return d.ActionNodes()
}

func run(t testing.TB, sec *saga.SEC, tmpl *saga.Template, params any, h *saga.Hooks) saga.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Timeout)
	defer cancel()
	o, err := sec.Run(ctx, tmpl, params, saga.WithHooks(h))
	if err != nil {
		t.Fatalf("run saga %s: %v", tmpl.Name(), err)
	}
	return o
}

// ActionsSucceedIdempotently runs the saga with every action node run twice
// (undo once) and asserts it succeeds: each action tolerates a re-run. It
// returns the outcome for further checks.
func ActionsSucceedIdempotently(t testing.TB, sec *saga.SEC, tmpl *saga.Template, params any) saga.Outcome {
	t.Helper()
	h := &saga.Hooks{}
	for _, n := range actionNodes(t, tmpl, params) {
		h.InjectRepeat(n, saga.Repeat{Action: 2, Undo: 1})
	}
	o := run(t, sec, tmpl, params, h)
	if o.Kind != saga.Succeeded {
		t.Fatalf("saga %s with every action twice: %v", tmpl.Name(), o.Error())
	}
	return o
}

// ActionFailureCanUnwind, for each action node i, takes fresh parameters
// from setup, injects an error at node i, runs the saga, asserts it failed
// at node i (cleanly unwound, not stuck) and calls check, which should
// assert that nothing of the saga remains. At the end no saga may be stuck.
func ActionFailureCanUnwind(t *testing.T, sec *saga.SEC, tmpl *saga.Template, setup func() any, check func(t testing.TB)) {
	t.Helper()
	unwindEach(t, sec, tmpl, setup, check, false)
}

// ActionFailureCanUnwindIdempotently is ActionFailureCanUnwind from the
// second action node on, with the undo of the previous action node run
// twice, so the first undo of each unwind is repeated.
func ActionFailureCanUnwindIdempotently(t *testing.T, sec *saga.SEC, tmpl *saga.Template, setup func() any, check func(t testing.TB)) {
	t.Helper()
	unwindEach(t, sec, tmpl, setup, check, true)
}

func unwindEach(t *testing.T, sec *saga.SEC, tmpl *saga.Template, setup func() any, check func(t testing.TB), repeatUndo bool) {
	t.Helper()
	nodes := actionNodes(t, tmpl, setup())
	first := 0
	if repeatUndo {
		first = 1
	}
	for i := first; i < len(nodes); i++ {
		t.Run("error_at_"+nodes[i], func(t *testing.T) {
			params := setup()
			now := actionNodes(t, tmpl, params)
			if len(now) != len(nodes) {
				t.Fatalf("DAG has %d action nodes for fresh parameters, was %d", len(now), len(nodes))
			}
			h := (&saga.Hooks{}).InjectError(now[i])
			if repeatUndo {
				h.InjectRepeat(now[i-1], saga.Repeat{Action: 1, Undo: 2})
			}
			o := run(t, sec, tmpl, params, h)
			if o.Kind != saga.Failed || o.FailedNode != now[i] {
				t.Fatalf("error injected at %s: outcome %v at %q (%v), want failed at %s", now[i], o.Kind, o.FailedNode, o.Error(), now[i])
			}
			if check != nil {
				check(t)
			}
		})
	}
	assertNoStuck(t, sec)
}

// TransientFaults is how many retryable faults UndoTransientFaultRecovers
// injects at the undo under test before it runs for real.
const TransientFaults = 3

// Soak reports whether the long suites run (STORAGECP_SOAK=1, as `make
// soak` sets): the helpers that sample nodes then take every one.
func Soak() bool { return os.Getenv("STORAGECP_SOAK") == "1" }

// sampleStride: outside Soak, UndoTransientFaultRecovers takes every
// sampleStride-th undo node.
const sampleStride = 3

// UndoTransientFaultRecovers, for each action node with an undo (except
// the last action node, which fails rather than being undone) — every
// one under Soak, else every third, starting at an offset derived from
// the template's name so that different sagas sample different positions
// — takes fresh parameters from setup, injects a permanent error at the
// last action node, so the saga unwinds through every node, and
// TransientFaults retryable faults at the node's undo (UNAVAILABLE, as
// from a peer down longer than the gRPC client's retries, then back); runs
// the saga and asserts it failed at the last node, cleanly unwound and not
// stuck, with the undo run for real after the faults (its undo_finished
// records TransientFaults+1 runs); then calls check, which should assert
// that nothing of the saga remains. At the end no saga may be stuck.
func UndoTransientFaultRecovers(t *testing.T, sec *saga.SEC, tmpl *saga.Template, setup func() any, check func(t testing.TB)) {
	t.Helper()
	d, err := tmpl.BuildDAG(setup())
	if err != nil {
		t.Fatalf("build DAG of %s: %v", tmpl.Name(), err)
	}
	nodes := d.ActionNodes()
	last := nodes[len(nodes)-1]
	var undos []string
	for _, n := range sec.UndoNodes(d) {
		if n != last {
			undos = append(undos, n)
		}
	}
	if len(undos) == 0 {
		t.Fatalf("saga %s has no undo before its last action node", tmpl.Name())
	}
	h := fnv.New32a()
	h.Write([]byte(tmpl.Name()))
	offset := int(h.Sum32() % uint32(min(sampleStride, len(undos))))
	ran := 0
	for i, node := range undos {
		if !Soak() && i%sampleStride != offset {
			continue
		}
		ran++
		t.Run("undo_transient_at_"+node, func(t *testing.T) {
			params := setup()
			now := actionNodes(t, tmpl, params)
			if len(now) != len(nodes) || now[len(now)-1] != last {
				t.Fatalf("DAG has action nodes %v for fresh parameters, was %v", now, nodes)
			}
			hooks := (&saga.Hooks{}).InjectError(last).InjectUndoTransient(node, TransientFaults)
			o := run(t, sec, tmpl, params, hooks)
			if o.Kind != saga.Failed || o.FailedNode != last {
				t.Fatalf("error at %s, %d transient faults at the undo of %s: outcome %v at %q (%v), want failed at %s",
					last, TransientFaults, node, o.Kind, o.FailedNode, o.Error(), last)
			}
			v, err := sec.Get(context.Background(), o.SagaID)
			if err != nil {
				t.Fatalf("get saga %s: %v", o.SagaID, err)
			}
			for _, n := range v.Nodes {
				if n.Name == node && (n.Status != "undo_finished" || n.Attempts != TransientFaults+1) {
					t.Fatalf("node %s: %s after %d runs of its undo, want undo_finished after %d", node, n.Status, n.Attempts, TransientFaults+1)
				}
			}
			if check != nil {
				check(t)
			}
		})
	}
	t.Logf("%s: transient undo faults at %d of %d undo nodes (STORAGECP_SOAK=1 runs all)", tmpl.Name(), ran, len(undos))
	assertNoStuck(t, sec)
}

// LostAnswerCanUnwind, for each action node — every one under Soak, else
// every sampleStride-th from an offset derived from the template's name —
// takes fresh parameters from setup and injects a lost answer there
// (Hooks.InjectLostAnswer: the action lands, its answers are lost until its
// retry budget runs out): the node fails with its outcome unknown, so the
// unwind must undo what it did as well as what came before. Asserts the
// saga failed at that node, cleanly unwound and not stuck, then calls
// check, which should assert that nothing of the saga remains (but what
// cannot be taken back: a deletion that landed, which the saga's next run
// finishes, as every action tolerates a re-run). Commit points
// (DAG.FinalActionNodes) are left out: they are retried until an answer
// comes back, so the saga succeeds (the engine's own tests show it). At the
// end no saga may be stuck.
func LostAnswerCanUnwind(t *testing.T, sec *saga.SEC, tmpl *saga.Template, setup func() any, check func(t testing.TB)) {
	t.Helper()
	d, err := tmpl.BuildDAG(setup())
	if err != nil {
		t.Fatalf("build DAG of %s: %v", tmpl.Name(), err)
	}
	nodes := d.ActionNodes()
	final := map[string]bool{}
	for _, n := range d.FinalActionNodes() {
		final[n] = true
	}
	h := fnv.New32a()
	h.Write([]byte(tmpl.Name()))
	offset := int(h.Sum32() % uint32(min(sampleStride, len(nodes))))
	ran := 0
	for i, node := range nodes {
		if final[node] || (!Soak() && i%sampleStride != offset) {
			continue
		}
		ran++
		t.Run("lost_answer_at_"+node, func(t *testing.T) {
			params := setup()
			if now := actionNodes(t, tmpl, params); len(now) != len(nodes) || now[i] != node {
				t.Fatalf("DAG has action nodes %v for fresh parameters, was %v", now, nodes)
			}
			o := run(t, sec, tmpl, params, (&saga.Hooks{}).InjectLostAnswer(node))
			if o.Kind != saga.Failed || o.FailedNode != node {
				t.Fatalf("answers lost at %s: outcome %v at %q (%v), want failed at %s", node, o.Kind, o.FailedNode, o.Error(), node)
			}
			if check != nil {
				check(t)
			}
		})
	}
	t.Logf("%s: lost answers at %d of %d action nodes (STORAGECP_SOAK=1 runs all)", tmpl.Name(), ran, len(nodes))
	assertNoStuck(t, sec)
}

// BeforeEachNode, for each action node, takes fresh parameters from setup
// and runs the saga with before called right before that node's action
// (only that node), then calls check with the node and the outcome. Use it
// to race user operations against every node.
func BeforeEachNode(t *testing.T, sec *saga.SEC, tmpl *saga.Template, setup func() any,
	before func(ctx context.Context, node string), check func(t testing.TB, node string, o saga.Outcome)) {
	t.Helper()
	nodes := actionNodes(t, tmpl, setup())
	for _, node := range nodes {
		t.Run("before_"+node, func(t *testing.T) {
			h := &saga.Hooks{BeforeNode: func(ctx context.Context, n string) {
				if n == node {
					before(ctx, n)
				}
			}}
			o := run(t, sec, tmpl, setup(), h)
			if check != nil {
				check(t, node, o)
			}
		})
	}
}

func assertNoStuck(t testing.TB, sec *saga.SEC) {
	t.Helper()
	views, err := sec.List(context.Background(), saga.ListFilter{Limit: 10000})
	if err != nil {
		t.Fatalf("list sagas: %v", err)
	}
	for _, v := range views {
		if v.Stuck {
			t.Errorf("saga %s (%s) is stuck: its log has an undo_failed no operator skipped", v.ID, v.Name)
		}
	}
}

// NoUndoFailed asserts the saga log holds no undo_failed event that an
// operator has not skipped (undo_skipped, SEC.Unwind): no saga is stuck.
func NoUndoFailed(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM saga_node_event u
		WHERE u.event_type = 'undo_failed' AND NOT EXISTS (SELECT 1 FROM saga_node_event k
			WHERE k.saga_id = u.saga_id AND k.node_id = u.node_id AND k.event_type = 'undo_skipped')`).Scan(&n); err != nil {
		t.Fatalf("count undo_failed: %v", err)
	}
	if n != 0 {
		t.Fatalf("%d undo_failed events in the saga log that no operator skipped", n)
	}
}

// WaitIdle polls until no saga is running or unwinding (or fails the test
// after timeout).
func WaitIdle(t testing.TB, pool *pgxpool.Pool, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM saga WHERE saga_state IN ('running', 'unwinding')`).Scan(&n); err != nil {
			t.Fatalf("count running sagas: %v", err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sagas still running after %v", n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
