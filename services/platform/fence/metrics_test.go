package fence_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/pgtest"
)

// refusals reads storagecp.fence.refused from reader: the count per
// attribute set, keyed by the set's encoding (so a stray attribute shows).
func refusals(t *testing.T, reader *sdkmetric.ManualReader) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "storagecp.fence.refused" {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok || !sum.IsMonotonic {
				t.Fatalf("storagecp.fence.refused is %T, want a monotonic int64 sum (a counter)", m.Data)
			}
			for _, p := range sum.DataPoints {
				out[p.Attributes.Encoded(attribute.DefaultEncoder())] = p.Value
			}
		}
	}
	return out
}

func encoded(kv ...attribute.KeyValue) string {
	set := attribute.NewSet(kv...)
	return set.Encoded(attribute.DefaultEncoder())
}

// Every call a stale epoch is refused in counts once in
// storagecp.fence.refused, by method and nothing else (never the caller,
// the epochs or anything from the request); accepted writes and raises
// count nothing; a refused transaction outside any call counts under
// method "internal".
func TestRefusalsCounted(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	prev := otel.GetMeterProvider()
	otel.SetMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)))
	t.Cleanup(func() { otel.SetMeterProvider(prev) })

	pool := pgtest.NewPool(t, "fenced")
	var log logged
	p := tlsPeer(t, "spiffe://storagecp.local/replacement-orchestrator")
	for _, e := range []string{"3", "3"} { // a raise, then a write at the epoch
		if err := call(incoming(e, p), log.logger(), write(pool, nil)); err != nil {
			t.Fatal(err)
		}
	}
	if got := refusals(t, reader); len(got) != 0 {
		t.Fatalf("refusals after accepted writes: %v", got)
	}

	for range 2 {
		if err := call(incoming("2", p), log.logger(), write(pool, nil)); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("stale write: %v", err)
		}
	}
	want := encoded(attribute.String("method", method))
	got := refusals(t, reader)
	if len(got) != 1 || got[want] != 2 {
		t.Fatalf("refusals %v, want only {%s} = 2", got, want)
	}

	// A fenced transaction of the service's own (no call around it), as
	// the orchestrator's are.
	if _, err := write(pool, nil)(fence.NewContext(context.Background(), 1), nil); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale own write: %v", err)
	}
	internal := encoded(attribute.String("method", "internal"))
	if got := refusals(t, reader); got[internal] != 1 || got[want] != 2 {
		t.Fatalf("refusals %v, want {%s} = 1 beside {%s} = 2", got, internal, want)
	}
}
