package saga_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/orchestrator/internal/saga"
)

// An operator's abandonment of a running saga unwinds it from where it is:
// the action in flight that hangs past the unwind grace is cancelled and
// recorded failed with the operator's error (never retried), every completed node is undone, and
// the saga ends failed, its comment in the outcome, the log and the view.
func TestUnwindRunningSaga(t *testing.T) {
	count := counters(t)
	f := newFixture(t)
	sec := f.sec(t, "sec-1", saga.WithUnwindGrace(200*time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := newGate() // never opened: create_b hangs until its context ends
	f.app.setGate("create_b", g)
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.runs(t, "k")["create_c/do"] == 1 })

	const why = "create_b hangs on a dead agent"
	res, err := sec.Unwind(ctx, id, why)
	if err != nil {
		t.Fatal(err)
	}
	if res.Resumed || res.Recovered || len(res.Skipped) != 0 {
		t.Fatalf("unwind of a saga running here: %+v", res)
	}
	o := wait(t, sec, id)
	if o.Kind != saga.Failed || o.FailedNode != "create_b" || o.UnwindComment != why {
		t.Fatalf("outcome %v at %q (comment %q): %v", o.Kind, o.FailedNode, o.UnwindComment, o.Error())
	}
	if e := o.Err; e.Kind != saga.ErrKindAbandoned || e.Reason != saga.ErrKindAbandoned || e.Retryable || !strings.Contains(e.Message, why) {
		t.Fatalf("error of the cancelled action: %+v", e)
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("left after the unwind: %v", got)
	}
	runs := f.runs(t, "k")
	for k, want := range map[string]int{"create_a/undo": 1, "create_c/undo": 1, "create_b/undo": 0, "finish/do": 0} {
		if runs[k] != want {
			t.Errorf("%s ran %d times, want %d (runs %v)", k, runs[k], want, runs)
		}
	}
	if n := count("storagecp.saga.action.retries", attribute.String("saga", "sample"), attribute.String("node", "create_b")); n != 0 {
		t.Errorf("the cancelled action was retried %d times", n)
	}
	v, err := sec.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if v.State != "done" || v.Stuck || v.Outcome == nil || v.Outcome.Kind != saga.Failed || v.UnwindComment != why || v.UnwindTime == nil {
		t.Fatalf("view: state %s stuck %v outcome %+v comment %q", v.State, v.Stuck, v.Outcome, v.UnwindComment)
	}
	b := nodeView(t, v, "create_b")
	if b.Status != "failed" || b.Error == nil || b.Error.Kind != saga.ErrKindAbandoned {
		t.Fatalf("create_b: %s, %+v", b.Status, b.Error)
	}
	var failedEvent string
	for _, e := range b.Events {
		if e.Type == "failed" {
			failedEvent = string(e.Data)
		}
	}
	if !strings.Contains(failedEvent, why) {
		t.Fatalf("create_b's failed event %q lacks the operator's comment", failedEvent)
	}
	for _, n := range []string{"create_a", "create_c"} {
		if s := nodeView(t, v, n).Status; s != "undo_finished" {
			t.Errorf("%s: %s, want undo_finished", n, s)
		}
	}
	// Wait from the log (another SEC) says the same.
	o2, err := f.sec(t, "sec-2").Wait(ctx, id)
	if err != nil || o2.Kind != saga.Failed || o2.FailedNode != "create_b" || o2.UnwindComment != why {
		t.Fatalf("outcome from the log: %+v, %v", o2, err)
	}

	// What cannot be unwound is refused, saying why.
	if _, err := sec.Unwind(ctx, id, "again"); !errors.Is(err, saga.ErrFinished) {
		t.Fatalf("unwind of a finished saga: %v", err)
	}
	if _, err := sec.Unwind(ctx, uuid.New(), "x"); !errors.Is(err, saga.ErrNotFound) {
		t.Fatalf("unwind of an unknown saga: %v", err)
	}
	f.app.setGate("create_b", nil)
	g2 := newGate()
	defer g2.open()
	f.app.setGate("create_a", g2)
	other, err := f.sec(t, "sec-3").Create(ctx, f.app.sample, sampleParams{Key: "o"})
	if err != nil {
		t.Fatal(err)
	}
	var owned *saga.OwnedElsewhereError
	if _, err := sec.Unwind(ctx, other, "x"); !errors.As(err, &owned) || owned.Owner != "sec-3" || !errors.Is(err, saga.ErrNotOwner) {
		t.Fatalf("unwind of another SEC's saga: %v", err)
	}
	if err := sec.Abandon(ctx, other, saga.AbandonOperator, "stop"); err != nil {
		t.Fatal(err)
	}
	if _, err := sec.Unwind(ctx, other, "x"); !errors.Is(err, saga.ErrAbandoned) {
		t.Fatalf("unwind of an abandoned saga: %v", err)
	}
}

