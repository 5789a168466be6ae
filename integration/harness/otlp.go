package harness

import (
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"sync"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// OTLPReceiver is a minimal OTLP/gRPC trace collector running in the test,
// so tests can check what the processes exported.
type OTLPReceiver struct {
	coltracepb.UnimplementedTraceServiceServer
	// Addr is "127.0.0.1:port".
	Addr string

	mu    sync.Mutex
	spans []Span
}

// Span is an exported span as the receiver saw it.
type Span struct {
	Service, Name, TraceID, SpanID, ParentID string
	Server                                   bool
	Attributes                               map[string]string
}

// StartOTLPReceiver starts a receiver that stops at the end of the test.
func StartOTLPReceiver(t testing.TB) *OTLPReceiver {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &OTLPReceiver{Addr: lis.Addr().String()}
	s := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(s, r)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return r
}

// Env returns the environment that points every process at the receiver,
// exporting quickly.
func (r *OTLPReceiver) Env() []string {
	return []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + r.Addr,
		"OTEL_EXPORTER_OTLP_INSECURE=true",
		"OTEL_BSP_SCHEDULE_DELAY=100",
	}
}

// Export implements the OTLP trace service.
func (r *OTLPReceiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				attrs := map[string]string{}
				for _, kv := range sp.Attributes {
					attrs[kv.Key] = fmt.Sprint(kv.GetValue().GetStringValue())
				}
				r.spans = append(r.spans, Span{
					Service: service, Name: sp.Name, TraceID: hex.EncodeToString(sp.TraceId),
					SpanID: hex.EncodeToString(sp.SpanId), ParentID: hex.EncodeToString(sp.ParentSpanId),
					Server: sp.Kind.String() == "SPAN_KIND_SERVER", Attributes: attrs,
				})
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns every span received so far.
func (r *OTLPReceiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}
