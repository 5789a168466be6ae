package tasks

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"storagecp.dev/orchestrator/internal/store"
)

// countGaveUp counts a rw replacement the drive gave up on, by how it ends
// (storagecp_replacement_gave_up_total{end="data_lost"|"needs_operator"}):
// each one needs an operator's attention, so alert on any increase.
func countGaveUp(ctx context.Context, end store.RegionState) {
	c, err := otel.Meter("storagecp/replacement").Int64Counter("storagecp.replacement.gave_up",
		metric.WithDescription("rw replacements ended DataLost or NeedsOperator by their drive's bounds"))
	if err == nil {
		c.Add(ctx, 1, metric.WithAttributes(attribute.String("end", string(end))))
	}
}

// countStepBatch records the size of a ro-replacement-step-batch saga the
// step task started (storagecp_step_batch_steps, a histogram) and counts
// its steps (storagecp_step_batch_steps_started_total): how much of a
// fan-out took the batch path rather than one saga per volume.
func countStepBatch(ctx context.Context, n int) {
	m := otel.Meter("storagecp/replacement")
	if h, err := m.Int64Histogram("storagecp.step_batch.steps",
		metric.WithDescription("steps per ro-replacement-step-batch saga started")); err == nil {
		h.Record(ctx, int64(n))
	}
	if c, err := m.Int64Counter("storagecp.step_batch.steps_started",
		metric.WithDescription("steps started through ro-replacement-step-batch")); err == nil {
		c.Add(ctx, int64(n))
	}
}