// The operator's unwind cancels actions only: an undo in flight (here
// retrying a transient fault) goes on under a live context and finishes.
func TestUnwindLeavesUndosRunning(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := newGate()
	defer g.open()
	f.app.setUndoFault("create_c", func(int) error {
		select {
		case <-g.ch:
			return nil
		default:
			return status.Error(codes.Unavailable, "agent restarting")
		}
	})
	h := (&saga.Hooks{}).InjectError("finish")
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		v, err := sec.Get(ctx, id)
		return err == nil && nodeView(t, v, "create_c").RetryError != ""
	})
	if _, err := sec.Unwind(ctx, id, "hurry up"); err != nil {
		t.Fatal(err)
	}
	g.open()
	o := wait(t, sec, id)
	if o.Kind != saga.Failed || o.FailedNode != "finish" || o.Err.Kind != saga.ErrKindInjected || o.UnwindComment != "hurry up" {
		t.Fatalf("outcome %+v", o)
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("left after the unwind: %v", got)
	}
}

// An action that finishes although its context was cancelled (the call
// had landed) is recorded succeeded and undone like every other: the
// outcome then names no failed node and carries the operator's error.
func TestUnwindUndoesAnActionThatFinishedAnyway(t *testing.T) {
	f := newFixture(t)
	release, holding := make(chan struct{}), make(chan struct{})
	tmpl := saga.NewTemplate("stubborn")
	first := tmpl.Action("first", f.app.insertItem("first"), f.app.deleteItem("first"))
	hold := tmpl.Action("hold", func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		close(holding)
		<-release // ignores ctx on purpose
		return f.app.insertItem("hold")(context.Background(), ac)
	}, f.app.deleteItem("hold"))
	never := tmpl.Action("never", f.app.insertItem("never"), f.app.deleteItem("never"))
	saga.SetBuild(tmpl, func(b *saga.Builder, _ sampleParams) error {
		b.Append(first.Node())
		b.Append(hold.Node())
		b.Append(never.Node())
		return nil
	})
	sec := saga.NewSEC(f.pool, "sec-s", mustRegistry(t, tmpl), f.pool, testLogger(t))
	defer sec.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id, err := sec.Create(ctx, tmpl, sampleParams{Key: "s"})
	if err != nil {
		t.Fatal(err)
	}
	<-holding
	if _, err := sec.Unwind(ctx, id, "stop it"); err != nil {
		t.Fatal(err)
	}
	close(release)
	o := wait(t, sec, id)
	if o.Kind != saga.Failed || o.FailedNode != "" || o.Err == nil || o.Err.Kind != saga.ErrKindAbandoned {
		t.Fatalf("outcome %+v", o)
	}
	if !strings.Contains(o.Error().Error(), "unwound by an operator: stop it") {
		t.Fatalf("outcome error %v", o.Error())
	}
	if got := f.effects(t, "s"); len(got) != 0 {
		t.Fatalf("left after the unwind: %v", got)
	}
	if r := f.runs(t, "s"); r["hold/undo"] != 1 || r["never/do"] != 0 {
		t.Fatalf("runs %v", r)
	}
}

