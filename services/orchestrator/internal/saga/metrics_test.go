package saga_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"storagecp.dev/orchestrator/internal/saga"
)

// TestMetrics: a saga that succeeds, one that unwinds and one that gets
// stuck are counted by name and outcome, and each node's action is timed.
func TestMetrics(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(mp)
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx := context.Background()
	for _, h := range []*saga.Hooks{nil, (&saga.Hooks{}).InjectError("finish"),
		(&saga.Hooks{}).InjectError("finish").InjectUndoError("create_b")} {
		var opts []saga.CreateOption
		if h != nil {
			opts = append(opts, saga.WithHooks(h))
		}
		if _, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k"}, opts...); err != nil {
			t.Fatal(err)
		}
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]map[attribute.Distinct]int64{}
	var nodes uint64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				sums[m.Name] = map[attribute.Distinct]int64{}
				for _, p := range d.DataPoints {
					sums[m.Name][p.Attributes.Equivalent()] = p.Value
				}
			case metricdata.Histogram[float64]:
				if m.Name == "storagecp.saga.node.duration" {
					for _, p := range d.DataPoints {
						if v, _ := p.Attributes.Value("node"); v.AsString() == "create_a" {
							nodes += p.Count
						}
					}
				}
			}
		}
	}
	count := func(metric string, kv ...attribute.KeyValue) int64 {
		set := attribute.NewSet(kv...)
		return sums[metric][set.Equivalent()]
	}
	name := attribute.String("saga", "sample")
	if n := count("storagecp.saga.started", name); n != 3 {
		t.Errorf("started %d, want 3 (have %v)", n, sums)
	}
	for _, outcome := range []string{"succeeded", "unwound", "stuck"} {
		if n := count("storagecp.saga.finished", name, attribute.String("outcome", outcome)); n != 1 {
			t.Errorf("finished %s: %d, want 1", outcome, n)
		}
	}
	// create_a ran in each saga, and was undone in the unwound one.
	if nodes < 4 {
		t.Errorf("create_a timed %d times, want at least 4 (3 actions, 1 undo)", nodes)
	}
}
