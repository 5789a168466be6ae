package hosts

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"

	"storagecp.dev/integration/harness"
	"storagecp.dev/testsupport/stack"
)

// logLines calls fn with every JSON line of a process's log.
func logLines(t *testing.T, st *stack.Stack, proc string, fn func(map[string]any)) {
	t.Helper()
	f, err := os.Open(st.Proc(proc).LogPath())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil {
			fn(line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
}

// retriedNodes lists the saga nodes ("saga/node") whose action an
// orchestrator retried after a retryable error.
func retriedNodes(t *testing.T, st *stack.Stack, proc string) []string {
	t.Helper()
	seen := map[string]bool{}
	logLines(t, st, proc, func(l map[string]any) {
		if l["msg"] == "saga action failed with a retryable error; retrying" {
			saga, _ := l["saga"].(string)
			node, _ := l["node"].(string)
			seen[saga+"/"+node] = true
		}
	})
	var out []string
	for k := range seen {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// calls counts, per gRPC method ("package.Service/Method") and status
// code, the calls a process answered as a server (server) or the
// attempts it made as a client (!server), from its metrics.
func calls(t *testing.T, st *stack.Stack, proc string, server bool) map[string]map[string]float64 {
	t.Helper()
	samples, err := harness.ScrapeProc(context.Background(), st, proc)
	if err != nil {
		t.Fatal(err)
	}
	name := "rpc_client_call_duration_seconds_count"
	if server {
		name = "rpc_server_call_duration_seconds_count"
	}
	out := map[string]map[string]float64{}
	for _, s := range samples {
		if s.Name != name {
			continue
		}
		m := s.Labels["rpc_method"]
		if out[m] == nil {
			out[m] = map[string]float64{}
		}
		out[m][s.Labels["rpc_response_status_code"]] += s.Value
	}
	return out
}

// readOnly tells a method that changes nothing by its name.
func readOnly(method string) bool {
	name := method[strings.LastIndex(method, "/")+1:]
	for _, p := range []string{"Get", "List", "Find", "Resolve", "Probe", "Watch", "Check", "Preview"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
