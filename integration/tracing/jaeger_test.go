package tracing

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"testing"
	"time"

	"storagecp.dev/testsupport/stack"
)

// jaegerBin returns the Jaeger binary `make jaeger` builds. Outside make a
// missing binary skips the test with the command that builds it; under make
// (STORAGECP_REQUIRE_JAEGER=1, set by `make integration`, which builds it
// first) it is a failure, so CI can never pass without the trace checks.
func jaegerBin(t *testing.T) string {
	t.Helper()
	bin, err := stack.DefaultJaegerBin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("STORAGECP_REQUIRE_JAEGER") == "1" {
			t.Fatalf("Jaeger binary missing at %s (make integration builds it first): %v", bin, err)
		}
		t.Skipf("Jaeger binary missing at %s: build it with `make jaeger` (about 4-6 minutes, once)", bin)
	}
	return bin
}

// jaegerTrace is a trace as Jaeger's HTTP query API returns it.
type jaegerTrace struct {
	TraceID   string                   `json:"traceID"`
	Spans     []jaegerSpan             `json:"spans"`
	Processes map[string]jaegerProcess `json:"processes"`
}

type jaegerSpan struct {
	TraceID       string      `json:"traceID"`
	SpanID        string      `json:"spanID"`
	OperationName string      `json:"operationName"`
	References    []jaegerRef `json:"references"`
	Tags          []jaegerKV  `json:"tags"`
	ProcessID     string      `json:"processID"`
}

type jaegerRef struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

type jaegerKV struct {
	Key   string `json:"key"`
	Value any    `json:"value"`
}

type jaegerProcess struct {
	ServiceName string `json:"serviceName"`
}

// tag returns a span's tag as a string ("" if absent).
func (s jaegerSpan) tag(key string) string {
	for _, kv := range s.Tags {
		if kv.Key == key {
			return fmt.Sprint(kv.Value)
		}
	}
	return ""
}

// parent is the span's CHILD_OF parent in the same trace ("" for a root).
func (s jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" && r.TraceID == s.TraceID {
			return r.SpanID
		}
	}
	return ""
}

// jaegerGet fetches path from the query API and returns the raw body.
func jaegerGet(ctx context.Context, base, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %s", path, resp.Status, body)
	}
	return body, nil
}

// getTrace fetches one trace by id.
func getTrace(ctx context.Context, base, traceID string) (*jaegerTrace, error) {
	body, err := jaegerGet(ctx, base, "/api/traces/"+traceID)
	if err != nil {
		return nil, err
	}
	var out struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("decode trace: %w", err)
	}
	if len(out.Data) != 1 {
		return nil, fmt.Errorf("trace %s: %d traces in the answer", traceID, len(out.Data))
	}
	return &out.Data[0], nil
}

// searchTraces lists the recent traces with a span of service (raw JSON).
func searchTraces(ctx context.Context, base, service, operation string, limit int) ([]byte, error) {
	q := url.Values{"service": {service}, "limit": {fmt.Sprint(limit)}, "lookback": {"1h"}}
	if operation != "" {
		q.Set("operation", operation)
	}
	return jaegerGet(ctx, base, "/api/traces?"+q.Encode())
}

// services lists the services Jaeger has spans of.
func services(ctx context.Context, base string) ([]string, error) {
	body, err := jaegerGet(ctx, base, "/api/services")
	if err != nil {
		return nil, err
	}
	var out struct {
		Data []string `json:"data"`
	}
	if err := json.Unmarshal(body, &out); err != nil {
		return nil, fmt.Errorf("decode services: %w", err)
	}
	return out.Data, nil
}
