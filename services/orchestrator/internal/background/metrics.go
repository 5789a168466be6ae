package background

import (
	"context"
	"encoding/json"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// driverMetrics are the driver's instruments: how often each task runs,
// why (its period or an activation by whatever advanced its records), and
// how its passes end. A task whose passes keep ending "error" is the first
// thing to look at when a replacement does not move.
type driverMetrics struct {
	activations metric.Int64Counter
	duration    metric.Float64Histogram
}

func newDriverMetrics() driverMetrics {
	m := otel.Meter("storagecp/tasks")
	var nm noop.Meter
	var out driverMetrics
	var err error
	if out.activations, err = m.Int64Counter("storagecp.task.activations",
		metric.WithDescription("background task passes, by task, trigger (period, retry, activation or operator) and outcome (ok, or error when the pass reported errors)")); err != nil {
		out.activations, _ = nm.Int64Counter("")
	}
	if out.duration, err = m.Float64Histogram("storagecp.task.duration",
		metric.WithUnit("s"),
		metric.WithDescription("time one background task pass took, by task"),
		metric.WithExplicitBucketBoundaries(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30)); err != nil {
		out.duration, _ = nm.Float64Histogram("")
	}
	return out
}

// outcomeOf reads the outcome from a pass's status: every task's status
// lists what went wrong under "errors" (the tasks' convention); anything else
// is a clean pass.
func outcomeOf(status json.RawMessage) string {
	var s struct {
		Errors []string `json:"errors"`
	}
	if json.Unmarshal(status, &s) == nil && len(s.Errors) > 0 {
		return outcomeError
	}
	return "ok"
}

const outcomeError = "error"

func (m driverMetrics) passDone(ctx context.Context, task, trigger, outcome string, took time.Duration) {
	m.activations.Add(ctx, 1, metric.WithAttributes(attribute.String("task", task),
		attribute.String("trigger", trigger), attribute.String("outcome", outcome)))
	m.duration.Record(ctx, took.Seconds(), metric.WithAttributes(attribute.String("task", task)))
}
