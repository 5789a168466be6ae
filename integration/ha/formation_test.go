package ha

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/platform/pgformation"
	"storagecp.dev/testsupport/stack"
)

// The orchestrator reports the formation it runs on (GetDatabaseFormation)
// from its own connection and from pg_auto_failover's monitor, and storctl
// health shows it, as an operator and as a viewer. After the primary's
// postmaster is killed, both name the promoted node.
func TestDatabaseFormationView(t *testing.T) {
	// Mostly waiting for the monitor to fail the formation over: beside
	// another test.
	t.Parallel()
	st := harness.Start(t, stack.Config{HA: true})
	ctx := context.Background()
	f := st.Formation
	admin := orchestratorv1.NewAdminServiceClient(harness.Dial(t, st, st.Addr(stack.Orchestrator)))
	primary, err := f.Primary(ctx)
	if err != nil || primary == nil {
		t.Fatalf("primary: %v %v", primary, err)
	}
	resp := waitFormation(t, admin, f, primary)
	t.Logf("connection: %v", resp.Connection)
	for _, n := range resp.Monitor.Nodes {
		t.Logf("monitor: %v", n)
	}

	out := storctlHealth(t, st, stack.OperatorID, 0)
	t.Logf("storctl health:\n%s", out)
	for _, want := range []string{primary.Name + "*", "primary", "secondary", "SERVING", "synchronous standbys:"} {
		if !strings.Contains(out, want) {
			t.Errorf("storctl health lacks %q", want)
		}
	}
	// A viewer reads it too, as JSON.
	out = storctlHealth(t, st, "viewer/ha", 0, "-o", "json")
	var doc struct {
		Formation *struct {
			Monitor struct {
				Nodes []struct {
					Name    string `json:"name"`
					Primary bool   `json:"primary"`
				} `json:"nodes"`
			} `json:"monitor"`
		} `json:"databaseFormation"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil || doc.Formation == nil || len(doc.Formation.Monitor.Nodes) != 2 {
		t.Fatalf("viewer's storctl health -o json: %v\n%s", err, out)
	}

	// The leader exports the same view as gauges.
	harness.Eventually(t, 30*time.Second, "the replication gauges", func() error {
		samples, err := harness.Scrape(ctx, st.MetricsURL(stack.Orchestrator))
		if err != nil {
			return err
		}
		var lagSeries, quorum int
		for _, s := range samples {
			switch {
			case s.Name == "storagecp_db_replication_lag_bytes" && s.Labels["standby"] == resp.Connection.Standbys[0].ApplicationName:
				lagSeries++
			case s.Name == "storagecp_db_standbys" && (s.Labels["sync_state"] == "quorum" || s.Labels["sync_state"] == "sync"):
				quorum += int(s.Value)
			}
		}
		if lagSeries != 1 || quorum != 1 {
			return fmt.Errorf("%d lag series for %s, %d sync or quorum standbys", lagSeries, resp.Connection.Standbys[0].ApplicationName, quorum)
		}
		return nil
	})

	// Fail over: the view follows.
	if err := syscall.Kill(primary.Postmaster(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	now, err := f.WaitFailover(ctx, primary.Name, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s → %s", primary.Name, now.Name)
	if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitFormation(t, admin, f, now)
	harness.Eventually(t, 30*time.Second, "storctl health names the new primary", func() error {
		out, code := runStorctl(t, st, stack.OperatorID, "health")
		if code != 0 || !strings.Contains(out, now.Name+"*") {
			return fmt.Errorf("exit %d:\n%s", code, out)
		}
		t.Logf("storctl health after the failover:\n%s", out)
		return nil
	})
}

// On one PostgreSQL (no formation, no --db-monitor) the orchestrator
// reports the node it is connected to as the primary, with no standbys and
// no monitor, and storctl health calls that healthy.
func TestDatabaseFormationSingleCluster(t *testing.T) {
	st := harness.Start(t, stack.Config{})
	admin := orchestratorv1.NewAdminServiceClient(harness.Dial(t, st, st.Addr(stack.Orchestrator)))
	r, err := admin.GetDatabaseFormation(context.Background(), &orchestratorv1.GetDatabaseFormationRequest{})
	if err != nil {
		t.Fatal(err)
	}
	c := r.Connection
	if c.Error != "" || !c.Primary || int(c.Port) != st.Cluster.Port || c.Database != stack.DatabaseOf(stack.Orchestrator) ||
		len(c.Standbys) != 0 || c.StandbysError != "" || r.Monitor != nil || r.Orchestrator == "" {
		t.Fatalf("single cluster: %v", r)
	}
	out := storctlHealth(t, st, stack.OperatorID, 0)
	t.Logf("storctl health:\n%s", out)
	for _, want := range []string{"(connected)", "primary", "none (the orchestrator has no --db-monitor)"} {
		if !strings.Contains(out, want) {
			t.Errorf("storctl health lacks %q", want)
		}
	}
}

// waitFormation waits until the orchestrator reports a healthy formation
// with want as the primary: connected to it, one standby streaming
// synchronously (pg_auto_failover's "ANY 1 (…)" makes it "quorum"), and the
// monitor naming want primary and the other node secondary.
func waitFormation(t *testing.T, admin orchestratorv1.AdminServiceClient, f *pgformation.Formation, want *pgformation.Node) *orchestratorv1.GetDatabaseFormationResponse {
	t.Helper()
	var resp *orchestratorv1.GetDatabaseFormationResponse
	harness.Eventually(t, 60*time.Second, "the formation as the orchestrator sees it, primary "+want.Name, func() error {
		r, err := admin.GetDatabaseFormation(context.Background(), &orchestratorv1.GetDatabaseFormationRequest{})
		if err != nil {
			return err
		}
		c := r.Connection
		switch {
		case c.Error != "" || c.StandbysError != "":
			return fmt.Errorf("connection: %q, standbys: %q", c.Error, c.StandbysError)
		case !c.Primary || int(c.Port) != want.Port:
			return fmt.Errorf("connected to port %d (primary %v), want %s on %d", c.Port, c.Primary, want.Name, want.Port)
		case len(c.Standbys) != 1:
			return fmt.Errorf("%d standbys: %v", len(c.Standbys), c.Standbys)
		case c.Standbys[0].State != "streaming" || (c.Standbys[0].SyncState != "sync" && c.Standbys[0].SyncState != "quorum"):
			return fmt.Errorf("standby %v", c.Standbys[0])
		case r.Monitor == nil || r.Monitor.Error != "" || len(r.Monitor.Nodes) != len(f.Nodes):
			return fmt.Errorf("monitor %v", r.Monitor)
		}
		for _, n := range r.Monitor.Nodes {
			wantState := "secondary"
			if n.Name == want.Name {
				wantState = "primary"
			}
			if n.Primary != (n.Name == want.Name) || n.ReportedState != wantState || n.AssignedState != wantState {
				return fmt.Errorf("monitor node %v, want %s", n, wantState)
			}
		}
		resp = r
		return nil
	})
	return resp
}

// storctlHealth runs `storctl health` as identity and wants the exit code.
func storctlHealth(t *testing.T, st *stack.Stack, identity string, want int, args ...string) string {
	t.Helper()
	out, code := runStorctl(t, st, identity, append([]string{"health"}, args...)...)
	if code != want {
		t.Fatalf("storctl health %v as %s: exit %d, want %d\n%s", args, identity, code, want, out)
	}
	return out
}

// runStorctl runs the built storctl as identity (issued by the stack's CA)
// with the stack's addresses in its environment, and returns its stdout
// followed by its stderr, and its exit code.
func runStorctl(t *testing.T, st *stack.Stack, identity string, args ...string) (string, int) {
	t.Helper()
	id, err := st.Identity(identity)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(harness.BinDir(t), "storctl"), args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STORCTL_") && !strings.HasPrefix(kv, "STORAGECP_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"STORCTL_CA="+st.CA().BundlePath(), "STORCTL_CERT="+id.Cert, "STORCTL_KEY="+id.Key,
		"STORAGECP_VOLUME_ADDR="+st.Addr(stack.Volume),
		"STORAGECP_ALLOCATOR_ADDR="+st.Addr(stack.Allocator),
		"STORAGECP_NOTIFIER_ADDR="+st.Addr(stack.Notifier),
		"STORAGECP_ORCHESTRATOR_ADDR="+st.Addr(stack.Orchestrator),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		return stdout.String() + stderr.String(), exit.ExitCode()
	case err != nil:
		t.Fatalf("storctl %v: %v", args, err)
	}
	return stdout.String() + stderr.String(), 0
}
