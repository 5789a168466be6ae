package server

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
)

// probeMetrics counts the simulated data path's answers. Upstairs probe
// the targets their volumes name; a "destroyed" answer is a volume reading
// from a target that no longer exists, which a correct replacement never
// lets happen, so any increase of it is data loss worth an alert.
type probeMetrics struct {
	probes metric.Int64Counter
}

func newProbeMetrics() probeMetrics {
	c, err := otel.Meter("storagecp/allocator").Int64Counter("storagecp.allocator.probes",
		metric.WithDescription("data-path probes answered by ProbeTargets, by result: served, unreachable, destroyed (data loss)"))
	if err != nil {
		c, _ = noop.Meter{}.Int64Counter("")
	}
	// Every result at zero from the start, so an alert on destroyed > 0
	// has a series before the first loss.
	for _, r := range []string{"served", "unreachable", "destroyed"} {
		c.Add(context.Background(), 0, metric.WithAttributes(attribute.String("result", r)))
	}
	return probeMetrics{probes: c}
}

func (m probeMetrics) probed(ctx context.Context, result string) {
	m.probes.Add(ctx, 1, metric.WithAttributes(attribute.String("result", result)))
}
