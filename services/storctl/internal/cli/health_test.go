package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/storctl/creds"
)

func lag(n int64) *int64 { return &n }

// A healthy pg_auto_failover formation, as the orchestrator answers it.
func healthyFormation() *orchestratorv1.GetDatabaseFormationResponse {
	return &orchestratorv1.GetDatabaseFormationResponse{
		Orchestrator: "replacement-orchestrator-0",
		Connection: &orchestratorv1.DatabaseConnection{
			Host: "127.0.0.1", Port: 5001, Database: "orchestrator", Primary: true, WalLsn: "0/3000148",
			SynchronousStandbyNames: "ANY 1 (pgautofailover_standby_2)",
			Standbys: []*orchestratorv1.DatabaseStandby{{
				ApplicationName: "pgautofailover_standby_2", ClientAddr: "127.0.0.1", State: "streaming", SyncState: "quorum",
				ReplayLsn: "0/3000148", ReplayLagBytes: 0,
				WriteLag: durationpb.New(1500000), FlushLag: durationpb.New(1600000), ReplayLag: durationpb.New(1700000),
			}},
		},
		Monitor: &orchestratorv1.DatabaseMonitor{
			Uri: "postgres://autoctl_node@127.0.0.1:5000/pg_auto_failover", Formation: "default",
			Nodes: []*orchestratorv1.DatabaseNode{
				{Name: "node1", NodeId: 1, Host: "127.0.0.1", Port: 5001, ReportedState: "primary", AssignedState: "primary",
					Health: orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_HEALTHY, ReportedLsn: "0/3000000", LagBytes: lag(0), Primary: true},
				{Name: "node2", NodeId: 2, Host: "127.0.0.1", Port: 5002, ReportedState: "secondary", AssignedState: "secondary",
					Health: orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_HEALTHY, ReportedLsn: "0/3000000", LagBytes: lag(328)},
			},
		},
	}
}

