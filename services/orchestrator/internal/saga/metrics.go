package saga

import (
	"context"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// secMetrics are the engine's instruments, made once per SEC from the
// process's meter provider (a no-op one unless the binary serves metrics).
// Outcome names follow the operator's vocabulary: a failed saga has
// unwound; a stuck one needs an operator.
type secMetrics struct {
	started  metric.Int64Counter
	finished metric.Int64Counter
	node     metric.Float64Histogram
	// actionRetries and undoRetries count runs of a node's task retried
	// after a retryable error; stuck counts undos that failed with a
	// permanent one, by the reason Classify gave.
	actionRetries metric.Int64Counter
	undoRetries   metric.Int64Counter
	stuck         metric.Int64Counter
	running       metric.Registration
	// nodeAttrs caches the attribute set of each (saga, node, task,
	// result): building it for every node cost 4% of the orchestrator's
	// CPU in a fan-out.
	nodeAttrs sync.Map // nodeKey → metric.MeasurementOption
}

type nodeKey struct{ saga, node, task, result string }

func newSECMetrics(s *SEC) *secMetrics {
	m := otel.Meter("storagecp/saga")
	var nm noop.Meter
	out := &secMetrics{}
	var err error
	if out.started, err = m.Int64Counter("storagecp.saga.started",
		metric.WithDescription("sagas created (not counting recoveries), by saga name")); err != nil {
		out.started, _ = nm.Int64Counter("")
	}
	if out.finished, err = m.Int64Counter("storagecp.saga.finished",
		metric.WithDescription("sagas that ended here, by saga name and outcome: succeeded, unwound (failed and undone) or stuck (an undo failed)")); err != nil {
		out.finished, _ = nm.Int64Counter("")
	}
	if out.node, err = m.Float64Histogram("storagecp.saga.node.duration",
		metric.WithUnit("s"),
		metric.WithDescription("time one action or undo of a saga node took, by saga, node, task (action, undo, or shortcut: completed by the engine without running the action, 0 s) and result (ok/error)"),
		metric.WithExplicitBucketBoundaries(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)); err != nil {
		out.node, _ = nm.Float64Histogram("")
	}
	if out.actionRetries, err = m.Int64Counter("storagecp.saga.action.retries",
		metric.WithDescription("saga actions run again in place after a retryable error (UNAVAILABLE, a serialization failure, a broken connection…), by saga and node")); err != nil {
		out.actionRetries, _ = nm.Int64Counter("")
	}
	if out.undoRetries, err = m.Int64Counter("storagecp.saga.undo.retries",
		metric.WithDescription("saga undos run again in place after a retryable error, by saga and node: an undo is retried until it succeeds, so a steadily rising count is an unwind waiting on a fault that has not cleared")); err != nil {
		out.undoRetries, _ = nm.Int64Counter("")
	}
	if out.stuck, err = m.Int64Counter("storagecp.saga.stuck",
		metric.WithDescription("saga undos that failed with a permanent error, leaving their saga stuck for an operator, by saga, node and reason (the error's class, e.g. grpc:NotFound)")); err != nil {
		out.stuck, _ = nm.Int64Counter("")
	}
	if g, err := m.Int64ObservableGauge("storagecp.saga.running",
		metric.WithDescription("sagas this SEC is driving now")); err == nil {
		// Unregistered at Shutdown: a process may run several SECs over
		// its life (one per leadership term), and only the live one counts.
		out.running, _ = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
			s.mu.Lock()
			n := len(s.running)
			s.mu.Unlock()
			o.ObserveInt64(g, int64(n), metric.WithAttributes(attribute.String("sec", s.id)))
			return nil
		}, g)
	}
	return out
}

func (m *secMetrics) sagaStarted(ctx context.Context, name string) {
	m.started.Add(ctx, 1, metric.WithAttributes(attribute.String("saga", name)))
}

func (m *secMetrics) sagaFinished(ctx context.Context, name string, kind OutcomeKind) {
	outcome := "succeeded"
	switch kind {
	case Failed:
		outcome = "unwound"
	case Stuck:
		outcome = "stuck"
	}
	m.finished.Add(ctx, 1, metric.WithAttributes(attribute.String("saga", name), attribute.String("outcome", outcome)))
}

func (m *secMetrics) nodeDone(ctx context.Context, saga, node, task string, took time.Duration, failed bool) {
	result := "ok"
	if failed {
		result = "error"
	}
	k := nodeKey{saga, node, task, result}
	attrs, ok := m.nodeAttrs.Load(k)
	if !ok {
		attrs, _ = m.nodeAttrs.LoadOrStore(k, metric.WithAttributeSet(attribute.NewSet(
			attribute.String("saga", saga), attribute.String("node", node),
			attribute.String("task", task), attribute.String("result", result))))
	}
	m.node.Record(ctx, took.Seconds(), attrs.(metric.MeasurementOption))
}

func (m *secMetrics) retried(ctx context.Context, saga, node string, undo bool) {
	c := m.actionRetries
	if undo {
		c = m.undoRetries
	}
	c.Add(ctx, 1, metric.WithAttributes(attribute.String("saga", saga), attribute.String("node", node)))
}

func (m *secMetrics) stuckNode(ctx context.Context, saga, node, reason string) {
	m.stuck.Add(ctx, 1, metric.WithAttributes(attribute.String("saga", saga), attribute.String("node", node), attribute.String("reason", reason)))
}

func (m *secMetrics) close() {
	if m.running != nil {
		_ = m.running.Unregister()
	}
}
