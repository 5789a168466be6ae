package tracing

import (
	"context"
	"fmt"
	"testing"
	"time"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// sum adds the values of the samples named name whose labels include want.
func sum(samples []harness.Sample, name string, want map[string]string) (float64, bool) {
	total, found := 0.0, false
outer:
	for _, s := range samples {
		if s.Name != name {
			continue
		}
		for k, v := range want {
			if s.Labels[k] != v {
				continue outer
			}
		}
		total += s.Value
		found = true
	}
	return total, found
}

// series is one expectation on a process's metrics.
type series struct {
	name   string
	labels map[string]string
	// positive: the sum must be > 0; otherwise it must exist and be 0.
	positive bool
}

// Each process serves Prometheus metrics, and after a replacement the key
// series are there: sagas by outcome and node latency, task passes,
// requests and steps by state, DataLost (zero), notifications, data-path
// probes (none destroyed), and every process's RPC durations.
func TestMetricsAfterReplacement(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{})
	runCanonical(t, r)
	ctx := context.Background()

	rpc := series{name: "rpc_server_call_duration_seconds_count", positive: true}
	want := map[string][]series{
		stack.Orchestrator: {
			{name: "storagecp_saga_started_total", labels: map[string]string{"saga": "ro-replacement-start"}, positive: true},
			{name: "storagecp_saga_finished_total", labels: map[string]string{"saga": "ro-replacement-step", "outcome": "succeeded"}, positive: true},
			{name: "storagecp_saga_finished_total", labels: map[string]string{"saga": "ro-replacement-finish", "outcome": "succeeded"}, positive: true},
			{name: "storagecp_saga_node_duration_seconds_count", labels: map[string]string{"saga": "ro-replacement-start", "task": "action"}, positive: true},
			{name: "storagecp_task_activations_total", labels: map[string]string{"task": "ro_replacement_detector", "trigger": "activation"}, positive: true},
			{name: "storagecp_task_activations_total", labels: map[string]string{"task": "ro_replacement_finish"}, positive: true},
			{name: "storagecp_task_duration_seconds_count", positive: true},
			{name: "storagecp_replacement_requests", labels: map[string]string{"kind": "read_only", "state": "complete"}, positive: true},
			{name: "storagecp_replacement_requests", labels: map[string]string{"kind": "read_only", "state": "data_lost"}},
			{name: "storagecp_replacement_steps", labels: map[string]string{"state": "volume_deleted"}, positive: true},
			{name: "storagecp_replacement_data_lost_total", labels: map[string]string{"kind": "region_snapshot"}},
			{name: "storagecp_saga_running"},
			rpc,
		},
		stack.Notifier: {
			{name: "storagecp_notifier_notifications_total", labels: map[string]string{"outcome": "notified"}, positive: true},
			rpc,
		},
		stack.Allocator: {
			{name: "storagecp_allocator_probes_total", labels: map[string]string{"result": "served"}, positive: true},
			{name: "storagecp_allocator_probes_total", labels: map[string]string{"result": "destroyed"}},
			rpc,
		},
		stack.Volume:             {rpc},
		stack.SimUpstairs + "-0": {rpc},
		// The allocator's agent calls cross the wire to sim-agent.
		stack.SimAgent: {rpc},
	}
	for proc, list := range want {
		url := r.Stack.MetricsURL(proc)
		if url == "" {
			t.Fatalf("%s has no metrics address", proc)
		}
		harness.Eventually(t, 20*time.Second, proc+" metrics", func() error {
			samples, err := harness.Scrape(ctx, url)
			if err != nil {
				return err
			}
			for _, s := range list {
				v, ok := sum(samples, s.name, s.labels)
				switch {
				case !ok:
					return fmt.Errorf("no series %s%v at %s", s.name, s.labels, url)
				case s.positive && v <= 0:
					return fmt.Errorf("%s%v = %v, want > 0", s.name, s.labels, v)
				case !s.positive && s.name != "storagecp_saga_running" && v != 0:
					return fmt.Errorf("%s%v = %v, want 0", s.name, s.labels, v)
				}
			}
			return nil
		})
		t.Logf("%s: %s has every key series", proc, url)
	}
}
