package saga_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/orchestrator/internal/saga"
)

// counters installs a manual metric reader for the test (before any SEC is
// made: a SEC makes its instruments once) and returns a function reading
// an int64 counter's value for a set of attributes.
func counters(t *testing.T) func(name string, kv ...attribute.KeyValue) int64 {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	t.Cleanup(func() { otel.SetMeterProvider(prev) })
	return func(name string, kv ...attribute.KeyValue) int64 {
		t.Helper()
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Fatal(err)
		}
		want := attribute.NewSet(kv...)
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				sum, ok := m.Data.(metricdata.Sum[int64])
				if !ok || m.Name != name {
					continue
				}
				for _, p := range sum.DataPoints {
					if p.Attributes.Equals(&want) {
						return p.Value
					}
				}
			}
		}
		return 0
	}
}

func nodeView(t testing.TB, v saga.SagaView, name string) saga.NodeView {
	t.Helper()
	for _, n := range v.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("saga %s has no node %s", v.ID, name)
	return saga.NodeView{}
}

// An undo that fails three times with a retryable error, then runs, is
// retried in place: the saga unwinds cleanly, the undo ran for real once,
// and the log, the view and the metrics say it took four runs.
func TestUndoTransientFaultIsRetried(t *testing.T) {
	count := counters(t)
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h := (&saga.Hooks{}).InjectError("finish").InjectUndoTransient("create_b", 3)
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.FailedNode != "finish" {
		t.Fatalf("outcome %v at %s (%v), want failed at finish", o.Kind, o.FailedNode, o.Error())
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("effects left after the unwind: %v", got)
	}
	if r := f.runs(t, "k"); r["create_b/undo"] != 1 || r["create_a/undo"] != 1 {
		t.Fatalf("runs %v: every undo must have run once for real", r)
	}
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	b := nodeView(t, v, "create_b")
	if b.Status != "undo_finished" || b.Attempts != 4 || b.RetryError != "" {
		t.Fatalf("create_b: %s after %d runs (retry error %q), want undo_finished after 4", b.Status, b.Attempts, b.RetryError)
	}
	if a := nodeView(t, v, "create_a"); a.Status != "undo_finished" || a.Attempts != 0 {
		t.Fatalf("create_a: %s, %d runs recorded; one run records none", a.Status, a.Attempts)
	}
	if v.Stuck {
		t.Fatal("the saga is stuck")
	}
	kv := []attribute.KeyValue{attribute.String("saga", "sample"), attribute.String("node", "create_b")}
	if n := count("storagecp.saga.undo.retries", kv...); n != 3 {
		t.Fatalf("undo retries of create_b: %d, want 3", n)
	}
	if n := count("storagecp.saga.finished", attribute.String("saga", "sample"), attribute.String("outcome", "unwound")); n != 1 {
		t.Fatalf("unwound sagas: %d, want 1", n)
	}
}