func TestRenderFormation(t *testing.T) {
	var b bytes.Buffer
	if err := renderFormation(&b, healthyFormation()); err != nil {
		t.Fatal(err)
	}
	want := `  seen by:               replacement-orchestrator-0
  connected to:          127.0.0.1:5001, database orchestrator, primary, WAL 0/3000148
  synchronous standbys:  ANY 1 (pgautofailover_standby_2)
  monitor:               postgres://autoctl_node@127.0.0.1:5000/pg_auto_failover (formation default)

NODE    ADDRESS         ROLE     STATE      HEALTH   LSN        SYNC    LAG_BYTES  WRITE_LAG  FLUSH_LAG  REPLAY_LAG
node1*  127.0.0.1:5001  primary  primary    healthy  0/3000148  -       -          -          -          -
node2   127.0.0.1:5002  standby  secondary  healthy  0/3000148  quorum  0          1.5ms      1.6ms      1.7ms
* the node the orchestrator is connected to
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}

	// One PostgreSQL, no monitor: the connected node alone.
	b.Reset()
	if err := renderFormation(&b, &orchestratorv1.GetDatabaseFormationResponse{Connection: &orchestratorv1.DatabaseConnection{
		Port: 5432, Database: "orchestrator", Primary: true, WalLsn: "0/1DADF70",
	}}); err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		"  connected to:  (socket):5432, database orchestrator, primary, WAL 0/1DADF70\n",
		"  monitor:       none (the orchestrator has no --db-monitor)\n",
		"(connected)  (socket):5432  primary  -      -       0/1DADF70",
	} {
		if !strings.Contains(b.String(), line) {
			t.Errorf("no %q in\n%s", line, b.String())
		}
	}
}

func TestFormationProblems(t *testing.T) {
	if p := formationProblems(healthyFormation()); len(p) != 0 {
		t.Errorf("healthy formation: %q", p)
	}
	single := &orchestratorv1.GetDatabaseFormationResponse{Connection: &orchestratorv1.DatabaseConnection{Port: 5432, Primary: true}}
	if p := formationProblems(single); len(p) != 0 {
		t.Errorf("one PostgreSQL without replication: %q", p)
	}
	for name, c := range map[string]struct {
		change func(*orchestratorv1.GetDatabaseFormationResponse)
		want   string
	}{
		"failing over": {func(f *orchestratorv1.GetDatabaseFormationResponse) {
			f.Monitor.Nodes[1].ReportedState, f.Monitor.Nodes[1].AssignedState = "secondary", "prepare_promotion"
			f.Monitor.Nodes[0].Health = orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_UNHEALTHY
		}, "node node1 is unhealthy"},
		"no sync standby": {func(f *orchestratorv1.GetDatabaseFormationResponse) {
			f.Connection.Standbys = nil
		}, "no standby is streaming synchronously"},
		"monitor down": {func(f *orchestratorv1.GetDatabaseFormationResponse) {
			f.Monitor.Error, f.Monitor.Nodes = "query the monitor: connection refused", nil
		}, "monitor: query the monitor: connection refused"},
		"on a standby": {func(f *orchestratorv1.GetDatabaseFormationResponse) {
			f.Connection.Primary = false
		}, "which is not the primary"},
		"no pg_monitor": {func(f *orchestratorv1.GetDatabaseFormationResponse) {
			f.Connection.StandbysError = "needs pg_monitor"
		}, "standbys: needs pg_monitor"},
	} {
		f := healthyFormation()
		c.change(f)
		p := formationProblems(f)
		if !strings.Contains(strings.Join(p, "\n"), c.want) {
			t.Errorf("%s: problems %q, want one containing %q", name, p, c.want)
		}
	}
}

// fakeAdmin answers the two views health asks for.
type fakeAdmin struct {
	orchestratorv1.UnimplementedAdminServiceServer
	formation *orchestratorv1.GetDatabaseFormationResponse
}

func (f *fakeAdmin) GetLeadership(context.Context, *orchestratorv1.GetLeadershipRequest) (*orchestratorv1.GetLeadershipResponse, error) {
	return &orchestratorv1.GetLeadershipResponse{Holder: "replacement-orchestrator-0", Epoch: 7, IsLeader: true, Self: "replacement-orchestrator-0"}, nil
}

func (f *fakeAdmin) GetDatabaseFormation(context.Context, *orchestratorv1.GetDatabaseFormationRequest) (*orchestratorv1.GetDatabaseFormationResponse, error) {
	return f.formation, nil
}

// health asks each service over mutual TLS, each presenting its own
// identity; one that does not answer is a row, not the end of the output,
// and the exit code says which kind of trouble there is.
func TestHealthCommand(t *testing.T) {
	services := []string{mtls.VolumeService, mtls.RegionAllocator, mtls.UpstairsNotifier, mtls.ReplacementOrchestrator}
	ca, ids := testPKI(t, t.TempDir(), append([]string{creds.Operator}, services...)...)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	admin := &fakeAdmin{formation: healthyFormation()}
	addrs := map[string]string{}
	var notifierHealth *health.Server
	for _, svc := range services {
		tr, err := mtls.Load(mtls.DefaultTrustDomain, mtls.Files{CA: ca.BundlePath(), Cert: ids[svc].Cert, Key: ids[svc].Key}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer(tr.ServerOption())
		hs := health.NewServer()
		healthpb.RegisterHealthServer(srv, hs)
		if svc == mtls.ReplacementOrchestrator {
			orchestratorv1.RegisterAdminServiceServer(srv, admin)
		}
		if svc == mtls.UpstairsNotifier {
			notifierHealth = hs
		}
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
		addrs[svc] = lis.Addr().String()
	}
	env := withTLS(func(k string) string {
		switch k {
		case "STORAGECP_VOLUME_ADDR":
			return addrs[mtls.VolumeService]
		case "STORAGECP_ALLOCATOR_ADDR":
			return addrs[mtls.RegionAllocator]
		case "STORAGECP_NOTIFIER_ADDR":
			return addrs[mtls.UpstairsNotifier]
		case "STORAGECP_ORCHESTRATOR_ADDR":
			return addrs[mtls.ReplacementOrchestrator]
		}
		return ""
	}, ca, ids[creds.Operator])

	stdout, stderr, code := runCLI(t, env, "health")
	if code != ExitOK || stderr != "" {
		t.Fatalf("all serving: exit %d, stderr %q\n%s", code, stderr, stdout)
	}
	for _, want := range []string{"replacement-orchestrator  " + addrs[mtls.ReplacementOrchestrator] + "  SERVING", "  epoch:", "7\n", "node1*", "quorum"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("all serving: no %q in\n%s", want, stdout)
		}
	}
	t.Logf("storctl health:\n%s", stdout)

	// JSON: one object, the orchestrator's answers as their protojson.
	stdout, _, code = runCLI(t, env, "health", "-o", "json")
	var doc struct {
		Services  []serviceHealth `json:"services"`
		Formation struct {
			Connection struct {
				Primary bool `json:"primary"`
			} `json:"connection"`
		} `json:"databaseFormation"`
		Problems []string `json:"problems"`
	}
	if err := json.Unmarshal([]byte(stdout), &doc); err != nil || code != ExitOK || len(doc.Services) != 4 || !doc.Formation.Connection.Primary || doc.Problems == nil {
		t.Fatalf("json: exit %d, %v, %+v\n%s", code, err, doc, stdout)
	}

	// A degraded database: every service serves, exit 3.
	admin.formation = healthyFormation()
	admin.formation.Connection.Standbys = nil
	stdout, stderr, code = runCLI(t, env, "health")
	if code != ExitViolations || !strings.Contains(stdout, "Problems:\n  no standby is streaming synchronously") ||
		stderr != "storctl: database formation degraded: 1 problem(s)\n" {
		t.Fatalf("degraded: exit %d, stderr %q\n%s", code, stderr, stdout)
	}

	// A service not serving and one unreachable: both shown, exit 1.
	notifierHealth.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	stdout, stderr, code = runCLI(t, env, "health", "--volume", "127.0.0.1:1")
	if code != ExitError ||
		!strings.Contains(stdout, "volume-service            127.0.0.1:1") || !strings.Contains(stdout, "UNREACHABLE  volume-service at 127.0.0.1:1 is unreachable") ||
		!strings.Contains(stdout, "NOT_SERVING") || !strings.Contains(stdout, "node1*") ||
		stderr != "storctl: 2 of 4 services not serving: volume-service UNREACHABLE, upstairs-notifier NOT_SERVING\n" {
		t.Fatalf("down: exit %d, stderr %q\n%s", code, stderr, stdout)
	}
}
