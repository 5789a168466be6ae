package saga_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagalog"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
)

func noop(context.Context, *saga.ActionContext) (any, error) { return nil, nil }

func TestBuildErrors(t *testing.T) {
	other := saga.NewTemplate("other")
	foreign := other.Action("x", noop, nil)
	saga.SetBuild(other, func(b *saga.Builder, _ struct{}) error { b.Append(foreign.Node()); return nil })

	tmpl := func(build func(b *saga.Builder, a, c *saga.Action)) *saga.Template {
		t := saga.NewTemplate("t")
		a := t.Action("a", noop, nil)
		c := t.Action("c", noop, nil)
		saga.SetBuild(t, func(b *saga.Builder, _ struct{}) error { build(b, a, c); return nil })
		return t
	}
	cases := []struct {
		name  string
		build func(b *saga.Builder, a, c *saga.Action)
		want  string
	}{
		{"empty", func(b *saga.Builder, a, c *saga.Action) {}, "empty DAG"},
		{"duplicate", func(b *saga.Builder, a, c *saga.Action) {
			b.Append(a.Node())
			b.Append(saga.ActionNode("a", c))
		}, "duplicate node name"},
		{"duplicate in stage", func(b *saga.Builder, a, c *saga.Action) {
			b.AppendParallel(a.Node(), saga.ConstantNode("a", 1))
			b.Append(c.Node())
		}, "duplicate node name"},
		{"empty parallel", func(b *saga.Builder, a, c *saga.Action) {
			b.Append(a.Node())
			b.AppendParallel()
		}, "empty parallel stage"},
		{"two final nodes", func(b *saga.Builder, a, c *saga.Action) {
			b.AppendParallel(a.Node(), c.Node())
		}, "final nodes"},
		{"subsaga params not ancestor", func(b *saga.Builder, a, c *saga.Action) {
			b.Append(a.Node())
			b.AppendParallel(saga.ConstantNode("p", struct{}{}), saga.SubsagaNode("sub", other, "p", struct{}{}))
			b.Append(c.Node())
		}, "not an ancestor"},
		{"subsaga params unknown", func(b *saga.Builder, a, c *saga.Action) {
			b.Append(saga.SubsagaNode("sub", other, "nope", struct{}{}))
		}, "not an ancestor"},
		{"foreign action", func(b *saga.Builder, a, c *saga.Action) {
			b.Append(foreign.Node())
		}, "not an action of this template"},
		{"bad name", func(b *saga.Builder, a, c *saga.Action) {
			b.Append(saga.ConstantNode("x.y", 1))
		}, "contains"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tmpl(tc.build).BuildDAG(struct{}{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("BuildDAG: %v, want error containing %q", err, tc.want)
			}
		})
	}
	// A good one, for contrast: subsaga with parameters from an earlier stage.
	d, err := tmpl(func(b *saga.Builder, a, c *saga.Action) {
		b.AppendParallel(a.Node(), saga.ConstantNode("p", struct{}{}))
		b.Append(saga.SubsagaNode("sub", other, "p", struct{}{}))
		b.Append(c.Node())
	}).BuildDAG(struct{}{})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.ActionNodes(), []string{"a", "sub.x", "c"}; !slices.Equal(got, want) {
		t.Fatalf("action nodes %v, want %v", got, want)
	}
}

func TestUnregisteredTemplateRefused(t *testing.T) {
	f := newFixture(t)
	reg, _ := saga.NewRegistry(f.app.stash) // sample not registered
	sec := saga.NewSEC(f.pool, "sec-1", reg, f.pool, testLogger(t))
	defer sec.Shutdown(context.Background())
	if _, err := sec.Create(context.Background(), f.app.sample, sampleParams{Key: "k"}); !errors.Is(err, saga.ErrUnknownAction) {
		t.Fatalf("Create with unregistered template: %v, want ErrUnknownAction", err)
	}
}

