package saga_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
)

// Node ids of the sample DAG without wide nodes.
const (
	nStart = iota
	nA
	nB
	nC
	nFinish
	nEnd
)

type ev struct {
	node int
	typ  string
	data string // JSON or ""
}

func started(nodes ...int) []ev {
	var evs []ev
	for _, n := range nodes {
		evs = append(evs, ev{n, "started", ""})
	}
	return evs
}

func ok(n int, data string) []ev { return []ev{{n, "started", ""}, {n, "succeeded", data}} }

func item(s string) string { return fmt.Sprintf(`{"item":%q}`, s) }

func cat(parts ...[]ev) []ev {
	var all []ev
	for _, p := range parts {
		all = append(all, p...)
	}
	return all
}

func undone(n int) []ev { return []ev{{n, "undo_started", ""}, {n, "undo_finished", ""}} }

// writeLog persists a sample saga owned by sec with a hand-written log, as a
// crash at any point would have left it.
func writeLog(t *testing.T, f *fixture, sec, key, state string, events []ev, mangle func(d *saga.DAG)) uuid.UUID {
	t.Helper()
	ctx := context.Background()
	d, err := f.app.sample.BuildDAG(sampleParams{Key: key})
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Nodes) != nEnd+1 || d.Nodes[nB].Name != "create_b" {
		t.Fatalf("unexpected sample DAG %+v", d.Nodes)
	}
	if mangle != nil {
		mangle(d)
	}
	raw, _ := json.Marshal(d)
	id := uuid.New()
	if _, err := f.pool.Exec(ctx, `INSERT INTO saga (id, name, creator, dag, saga_state, current_sec)
		VALUES ($1, 'sample', $2, $3, $4, $2)`, id, sec, raw, state); err != nil {
		t.Fatal(err)
	}
	for _, e := range events {
		var data *string
		if e.data != "" {
			data = &e.data
		}
		if _, err := f.pool.Exec(ctx, `INSERT INTO saga_node_event (saga_id, node_id, event_type, data, creator)
			VALUES ($1, $2, $3, $4::jsonb, $5)`, id, e.node, e.typ, data, sec); err != nil {
			t.Fatalf("event %+v: %v", e, err)
		}
	}
	return id
}