// A permanent undo error still leaves the saga stuck — after any retryable
// errors before it were retried — and the outcome, the view and the
// metrics say which node, why and after how many runs.
func TestUndoPermanentErrorIsStuck(t *testing.T) {
	count := counters(t)
	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	f.app.setUndoFault("create_b", func(n int) error {
		if n <= 2 {
			return status.Error(codes.Unavailable, "peer restarting")
		}
		return status.Error(codes.NotFound, "region gone missing")
	})
	h := (&saga.Hooks{}).InjectError("finish")
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Stuck || o.UndoNode != "create_b" || o.UndoErr == nil {
		t.Fatalf("outcome %+v, want stuck at create_b's undo", o)
	}
	if e := o.UndoErr; e.Reason != "grpc:NotFound" || e.Retryable || e.Attempts != 3 || e.Code != codes.NotFound {
		t.Fatalf("undo error %+v, want NotFound, permanent, after 3 runs", e)
	}
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	b := nodeView(t, v, "create_b")
	if !v.Stuck || b.Status != "undo_failed" || b.Error == nil || b.Error.Reason != "grpc:NotFound" || b.Attempts != 3 {
		t.Fatalf("view: stuck %v, create_b %s after %d runs, error %+v", v.Stuck, b.Status, b.Attempts, b.Error)
	}
	kv := []attribute.KeyValue{attribute.String("saga", "sample"), attribute.String("node", "create_b")}
	if n := count("storagecp.saga.undo.retries", kv...); n != 2 {
		t.Fatalf("undo retries: %d, want 2", n)
	}
	if n := count("storagecp.saga.stuck", append(kv, attribute.String("reason", "grpc:NotFound"))...); n != 1 {
		t.Fatalf("stuck count: %d, want 1", n)
	}
	if n := count("storagecp.saga.finished", attribute.String("saga", "sample"), attribute.String("outcome", "stuck")); n != 1 {
		t.Fatalf("stuck sagas: %d, want 1", n)
	}

	// The test hook's undo error is permanent too: stuck at once.
	f.app.setUndoFault("create_b", nil)
	h = (&saga.Hooks{}).InjectError("finish").InjectUndoError("create_c")
	if o, err = sec.Run(ctx, f.app.sample, sampleParams{Key: "k2"}, saga.WithHooks(h)); err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Stuck || o.UndoNode != "create_c" || o.UndoErr.Reason != saga.ErrKindInjected || o.UndoErr.Attempts != 1 {
		t.Fatalf("outcome %+v, undo error %+v", o, o.UndoErr)
	}
}

// An action's retryable errors are retried in place within the SEC's
// budget: within it the node succeeds (its action ran once for real);
// beyond it the node fails with the last error, marked retryable, and the
// saga unwinds. A permanent error is never retried.
func TestActionTransientFaultIsRetriedWithinBudget(t *testing.T) {
	count := counters(t)
	f := newFixture(t)
	sec := f.sec(t, "sec-1", saga.WithActionRetry(saga.RetryPolicy{MaxAttempts: 3, Initial: 10 * time.Millisecond}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "ok"}, saga.WithHooks((&saga.Hooks{}).InjectActionTransient("create_b", 2)))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Succeeded {
		t.Fatalf("two transient faults within a budget of three runs: %v", o.Error())
	}
	if r := f.runs(t, "ok"); r["create_b/do"] != 1 {
		t.Fatalf("runs %v", r)
	}
	if n := count("storagecp.saga.action.retries", attribute.String("saga", "sample"), attribute.String("node", "create_b")); n != 2 {
		t.Fatalf("action retries %d, want 2", n)
	}

	o, err = sec.Run(ctx, f.app.sample, sampleParams{Key: "over"}, saga.WithHooks((&saga.Hooks{}).InjectActionTransient("create_b", 5)))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.FailedNode != "create_b" {
		t.Fatalf("five transient faults: %v at %s, want failed at create_b", o.Kind, o.FailedNode)
	}
	if e := o.Err; !e.Retryable || e.Reason != "grpc:Unavailable" || e.Attempts != 3 || e.Code != codes.Unavailable {
		t.Fatalf("error %+v, want the retryable error after 3 runs", e)
	}
	if got := f.effects(t, "over"); len(got) != 0 {
		t.Fatalf("effects left: %v", got)
	}
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	// Its outcome unknown (the last run's error said nothing of whether
	// it landed), create_b is undone too.
	if b := nodeView(t, v, "create_b"); b.Status != "undo_finished" {
		t.Fatalf("create_b: %s after %d runs", b.Status, b.Attempts)
	}

	// A permanent error: one run.
	o, err = sec.Run(ctx, f.app.sample, sampleParams{Key: "perm"}, saga.WithHooks((&saga.Hooks{}).InjectError("create_b")))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.Err.Attempts != 1 || o.Err.Retryable {
		t.Fatalf("injected error: %+v", o.Err)
	}
}