// stuckAt runs the sample saga to stuck: finish fails, and create_b's undo
// fails for good (it keeps failing while *broken).
func stuckAt(t *testing.T, f *fixture, sec *saga.SEC, key string) uuid.UUID {
	t.Helper()
	h := (&saga.Hooks{}).InjectError("finish")
	o, err := sec.Run(context.Background(), f.app.sample, sampleParams{Key: key}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Stuck || o.UndoNode != "create_b" {
		t.Fatalf("outcome %+v, want stuck at create_b's undo", o)
	}
	return o.SagaID
}

// A stuck saga goes on unwinding once the operator, having dealt with the
// failed undo's effect, abandons it: the undo is recorded skipped, every
// remaining undo runs, and the saga ends failed. A second undo that fails
// for good leaves it stuck again there, and the operator can repeat.
func TestUnwindStuckSaga(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.app.setUndoFault("create_b", func(n int) error {
		if n == 1 {
			return status.Error(codes.NotFound, "b's region is gone")
		}
		t.Errorf("create_b's skipped undo ran again (call %d)", n)
		return nil
	})
	f.app.setUndoFault("create_a", func(int) error {
		return status.Error(codes.FailedPrecondition, "a is wedged")
	})
	id := stuckAt(t, f, sec, "k")
	if got := f.effects(t, "k"); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("effects of the stuck saga %v", got)
	}
	// The operator removes b by hand, then abandons the saga.
	if _, err := f.pool.Exec(ctx, `DELETE FROM effects WHERE key = 'k' AND item = 'b'`); err != nil {
		t.Fatal(err)
	}
	res, err := sec.Unwind(ctx, id, "removed b by hand")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Resumed || !slices.Equal(res.Skipped, []string{"create_b"}) || !res.Recovered {
		t.Fatalf("result %+v", res)
	}
	// create_a's undo fails for good too: stuck again, there.
	o := wait(t, sec, id)
	if o.Kind != saga.Stuck || o.UndoNode != "create_a" || o.FailedNode != "finish" || o.UnwindComment != "removed b by hand" {
		t.Fatalf("outcome %+v, want stuck at create_a's undo", o)
	}
	v, err := sec.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Stuck || v.State != "done" {
		t.Fatalf("view: stuck %v state %s", v.Stuck, v.State)
	}
	b := nodeView(t, v, "create_b")
	if b.Status != "undo_skipped" || b.SkipComment != "removed b by hand" || b.Error == nil || b.Error.Reason != "grpc:NotFound" {
		t.Fatalf("create_b: %s %q %+v", b.Status, b.SkipComment, b.Error)
	}
	if a := nodeView(t, v, "create_a"); a.Status != "undo_failed" {
		t.Fatalf("create_a: %s", a.Status)
	}
	if n, err := sec.StuckCount(ctx); err != nil || n != 1 {
		t.Fatalf("stuck count %d, %v", n, err)
	}

	// The operator removes a by hand too and abandons again: a's failed
	// undo is skipped as well, and the saga ends.
	if _, err := f.pool.Exec(ctx, `DELETE FROM effects WHERE key = 'k' AND item = 'a'`); err != nil {
		t.Fatal(err)
	}
	res, err = sec.Unwind(ctx, id, "a unwedged")
	if err != nil || !slices.Equal(res.Skipped, []string{"create_a"}) {
		t.Fatalf("second unwind: %+v, %v", res, err)
	}
	o = wait(t, sec, id)
	if o.Kind != saga.Failed || o.FailedNode != "finish" || o.UnwindComment != "a unwedged" {
		t.Fatalf("outcome %+v, want failed at finish", o)
	}
	v, err = sec.Get(ctx, id)
	if err != nil || v.Stuck || v.Outcome == nil || v.Outcome.Kind != saga.Failed {
		t.Fatalf("view after the second unwind: %+v, %v", v, err)
	}
	if n, err := sec.StuckCount(ctx); err != nil || n != 0 {
		t.Fatalf("stuck count %d, %v", n, err)
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("effects %v", got)
	}
	// The skipped undos never ran again (the faults would have said so).
	if r := f.runs(t, "k"); r["create_a/undo"] != 0 || r["create_b/undo"] != 0 || r["create_c/undo"] != 1 {
		t.Fatalf("runs %v", r)
	}
	if _, err := sec.Unwind(ctx, id, "once more"); !errors.Is(err, saga.ErrFinished) {
		t.Fatalf("unwind of a saga that finished unwinding: %v", err)
	}
	// A fresh SEC recovers nothing: the saga is done.
	if rep, err := f.sec(t, "sec-1").Recover(ctx); err != nil || len(rep.Recovered) != 0 {
		t.Fatalf("recover: %+v, %v", rep, err)
	}
}

// A resumed stuck saga is durable from the moment it is resumed: a SEC
// that stops (as at a crash) while an undo after the skip is retrying
// leaves it unwinding, and the next SEC with its id recovers and finishes
// it past the skipped undo.
func TestUnwindStuckSagaSurvivesARestart(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	first := saga.NewSEC(f.pool, "sec-1", f.reg, f.pool, testLogger(t))
	g := newGate()
	defer g.open()
	f.app.setUndoFault("create_b", func(n int) error {
		if n == 1 {
			return status.Error(codes.NotFound, "b's region is gone")
		}
		return nil
	})
	f.app.setUndoFault("create_a", func(int) error {
		select {
		case <-g.ch:
			return nil
		default:
			return status.Error(codes.Unavailable, "database restarting")
		}
	})
	id := stuckAt(t, f, first, "k")
	if _, err := first.Unwind(ctx, id, "b is handled"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		v, err := first.Get(ctx, id)
		return err == nil && nodeView(t, v, "create_a").RetryError != ""
	})
	if err := first.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := f.sec(t, "viewer").Get(ctx, id)
	if err != nil || v.State != "unwinding" || v.Stuck || nodeView(t, v, "create_a").Status != "undo_started" {
		t.Fatalf("after the stop: state %s stuck %v, %v", v.State, v.Stuck, err)
	}
	g.open()
	second := f.sec(t, "sec-1")
	rep, err := second.Recover(ctx)
	if err != nil || len(rep.Recovered) != 1 {
		t.Fatalf("recover: %+v, %v", rep, err)
	}
	o := wait(t, second, id)
	if o.Kind != saga.Failed || o.FailedNode != "finish" || o.UnwindComment != "b is handled" {
		t.Fatalf("outcome %+v", o)
	}
	if got := f.effects(t, "k"); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("effects %v: only b (the skipped undo's) may remain", got)
	}
}