// TestRecoveryFromEveryLogState writes the log a crash would leave at each
// interesting point, recovers it in a fresh SEC and checks what runs again
// (a started but unfinished action or undo) and how the saga ends.
func TestRecoveryFromEveryLogState(t *testing.T) {
	failedB := ev{nB, "failed", `{"kind":"action","message":"boom"}`}
	unknownB := ev{nB, "failed", `{"kind":"action","message":"rpc error: code = Unavailable","reason":"grpc:Unavailable","retryable":true,"attempts":4}`}
	forwardDone := cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), ok(nB, item("b")), ok(nC, item("c")), ok(nFinish, `{"items":["a","b","c"]}`))
	cases := []struct {
		name    string
		state   string
		events  []ev
		want    saga.OutcomeKind
		runs    map[string]int // exact counts; missing means 0
		mangle  func(d *saga.DAG)
		abandon string // non-empty: recovery must abandon with this in the comment
		unwind  string // non-empty: an operator asked for the unwind with this comment
	}{
		{name: "row only", state: "running", want: saga.Succeeded,
			runs: map[string]int{"create_a/do": 1, "create_b/do": 1, "create_c/do": 1, "finish/do": 1}},
		{name: "a started", state: "running", events: cat(ok(nStart, `{"key":"k"}`), started(nA)), want: saga.Succeeded,
			runs: map[string]int{"create_a/do": 1, "create_b/do": 1, "create_c/do": 1, "finish/do": 1}},
		{name: "b in flight c done", state: "running", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), ok(nC, item("c"))),
			want: saga.Succeeded, runs: map[string]int{"create_b/do": 1, "finish/do": 1}},
		{name: "finish started", state: "running", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), ok(nB, item("b")), ok(nC, item("c")), started(nFinish)),
			want: saga.Succeeded, runs: map[string]int{"finish/do": 1}},
		{name: "end succeeded", state: "running", events: cat(forwardDone, ok(nEnd, `{"items":["a","b","c"]}`)),
			want: saga.Succeeded, runs: map[string]int{}},
		{name: "b failed c succeeded", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c"))),
			want: saga.Failed, runs: map[string]int{"create_c/undo": 1, "create_a/undo": 1}},
		{name: "b failed state still running", state: "running", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c"))),
			want: saga.Failed, runs: map[string]int{"create_c/undo": 1, "create_a/undo": 1}},
		{name: "b failed c in flight", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, started(nC)),
			want: saga.Failed, runs: map[string]int{"create_c/do": 1, "create_c/undo": 1, "create_a/undo": 1}},
		{name: "c undo started", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")), []ev{{nC, "undo_started", ""}}),
			want: saga.Failed, runs: map[string]int{"create_c/undo": 1, "create_a/undo": 1}},
		{name: "a undo started", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")), undone(nC), []ev{{nA, "undo_started", ""}}),
			want: saga.Failed, runs: map[string]int{"create_a/undo": 1}},
		{name: "start undone", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")), undone(nC), undone(nA), undone(nStart)),
			want: saga.Failed, runs: map[string]int{}},
		{name: "undo failed", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")),
			[]ev{{nC, "undo_started", ""}, {nC, "undo_failed", `{"kind":"undo","message":"disk on fire"}`}}),
			want: saga.Stuck, runs: map[string]int{}},
		// An operator skipped c's failed undo (SEC.Unwind on the stuck saga)
		// and the SEC stopped before anything else: the unwind goes on past c.
		{name: "undo skipped", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")),
			[]ev{{nC, "undo_started", ""}, {nC, "undo_failed", `{"kind":"undo","message":"disk on fire"}`}, {nC, "undo_skipped", `{"comment":"put out by hand"}`}}),
			want: saga.Failed, runs: map[string]int{"create_a/undo": 1}},
		// … and crashed in the middle of the undo after it.
		{name: "undo skipped then a undo started", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")),
			[]ev{{nC, "undo_started", ""}, {nC, "undo_failed", `{"kind":"undo","message":"disk on fire"}`}, {nC, "undo_skipped", `{"comment":"put out by hand"}`}},
			[]ev{{nA, "undo_started", ""}}),
			want: saga.Failed, runs: map[string]int{"create_a/undo": 1}},
		// Two undos failed for good; the operator skipped only one: stuck.
		{name: "one of two failed undos skipped", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), ok(nB, item("b")), ok(nC, item("c")),
			[]ev{{nFinish, "started", ""}, {nFinish, "failed", `{"kind":"action","message":"boom"}`}},
			[]ev{{nB, "undo_started", ""}, {nB, "undo_failed", `{"kind":"undo","message":"b stuck"}`}, {nB, "undo_skipped", `{"comment":"b fixed"}`}},
			[]ev{{nC, "undo_started", ""}, {nC, "undo_failed", `{"kind":"undo","message":"disk on fire"}`}}),
			want: saga.Stuck, runs: map[string]int{}},
		// An operator asked for the unwind while b was in flight and the SEC
		// stopped: b runs again (it may have landed; only what finishes can
		// be undone), then everything is undone.
		{name: "unwind requested b in flight", state: "running", unwind: "b hangs", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), ok(nC, item("c"))),
			want: saga.Failed, runs: map[string]int{"create_b/do": 1, "create_b/undo": 1, "create_c/undo": 1, "create_a/undo": 1}},
		// b failed with its outcome unknown (a retryable error: it may
		// have landed), and the SEC stopped before its undo started, or
		// during it: b is undone like a succeeded node, before a.
		{name: "b failed unknown", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{unknownB}, ok(nC, item("c"))),
			want: saga.Failed, runs: map[string]int{"create_b/undo": 1, "create_c/undo": 1, "create_a/undo": 1}},
		{name: "b failed unknown undo started", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{unknownB}, ok(nC, item("c")),
			undone(nC), []ev{{nB, "undo_started", ""}}),
			want: saga.Failed, runs: map[string]int{"create_b/undo": 1, "create_a/undo": 1}},
		// A log from before the engine undid such nodes: a's undo already
		// went past b, which is left as it was.
		{name: "b failed unknown parent already undone", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{unknownB}, ok(nC, item("c")),
			undone(nC), []ev{{nA, "undo_started", ""}}),
			want: saga.Failed, runs: map[string]int{"create_a/undo": 1}},
		{name: "corrupt undo of a node that failed for good", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")),
			[]ev{{nB, "undo_started", ""}}),
			abandon: "undo_started after failed"},
		{name: "corrupt undo skipped without undo failed", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")),
			[]ev{{nC, "undo_started", ""}, {nC, "undo_skipped", `{"comment":"x"}`}}),
			abandon: "undo_skipped after undo_started"},
		{name: "corrupt parent undone under a child whose undo failed", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), []ev{failedB}, ok(nC, item("c")),
			[]ev{{nC, "undo_started", ""}, {nC, "undo_failed", `{"kind":"undo","message":"disk on fire"}`}}, undone(nA)),
			abandon: "parent"},
		{name: "corrupt succeeded without started", state: "running", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), []ev{{nB, "succeeded", item("b")}}),
			abandon: "succeeded after never_started"},
		{name: "corrupt child before parent", state: "running", events: cat(ok(nStart, `{"key":"k"}`), started(nA), started(nB)),
			abandon: "parent"},
		{name: "corrupt parent undone under live child", state: "unwinding", events: cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), ok(nB, item("b")), undone(nA)),
			abandon: "parent"},
		{name: "unknown action", state: "running", events: cat(ok(nStart, `{"key":"k"}`), started(nA)),
			mangle: func(d *saga.DAG) { d.Nodes[nB].Action = "sample.gone" }, abandon: "unknown saga action"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			id := writeLog(t, f, "sec-r", "k", tc.state, tc.events, tc.mangle)
			if tc.unwind != "" {
				if _, err := f.pool.Exec(ctx, `UPDATE saga SET unwind_time = now(), unwind_comment = $2 WHERE id = $1`, id, tc.unwind); err != nil {
					t.Fatal(err)
				}
			}
			sec := f.sec(t, "sec-r")
			rep, err := sec.Recover(ctx)
			if err != nil || len(rep.Failed) != 0 {
				t.Fatalf("recover: %+v, %v", rep, err)
			}
			if tc.abandon != "" {
				if len(rep.Abandoned) != 1 {
					t.Fatalf("corrupt log not abandoned: %+v", rep)
				}
				v, err := sec.Get(ctx, id)
				if err != nil || v.State != "abandoned" || v.AbandonReason != "unrecoverable" || !strings.Contains(v.AbandonComment, tc.abandon) {
					t.Fatalf("view %s %s %q, %v", v.State, v.AbandonReason, v.AbandonComment, err)
				}
				return
			}
			o := wait(t, sec, id)
			if o.Kind != tc.want {
				t.Fatalf("outcome %v (%v), want %v", o.Kind, o.Error(), tc.want)
			}
			if tc.want == saga.Failed && tc.unwind == "" && o.FailedNode != "create_b" {
				t.Fatalf("failed node %q", o.FailedNode)
			}
			if tc.want == saga.Stuck && (o.UndoNode != "create_c" || o.UndoErr.Message != "disk on fire") {
				t.Fatalf("stuck outcome %+v", o)
			}
			if tc.unwind != "" && (o.UnwindComment != tc.unwind || o.Err.Kind != saga.ErrKindAbandoned) {
				t.Fatalf("outcome of the operator's unwind %+v (error %+v)", o, o.Err)
			}
			runs := f.runs(t, "k")
			for k, n := range runs {
				if tc.runs[k] != n {
					t.Errorf("%s ran %d times, want %d (all runs %v)", k, n, tc.runs[k], runs)
				}
			}
			for k, n := range tc.runs {
				if runs[k] != n {
					t.Errorf("%s ran %d times, want %d (all runs %v)", k, runs[k], n, runs)
				}
			}
			v, err := sec.Get(ctx, id)
			if err != nil || v.State != "done" {
				t.Fatalf("state %s, %v", v.State, err)
			}
			if v.Stuck != (tc.want == saga.Stuck) {
				t.Fatalf("stuck %v", v.Stuck)
			}
		})
	}
}
