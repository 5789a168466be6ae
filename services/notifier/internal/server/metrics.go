package server

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"storagecp.dev/notifier/internal/store"
)

// notifyMetrics counts what NotifyReplacement concluded for each attachment
// (or for a volume with none): a replacement step waits on these, so a run
// of "failed" explains a step that does not complete.
type notifyMetrics struct {
	outcomes metric.Int64Counter
}

func newNotifyMetrics() notifyMetrics {
	c, err := otel.Meter("storagecp/notifier").Int64Counter("storagecp.notifier.notifications",
		metric.WithDescription("replacement notifications by outcome (notified, no_upstairs, failed, volume_deleted, deduplicated) and the Upstairs' answer (result)"))
	if err != nil {
		c, _ = noop.Meter{}.Int64Counter("")
	}
	return notifyMetrics{outcomes: c}
}

// recorded counts rows once they are durable: the table and the counter
// agree.
func (m notifyMetrics) recorded(ctx context.Context, rows []store.Notification) {
	for _, n := range rows {
		m.outcomes.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", n.Outcome), attribute.String("result", n.Result)))
	}
}

// deduplicated counts a repeat answered from an earlier record, without
// calling the Upstairs.
func (m notifyMetrics) deduplicated(ctx context.Context) {
	m.outcomes.Add(ctx, 1, metric.WithAttributes(attribute.String("outcome", "deduplicated"), attribute.String("result", "")))
}