func TestForwardParallelOutputs(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	// b and c must run concurrently: each waits until the other started.
	gb, gc := newGate(), newGate()
	f.app.setGate("create_b", gc)
	f.app.setGate("create_c", gb)
	h := &saga.Hooks{BeforeNode: func(_ context.Context, node string) {
		switch node {
		case "create_b":
			gb.open()
		case "create_c":
			gc.open()
		}
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k", Wide: 3}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	var out finishOut
	if err := o.Decode(&out); err != nil {
		t.Fatalf("outcome %v: %v", o.Kind, err)
	}
	if !slices.Equal(out.Items, []string{"a", "b", "c"}) {
		t.Fatalf("output %v", out.Items)
	}
	if got := f.effects(t, "k"); !slices.Equal(got, []string{"a", "b", "c", "w0", "w1", "w2"}) {
		t.Fatalf("effects %v", got)
	}
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != "done" || v.Stuck || v.Outcome == nil || v.Outcome.Kind != saga.Succeeded {
		t.Fatalf("view: state %s stuck %v outcome %+v", v.State, v.Stuck, v.Outcome)
	}
	for _, n := range v.Nodes {
		if n.Status != "succeeded" {
			t.Errorf("node %s: %s", n.Name, n.Status)
		}
	}
	// Wait on a finished saga from another SEC reads the log.
	other := f.sec(t, "sec-2")
	o2, err := other.Wait(ctx, o.SagaID)
	var out2 finishOut
	if err != nil || o2.Decode(&out2) != nil || !slices.Equal(out2.Items, out.Items) {
		t.Fatalf("Wait from the log: %+v, %v", o2, err)
	}
	// About one commit per node: 7 action nodes + internal nodes.
	st := sec.Stats()
	t.Logf("writes %d, events %d for %d nodes", st.Writes, st.Events, len(v.Nodes))
	if st.Writes > 9 {
		t.Errorf("%d log writes for 7 action nodes; want at most 9", st.Writes)
	}
}

func TestSubsagaSplicing(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx := context.Background()
	d, err := f.app.outer.BuildDAG(sampleParams{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := d.ActionNodes(), []string{"first", "delete_stash.soft_delete", "delete_stash.hard_delete", "after"}; !slices.Equal(got, want) {
		t.Fatalf("action nodes %v, want %v", got, want)
	}
	o := sagatest.ActionsSucceedIdempotently(t, sec, f.app.outer, sampleParams{Key: "k"})
	var out itemOut
	if err := o.Decode(&out); err != nil {
		t.Fatal(err)
	}
	if out.Item != "after: hard after soft" {
		t.Fatalf("output %q", out.Item)
	}
	// The subsaga ran with its own parameters.
	if got := f.effects(t, "k-stash"); !slices.Equal(got, []string{"soft"}) {
		t.Fatalf("subsaga effects %v", got)
	}
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, n := range v.Nodes {
		names = append(names, n.Name)
	}
	if !slices.Contains(names, "delete_stash.soft_delete") || !slices.Contains(names, "delete_stash") {
		t.Fatalf("node names %v", names)
	}

	// A failure inside the subsaga unwinds through it and the outer saga.
	h := (&saga.Hooks{}).InjectError("delete_stash.hard_delete")
	o, err = sec.Run(ctx, f.app.outer, sampleParams{Key: "u"}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.FailedNode != "delete_stash.hard_delete" {
		t.Fatalf("outcome %v at %s", o.Kind, o.FailedNode)
	}
	if got := append(f.effects(t, "u"), f.effects(t, "u-stash")...); len(got) != 0 {
		t.Fatalf("left after unwind: %v", got)
	}
}

func TestUnwindOrder(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	h := (&saga.Hooks{}).InjectError("finish")
	ctx := context.Background()
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k", Wide: 2}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.FailedNode != "finish" || o.Err.Kind != saga.ErrKindInjected {
		t.Fatalf("outcome %+v", o)
	}
	undos := f.app.undos()
	pos := func(n string) int { return slices.Index(undos, n) }
	for _, n := range []string{"create_a", "create_b", "create_c", "w0", "w1"} {
		if pos(n) < 0 {
			t.Fatalf("undo of %s did not run: %v", n, undos)
		}
	}
	// Reverse dependency order: the wide stage before b and c, those before a.
	for _, later := range []string{"create_b", "create_c"} {
		if pos("w0") > pos(later) || pos("w1") > pos(later) || pos(later) > pos("create_a") {
			t.Fatalf("undo order %v", undos)
		}
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("effects left: %v", got)
	}
	v, _ := sec.Get(ctx, o.SagaID)
	for _, n := range v.Nodes {
		want := "undo_finished"
		if n.Name == "finish" {
			want = "failed"
		} else if n.Name == "@end" {
			want = "never_started"
		}
		if n.Status != want {
			t.Errorf("node %s: %s, want %s", n.Name, n.Status, want)
		}
	}
}

func TestUndoFailureIsStuck(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx := context.Background()
	h := (&saga.Hooks{}).InjectError("finish").InjectUndoError("create_b")
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Stuck || o.FailedNode != "finish" || o.UndoNode != "create_b" || o.UndoErr == nil {
		t.Fatalf("outcome %+v", o)
	}
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != "done" || !v.Stuck || v.Outcome == nil || v.Outcome.Kind != saga.Stuck {
		t.Fatalf("view: state %s stuck %v outcome %+v", v.State, v.Stuck, v.Outcome)
	}
	// a is not undone: the engine stopped scheduling at the undo failure.
	if got := f.effects(t, "k"); !slices.Contains(got, "a") || !slices.Contains(got, "b") {
		t.Fatalf("effects %v; a stuck saga keeps its partial state", got)
	}
	// Never silently recovered: a fresh SEC does not pick it up.
	rep, err := f.sec(t, "sec-1").Recover(ctx)
	if err != nil || len(rep.Recovered) != 0 {
		t.Fatalf("recover: %+v, %v", rep, err)
	}
	for _, filter := range []saga.ListFilter{{States: []string{"done"}}, {}} {
		list, err := sec.List(ctx, filter)
		if err != nil || len(list) != 1 || !list[0].Stuck {
			t.Fatalf("list %+v: %+v, %v", filter, list, err)
		}
	}
	if n, err := sec.StuckCount(ctx); err != nil || n != 1 {
		t.Fatalf("stuck count %d %v", n, err)
	}
	// Wait from the log reports it stuck too.
	o2, err := f.sec(t, "sec-9").Wait(ctx, o.SagaID)
	if err != nil || o2.Kind != saga.Stuck || o2.UndoNode != "create_b" {
		t.Fatalf("wait from log: %+v %v", o2, err)
	}
}

func TestOwnershipConditionalWrites(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	secA := f.sec(t, "sec-a")
	g := newGate()
	f.app.setGate("create_b", g)
	id, err := secA.Create(ctx, f.app.sample, sampleParams{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for c's success to be in the log, not only for c to have run:
	// adopting between the two would refuse A's write of c, and B would
	// run c again.
	waitFor(t, func() bool {
		v, err := secA.Get(ctx, id)
		return err == nil && nodeView(t, v, "create_c").Status == "succeeded"
	})
	secB := f.sec(t, "sec-b")
	n, err := secB.Adopt(ctx, "sec-a")
	if err != nil || n != 1 {
		t.Fatalf("adopt: %d, %v", n, err)
	}
	// A's next write (b's succeeded) is refused: it stops driving.
	g.open()
	waitFor(t, func() bool { return secA.InFlight() == 0 })
	var byA int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM saga_node_event WHERE saga_id = $1 AND creator = 'sec-a' AND node_id = 2 AND event_type = 'succeeded'`, id).Scan(&byA); err != nil || byA != 0 {
		t.Fatalf("old owner appended after adoption: %d, %v", byA, err)
	}
	rep, err := secB.Recover(ctx)
	if err != nil || len(rep.Recovered) != 1 {
		t.Fatalf("recover: %+v %v", rep, err)
	}
	o := wait(t, secB, id)
	if o.Kind != saga.Succeeded {
		t.Fatalf("outcome %v", o.Error())
	}
	// The old owner's Wait follows the saga to its new owner's outcome.
	if o, err := secA.Wait(ctx, id); err != nil || o.Kind != saga.Succeeded {
		t.Fatalf("old owner Wait: %+v, %v", o, err)
	}
	v, _ := secB.Get(ctx, id)
	// 1 at creation, 2 at adoption, 3 when B's recovery claimed it.
	if v.CurrentSEC != "sec-b" || v.AdoptGeneration != 3 {
		t.Fatalf("owner %s gen %d", v.CurrentSEC, v.AdoptGeneration)
	}
	// b ran again under B (A's result was never recorded).
	if r := f.runs(t, "k"); r["create_b/do"] != 2 || r["create_a/do"] != 1 {
		t.Fatalf("runs %v", r)
	}
}

func TestAbandon(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec := f.sec(t, "sec-1")
	g := newGate()
	defer g.open()
	f.app.setGate("create_a", g)
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithSubject("vol-1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := sec.Abandon(ctx, id, "nonsense", "x"); err == nil {
		t.Fatal("abandon with a bad reason accepted")
	}
	if err := sec.Abandon(ctx, id, saga.AbandonOperator, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := sec.Wait(ctx, id); !errors.Is(err, saga.ErrAbandoned) {
		t.Fatalf("wait: %v", err)
	}
	v, err := sec.Get(ctx, id)
	if err != nil || v.State != "abandoned" || v.AbandonReason != "operator" || v.SubjectID != "vol-1" {
		t.Fatalf("view %+v %v", v, err)
	}
	if l, err := sec.List(ctx, saga.ListFilter{SubjectID: "vol-1", Name: "sample"}); err != nil || len(l) != 1 || l[0].ID != id {
		t.Fatalf("list by subject: %+v %v", l, err)
	}
	if l, err := sec.List(ctx, saga.ListFilter{SubjectID: "vol-2"}); err != nil || len(l) != 0 {
		t.Fatalf("list by other subject: %+v %v", l, err)
	}
	if err := sec.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := f.sec(t, "sec-1").Recover(ctx)
	if err != nil || len(rep.Recovered) != 0 {
		t.Fatalf("recovered an abandoned saga: %+v %v", rep, err)
	}
	if err := sec.Abandon(ctx, uuid.New(), saga.AbandonOperator, "x"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("abandon unknown: %v", err)
	}
}

func TestShutdownThenRecover(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sec := saga.NewSEC(f.pool, "sec-1", f.reg, f.pool, testLogger(t))
	g := newGate()
	f.app.setGate("create_b", g)
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.runs(t, "k")["create_c/do"] == 1 })
	if err := sec.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "x"}); !errors.Is(err, saga.ErrClosed) {
		t.Fatalf("create after shutdown: %v", err)
	}
	v, _ := sec.Get(ctx, id)
	if v.State != "running" {
		t.Fatalf("state after shutdown %s", v.State)
	}
	g.open()
	sec2 := f.sec(t, "sec-1")
	if _, err := sec2.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if o := wait(t, sec2, id); o.Kind != saga.Succeeded {
		t.Fatal(o.Error())
	}
}

func TestTestHelpers(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	sagatest.ActionsSucceedIdempotently(t, sec, f.app.sample, sampleParams{Key: "idem", Wide: 1})
	if r := f.runs(t, "idem"); r["create_a/do"] != 2 || r["w0/do"] != 2 {
		t.Fatalf("runs %v", r)
	}
	var key string
	n := 0
	setup := func() any {
		n++
		key = "unwind-" + string(rune('a'+n))
		return sampleParams{Key: key, Wide: 1}
	}
	check := func(t testing.TB) {
		if got := f.effects(t, key); len(got) != 0 {
			t.Fatalf("left after unwind: %v", got)
		}
	}
	sagatest.ActionFailureCanUnwind(t, sec, f.app.sample, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, sec, f.app.sample, setup, check)
	sagatest.UndoTransientFaultRecovers(t, sec, f.app.sample, setup, check)
	var seen []string
	sagatest.BeforeEachNode(t, sec, f.app.sample, setup, func(_ context.Context, node string) {
		seen = append(seen, node)
	}, func(t testing.TB, node string, o saga.Outcome) {
		if o.Kind != saga.Succeeded {
			t.Fatalf("before %s: %v", node, o.Error())
		}
	})
	if !slices.Equal(seen, []string{"create_a", "create_b", "create_c", "w0", "finish"}) {
		t.Fatalf("before-node hook saw %v", seen)
	}
	sagatest.NoUndoFailed(t, f.pool)
	sagatest.WaitIdle(t, f.pool, 10*time.Second)
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRecoverSkipsLiveSagasAndDuplicateIDs(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	type ctxKey struct{}
	sec := f.sec(t, "sec-1", saga.WithBaseContext(context.WithValue(context.Background(), ctxKey{}, "epoch-7")))
	var sawEpoch atomic.Bool
	g := newGate()
	f.app.setGate("create_b", g)
	h := &saga.Hooks{BeforeNode: func(ctx context.Context, node string) {
		if ctx.Value(ctxKey{}) == "epoch-7" {
			sawEpoch.Store(true)
		}
	}}
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	// Running here: recovery leaves it alone.
	rep, err := sec.Recover(ctx)
	if err != nil || rep.Skipped != 1 || len(rep.Recovered) != 0 {
		t.Fatalf("recover: %+v %v", rep, err)
	}
	// The same id cannot be created again with another DAG.
	if _, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "other"}, saga.WithID(id)); err == nil {
		t.Fatal("duplicate id accepted while running")
	}
	g.open()
	if o := wait(t, sec, id); o.Kind != saga.Succeeded {
		t.Fatal(o.Error())
	}
	if _, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "other"}, saga.WithID(id)); err == nil {
		t.Fatal("duplicate id accepted after finishing")
	}
	// Nor with the same DAG: a finished saga is never driven again (its
	// first node would run a second time, after the saga's end).
	if _, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithID(id)); !errors.Is(err, sagalog.ErrDuplicate) {
		t.Fatalf("same saga created again after finishing: %v", err)
	}
	if r := f.runs(t, "k"); r["create_a/do"] != 1 {
		t.Fatalf("runs after the repeated create: %v", r)
	}
	if !sawEpoch.Load() {
		t.Fatal("the base context did not reach the actions")
	}
	if sec.InFlight() != 0 {
		t.Fatalf("in flight %d", sec.InFlight())
	}
}

func TestConstantsOnlySaga(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	tmpl := saga.NewTemplate("consts")
	saga.SetBuild(tmpl, func(b *saga.Builder, p int) error {
		b.Append(saga.ConstantNode("one", p))
		b.Append(saga.ConstantNode("two", p*2))
		return nil
	})
	sec2 := saga.NewSEC(f.pool, "sec-c", mustRegistry(t, tmpl), nil, nil)
	defer sec2.Shutdown(context.Background())
	o, err := sec2.Run(context.Background(), tmpl, 21)
	if err != nil || o.Kind != saga.Succeeded || string(o.Output) != "42" {
		t.Fatalf("%+v %v", o, err)
	}
	v, err := sec.Get(context.Background(), o.SagaID)
	if err != nil || v.State != "done" {
		t.Fatalf("state %s %v", v.State, err)
	}
}

func mustRegistry(t testing.TB, tmpls ...*saga.Template) *saga.Registry {
	t.Helper()
	r, err := saga.NewRegistry(tmpls...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// TestRecoverFencesStaleInstance: a second instance of the same SEC id
// (the first one's shutdown never completed) recovers the saga; the first
// can no longer append and stops; the saga finishes once.
func TestRecoverFencesStaleInstance(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := f.sec(t, "sec-1")
	g := newGate()
	f.app.setGate("create_b", g)
	id, err := first.Create(ctx, f.app.sample, sampleParams{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	// Wait for create_c's end in the log, not for its run counter: the
	// counter moves before the log does, and a recovery in between reruns
	// create_c and fences the first instance before create_b ever runs
	// there (both fine, but not the interleaving this test is about).
	waitFor(t, func() bool {
		v, err := first.Get(ctx, id)
		return err == nil && nodeView(t, v, "create_c").Status == "succeeded"
	})
	second := f.sec(t, "sec-1")
	rep, err := second.Recover(ctx)
	if err != nil || len(rep.Recovered) != 1 {
		t.Fatalf("recover: %+v %v", rep, err)
	}
	g.open()
	if o := wait(t, second, id); o.Kind != saga.Succeeded {
		t.Fatal(o.Error())
	}
	waitFor(t, func() bool { return first.InFlight() == 0 })
	v, _ := second.Get(ctx, id)
	if v.AdoptGeneration != 2 {
		t.Fatalf("generation %d, want 2", v.AdoptGeneration)
	}
	if o, err := first.Wait(ctx, id); err != nil || o.Kind != saga.Succeeded {
		t.Fatalf("stale instance Wait: %+v %v", o, err)
	}
	if r := f.runs(t, "k"); r["finish/do"] != 1 || r["create_a/do"] != 1 || r["create_b/do"] != 2 {
		t.Fatalf("runs %v", r)
	}
}