// Repair-lock contention, reported as ABORTED on purpose and marked
// Permanent, fails its node at once with the code intact (the RPC that
// waits answers it); an unmarked ABORTED is a conflict worth retrying.
func TestMarkedPermanentFailsAtOnce(t *testing.T) {
	f := newFixture(t)
	var calls atomic.Int32
	tmpl := saga.NewTemplate("contend")
	lock := tmpl.Action("lock", func(ctx context.Context, ac *saga.ActionContext) (any, error) {
		n := calls.Add(1)
		var p string
		if err := ac.Params(&p); err != nil {
			return nil, err
		}
		if p == "held" {
			return nil, saga.Permanent(status.Error(codes.Aborted, "volume repair lock"))
		}
		if n == 1 {
			return nil, status.Error(codes.Aborted, "could not serialize access")
		}
		return "locked", nil
	}, nil)
	saga.SetBuild(tmpl, func(b *saga.Builder, _ string) error { b.Append(lock.Node()); return nil })
	sec := saga.NewSEC(f.pool, "sec-c", mustRegistry(t, tmpl), nil, testLogger(t),
		saga.WithActionRetry(saga.RetryPolicy{Initial: 10 * time.Millisecond}))
	defer sec.Shutdown(context.Background())
	ctx := context.Background()

	o, err := sec.Run(ctx, tmpl, "held")
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.Err.Code != codes.Aborted || o.Err.Attempts != 1 || o.Err.Reason != "marked_permanent" || calls.Load() != 1 {
		t.Fatalf("contention: %v, error %+v after %d calls", o.Kind, o.Err, calls.Load())
	}
	if st, _ := status.FromError(o.Error()); st.Code() != codes.Aborted {
		t.Fatalf("outcome error code %v, want Aborted", st.Code())
	}
	calls.Store(0)
	if o, err = sec.Run(ctx, tmpl, "free"); err != nil || o.Kind != saga.Succeeded || calls.Load() != 2 {
		t.Fatalf("an ABORTED conflict: %v %v after %d calls, want success on the second", o.Kind, err, calls.Load())
	}
}

// A SEC that shuts down while an undo waits to retry writes nothing for
// it; a new SEC recovers the saga, runs the undo again and finishes the
// unwind. While it retries, Get on the driving SEC shows the attempt and
// the error.
func TestUndoRetryResumesAfterShutdown(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var down atomic.Bool
	down.Store(true)
	var failures atomic.Int32
	f.app.setUndoFault("create_b", func(int) error {
		if down.Load() {
			failures.Add(1)
			return status.Error(codes.Unavailable, "volume-service down")
		}
		return nil
	})
	sec := saga.NewSEC(f.pool, "sec-1", f.reg, f.pool, testLogger(t))
	id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithHooks((&saga.Hooks{}).InjectError("finish")))
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return failures.Load() >= 2 })
	v, err := sec.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	b := nodeView(t, v, "create_b")
	if b.Status != "undo_started" || b.Attempts < 1 || b.RetryError == "" || b.RetryAt.IsZero() {
		t.Fatalf("create_b while retrying: %s, %d runs, retry error %q at %v", b.Status, b.Attempts, b.RetryError, b.RetryAt)
	}
	if v.State != "unwinding" {
		t.Fatalf("state %s while an undo retries", v.State)
	}
	if err := sec.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := sec.StuckCount(ctx); err != nil || n != 0 {
		t.Fatalf("stuck count after shutdown: %d %v", n, err)
	}
	if v, err = sec.Get(ctx, id); err != nil || v.State != "unwinding" || nodeView(t, v, "create_b").Status != "undo_started" {
		t.Fatalf("after shutdown: state %s, create_b %s (%v)", v.State, nodeView(t, v, "create_b").Status, err)
	}
	if r := f.runs(t, "k"); r["create_b/undo"] != 0 {
		t.Fatalf("runs %v", r)
	}

	// The fault clears; the next SEC (as after a restart or failover)
	// resumes the unwind from the log.
	down.Store(false)
	sec2 := f.sec(t, "sec-1")
	rep, err := sec2.Recover(ctx)
	if err != nil || len(rep.Recovered) != 1 {
		t.Fatalf("recover: %+v %v", rep, err)
	}
	o := wait(t, sec2, id)
	if o.Kind != saga.Failed || o.FailedNode != "finish" {
		t.Fatalf("outcome %v at %s (%v)", o.Kind, o.FailedNode, o.Error())
	}
	if got := f.effects(t, "k"); len(got) != 0 {
		t.Fatalf("effects left: %v", got)
	}
	if r := f.runs(t, "k"); r["create_b/undo"] != 1 || r["create_a/undo"] != 1 {
		t.Fatalf("runs %v", r)
	}
	undos := f.app.undos()
	if i, j := slices.Index(undos, "create_b"), slices.Index(undos, "create_a"); i < 0 || j < i {
		t.Fatalf("undo order %v", undos)
	}
}