// A saga this SEC owns but does not run (its recovery failed, or it was
// left by an earlier instance of the SEC) is loaded and unwound. The action
// it had in flight runs again (it may have landed, and only an action that
// finishes can be undone), then everything is undone; the outcome carries
// the operator's error.
func TestUnwindLoadsASagaNotRunningHere(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := writeLog(t, f, "sec-r", "k", "running",
		cat(ok(nStart, `{"key":"k"}`), ok(nA, item("a")), started(nB), ok(nC, item("c"))), nil)
	sec := f.sec(t, "sec-r")
	res, err := sec.Unwind(ctx, id, "b hung before the crash")
	if err != nil || !res.Recovered || res.Resumed {
		t.Fatalf("unwind: %+v, %v", res, err)
	}
	o := wait(t, sec, id)
	if o.Kind != saga.Failed || o.FailedNode != "" || o.Err.Kind != saga.ErrKindAbandoned || o.UnwindComment != "b hung before the crash" {
		t.Fatalf("outcome %+v", o)
	}
	runs := f.runs(t, "k")
	for k, want := range map[string]int{"create_b/do": 1, "create_a/undo": 1, "create_c/undo": 1, "create_b/undo": 1, "finish/do": 0} {
		if runs[k] != want {
			t.Errorf("%s ran %d times, want %d (runs %v)", k, runs[k], want, runs)
		}
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("left after the unwind: %v", got)
	}
}

// An action in flight that finishes within the unwind grace is not
// cancelled: it is recorded succeeded and undone.
func TestUnwindGraceLetsAnActionFinish(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1", saga.WithUnwindGrace(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := newGate()
	f.app.setGate("create_b", g)
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return f.runs(t, "k")["create_c/do"] == 1 })
	if _, err := sec.Unwind(ctx, id, "slow"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		v, err := sec.Get(ctx, id)
		return err == nil && v.State == "unwinding"
	})
	g.open()
	o := wait(t, sec, id)
	if o.Kind != saga.Failed || o.FailedNode != "" || o.Err.Kind != saga.ErrKindAbandoned {
		t.Fatalf("outcome %+v", o)
	}
	if r := f.runs(t, "k"); r["create_b/undo"] != 1 || r["finish/do"] != 0 {
		t.Fatalf("runs %v", r)
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("left after the unwind: %v", got)
	}
}

// An operator's unwind that comes to pass only after every action
// succeeded (the last one finished within the grace) is too late: the last
// action published the saga's result, which no undo is ever run past, so
// the saga finishes, its outcome carrying the comment.
func TestUnwindAfterTheLastActionFinishes(t *testing.T) {
	f := newFixture(t)
	tmpl := saga.NewTemplate("late")
	first := tmpl.Action("first", f.app.insertItem("first"), f.app.deleteItem("first"))
	last := tmpl.Action("last", f.app.insertItem("last"), f.app.deleteItem("last"))
	saga.SetBuild(tmpl, func(b *saga.Builder, _ sampleParams) error {
		b.Append(first.Node())
		b.Append(last.Node())
		return nil
	})
	sec := saga.NewSEC(f.pool, "sec-l", mustRegistry(t, tmpl), f.pool, testLogger(t), saga.WithUnwindGrace(time.Minute))
	defer sec.Shutdown(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g := newGate()
	f.app.setGate("last", g)
	id, err := sec.Create(ctx, tmpl, sampleParams{Key: "l"})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		v, err := sec.Get(ctx, id)
		return err == nil && nodeView(t, v, "last").Status == "started"
	})
	if _, err := sec.Unwind(ctx, id, "too late"); err != nil {
		t.Fatal(err)
	}
	g.open()
	o := wait(t, sec, id)
	if o.Kind != saga.Succeeded || o.UnwindComment != "too late" {
		t.Fatalf("outcome %+v, want succeeded", o)
	}
	if r := f.runs(t, "l"); r["last/undo"] != 0 || r["first/undo"] != 0 {
		t.Fatalf("runs %v: nothing may be undone", r)
	}
	if got := f.effects(t, "l"); !slices.Equal(got, []string{"first", "last"}) {
		t.Fatalf("effects %v", got)
	}
	v, err := sec.Get(ctx, id)
	if err != nil || v.State != "done" || v.Outcome == nil || v.Outcome.Kind != saga.Succeeded {
		t.Fatalf("view %+v, %v", v, err)
	}
}
