package stack

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// JaegerBinName is the Jaeger v2 all-in-one binary `make jaeger` builds
// into .run/bin (pinned in tools/jaeger/go.mod).
const JaegerBinName = "jaeger"

// Jaeger is the process name (and log file name) of the trace collector.
const Jaeger = "jaeger"

// DefaultJaegerBin is where `make jaeger` puts the binary: .run/bin/jaeger
// under the repository root.
func DefaultJaegerBin() (string, error) {
	root, err := FindRepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".run", "bin", JaegerBinName), nil
}

// jaegerConfig is Jaeger's own configuration: the built-in all-in-one
// config binds its query API to every interface and its ports are fixed, so
// two runs (or a test beside `make run`) would collide and the UI would be
// reachable from the network. This one binds everything to loopback on the
// ports given, keeps traces in memory and turns Jaeger's own metrics
// endpoint (a fixed :8888 otherwise) off.
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn

extensions:
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: %[2]s
    grpc:
      endpoint: %[3]s

  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[1]s

processors:
  batch:
    timeout: 100ms

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// startJaeger writes Jaeger's config into the log directory, starts it on
// free loopback ports and waits until both its OTLP receiver and its query
// API answer, so no span exported by a process started after it is lost.
func (s *Stack) startJaeger(ctx context.Context) error {
	bin := s.cfg.JaegerBin
	if bin == "" {
		var err error
		if bin, err = DefaultJaegerBin(); err != nil {
			return err
		}
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("jaeger binary: %w (build it with `make jaeger`)", err)
	}
	var picker portPicker
	var ports [3]int
	for i := range ports {
		p, err := picker.pick()
		if err != nil {
			picker.release()
			return err
		}
		ports[i] = p
	}
	picker.release()
	otlp := "127.0.0.1:" + strconv.Itoa(ports[0])
	query := "127.0.0.1:" + strconv.Itoa(ports[1])
	queryGRPC := "127.0.0.1:" + strconv.Itoa(ports[2])
	cfgPath := filepath.Join(s.LogDir, "jaeger.yaml")
	if err := os.WriteFile(cfgPath, []byte(fmt.Sprintf(jaegerConfig, otlp, query, queryGRPC)), 0o644); err != nil {
		return fmt.Errorf("jaeger config: %w", err)
	}
	p := &Proc{Name: Jaeger, Addr: otlp, bin: bin, args: []string{"--config", cfgPath},
		env: os.Environ(), logPath: filepath.Join(s.LogDir, Jaeger+".log")}
	if err := p.start(); err != nil {
		return err
	}
	s.jaeger = p
	s.jaegerURL = "http://" + query
	deadline := time.Now().Add(60 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		err := jaegerReady(ctx, client, otlp, s.jaegerURL)
		if err == nil {
			break
		}
		if exited, perr := p.Exited(); exited {
			return fmt.Errorf("jaeger exited: %v\n%s", perr, p.LogTail(20))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("jaeger not ready after 60s: %w\n%s", err, p.LogTail(20))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	// Every process exports there; a short batch delay makes spans show up
	// in the UI (and in the trace test) within a fraction of a second.
	s.jaegerOTLP = otlp
	s.tracingEnv = []string{
		"OTEL_EXPORTER_OTLP_ENDPOINT=http://" + otlp,
		"OTEL_EXPORTER_OTLP_INSECURE=true",
		"OTEL_BSP_SCHEDULE_DELAY=200",
	}
	return nil
}

func jaegerReady(ctx context.Context, client *http.Client, otlp, queryURL string) error {
	c, err := net.DialTimeout("tcp", otlp, time.Second)
	if err != nil {
		return fmt.Errorf("otlp receiver: %w", err)
	}
	c.Close()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, queryURL+"/api/services", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("query api: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("query api: %s", resp.Status)
	}
	return nil
}

// JaegerURL is the base URL of Jaeger's UI and query API (e.g.
// http://127.0.0.1:41234; the API is under /api), or "" without tracing.
func (s *Stack) JaegerURL() string { return s.jaegerURL }

// JaegerProc is the Jaeger process, or nil without tracing.
func (s *Stack) JaegerProc() *Proc { return s.jaeger }

// tracingEnvOf is a process's OTLP settings: Jaeger's receiver, reached in
// hosts mode through the process's own link to it.
func (s *Stack) tracingEnvOf(proc string) ([]string, error) {
	if s.net == nil || len(s.tracingEnv) == 0 {
		return s.tracingEnv, nil
	}
	l, err := s.net.link(proc, "jaeger", s.jaegerOTLP)
	if err != nil {
		return nil, err
	}
	env := append([]string(nil), s.tracingEnv...)
	env[0] = "OTEL_EXPORTER_OTLP_ENDPOINT=http://" + l.Listen
	return env, nil
}
