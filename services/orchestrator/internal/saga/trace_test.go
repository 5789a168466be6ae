package saga_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"storagecp.dev/orchestrator/internal/saga"
)

// TestTracing: one span per saga under the persisted traceparent, one child
// span per node with the saga id and node name, links kept.
func TestTracing(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	f := newFixture(t)
	sec := f.sec(t, "sec-1")
	ctx, parent := tp.Tracer("test").Start(context.Background(), "request")
	_, linked := tp.Tracer("test").Start(context.Background(), "other")
	o, err := sec.Run(ctx, f.app.sample, sampleParams{Key: "k"}, saga.WithLinks(trace.Link{SpanContext: linked.SpanContext()}))
	if err != nil || o.Kind != saga.Succeeded {
		t.Fatalf("%v %v", o.Error(), err)
	}
	parent.End()
	v, err := sec.Get(ctx, o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	if v.TraceParent == "" {
		t.Fatal("traceparent not persisted")
	}
	var sagaSpan sdktrace.ReadOnlySpan
	nodes := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		switch {
		case s.Name() == "saga sample":
			sagaSpan = s
		case s.Parent().IsValid() && s.SpanContext().TraceID() == parent.SpanContext().TraceID() && s.Name() != "request":
			nodes[s.Name()] = s
		}
	}
	if sagaSpan == nil {
		t.Fatal("no saga span")
	}
	if sagaSpan.Parent().SpanID() != parent.SpanContext().SpanID() || sagaSpan.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Fatal("saga span is not a child of the creating request")
	}
	if len(sagaSpan.Links()) != 1 || sagaSpan.Links()[0].SpanContext.SpanID() != linked.SpanContext().SpanID() {
		t.Fatalf("links %v", sagaSpan.Links())
	}
	for _, n := range []string{"create_a", "create_b", "create_c", "finish"} {
		s, ok := nodes[n]
		if !ok {
			t.Fatalf("no span for node %s (have %v)", n, nodes)
		}
		if s.Parent().SpanID() != sagaSpan.SpanContext().SpanID() {
			t.Errorf("node %s span parent is not the saga span", n)
		}
		attrs := map[string]string{}
		for _, a := range s.Attributes() {
			attrs[string(a.Key)] = a.Value.Emit()
		}
		if attrs["saga.id"] != o.SagaID.String() || attrs["saga.node"] != n {
			t.Errorf("node %s attributes %v", n, attrs)
		}
	}
}
