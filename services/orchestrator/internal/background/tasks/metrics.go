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