// errors.Is through the outcome still finds the node's error.
func TestOutcomeWrapsRetriedError(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1", saga.WithActionRetry(saga.RetryPolicy{MaxAttempts: 2, Initial: 5 * time.Millisecond}))
	o, err := sec.Run(context.Background(), f.app.sample, sampleParams{Key: "k"}, saga.WithHooks((&saga.Hooks{}).InjectActionTransient("create_a", 9)))
	if err != nil {
		t.Fatal(err)
	}
	var ae *saga.ActionError
	if !errors.As(o.Error(), &ae) || ae.Attempts != 2 || status.Code(o.Error()) != codes.Unavailable {
		t.Fatalf("outcome error %v (%+v)", o.Error(), ae)
	}
}

// An action whose answers are lost (it lands, and its caller hears only
// UNAVAILABLE until the budget runs out) fails with its outcome unknown,
// and the unwind undoes it like a succeeded node: nothing of it remains.
func TestLostAnswerIsUndone(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1", saga.WithActionRetry(saga.RetryPolicy{MaxAttempts: 3, Initial: 5 * time.Millisecond}))
	o, err := sec.Run(context.Background(), f.app.sample, sampleParams{Key: "lost"}, saga.WithHooks((&saga.Hooks{}).InjectLostAnswer("create_b")))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Failed || o.FailedNode != "create_b" || !o.Err.Retryable {
		t.Fatalf("outcome %v at %s (%+v), want failed at create_b with a retryable error", o.Kind, o.FailedNode, o.Err)
	}
	if got := f.effects(t, "lost"); len(got) != 0 {
		t.Fatalf("effects left: %v", got)
	}
	if r := f.runs(t, "lost"); r["create_b/do"] != 2 || r["create_b/undo"] != 1 || r["create_a/undo"] != 1 {
		t.Fatalf("runs %v", r)
	}
}

// A commit point (an action with no action after it) is retried past the
// budget, like an undo: once it may have landed, unwinding past it would
// undo what it published.
func TestCommitPointRetriedPastBudget(t *testing.T) {
	f := newFixture(t)
	sec := f.sec(t, "sec-1", saga.WithActionRetry(saga.RetryPolicy{MaxAttempts: 2, Initial: 5 * time.Millisecond}))
	d, err := f.app.sample.BuildDAG(sampleParams{Key: "commit"})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.FinalActionNodes(); !slices.Equal(got, []string{"finish"}) {
		t.Fatalf("final action nodes %v, want [finish]", got)
	}
	o, err := sec.Run(context.Background(), f.app.sample, sampleParams{Key: "commit"},
		saga.WithHooks((&saga.Hooks{}).InjectActionTransient("finish", 4).InjectLostAnswer("finish")))
	if err != nil {
		t.Fatal(err)
	}
	if o.Kind != saga.Succeeded {
		t.Fatalf("four transient faults and two lost answers at the commit point, budget two runs: %v (%v)", o.Kind, o.Error())
	}
	if r := f.runs(t, "commit"); r["finish/do"] != 3 {
		t.Fatalf("runs %v: want finish run three times (two answers lost)", r)
	}
}
