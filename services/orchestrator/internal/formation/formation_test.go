package formation

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgformation"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "orchestrator", Migrations: migrations.FS})
}

// One PostgreSQL, no monitor: the connected node is the primary, with no
// standbys, and there is no monitor section. pgcluster's DSN is a Unix
// socket, so there is no host, and the port is the server's setting.
func TestSingleCluster(t *testing.T) {
	r, err := New(pgtest.NewPool(t, "orchestrator"), "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	v := r.Read(context.Background())
	c := v.Connection
	if c.Error != "" || !c.Primary || c.WalLsn == "" || int(c.Port) != pgtest.Cluster(t).Port || !strings.HasPrefix(c.Database, "t_orchestrator_") {
		t.Fatalf("connection %v", c)
	}
	if len(c.Standbys) != 0 || c.StandbysError != "" {
		t.Fatalf("standbys %v (%q)", c.Standbys, c.StandbysError)
	}
	if v.Monitor != nil || r.HasMonitor() {
		t.Fatalf("monitor %v without --db-monitor", v.Monitor)
	}
}

// A monitor that does not answer is said in the monitor's error, quickly,
// and the connection's view is still there.
func TestMonitorUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// Accepts and never answers: the worst kind, bounded by the timeouts.
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	for _, uri := range []string{
		"postgres://autoctl_node:secret@127.0.0.1:1/pg_auto_failover?sslmode=disable",
		fmt.Sprintf("postgres://autoctl_node:secret@%s/pg_auto_failover?sslmode=disable", l.Addr()),
	} {
		r, err := New(pgtest.NewPool(t, "orchestrator"), uri)
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		v := r.Read(context.Background())
		took := time.Since(start)
		r.Close()
		if v.Connection.Error != "" || !v.Connection.Primary {
			t.Errorf("%s: connection %v", uri, v.Connection)
		}
		m := v.Monitor
		if m == nil || m.Error == "" || len(m.Nodes) != 0 || m.Formation != Name {
			t.Fatalf("%s: monitor %v", uri, m)
		}
		if strings.Contains(m.Uri, "secret") || !strings.Contains(m.Uri, "autoctl_node") {
			t.Errorf("monitor uri %q: want it without its password", m.Uri)
		}
		if took > readTimeout+time.Second {
			t.Errorf("%s: took %s", uri, took)
		}
		t.Logf("%s: %s (%s)", uri, m.Error, took.Round(time.Millisecond))
	}
}

func TestBadMonitorURI(t *testing.T) {
	_, err := New(nil, "postgres://x@h:notaport/db")
	if err == nil || !strings.Contains(err.Error(), "--db-monitor") {
		t.Fatalf("err %v: want one naming --db-monitor", err)
	}
}

// On a pg_auto_failover formation: the connection reaches the primary,
// which streams to one synchronous standby; the monitor lists both nodes,
// one primary; a role without pg_monitor is told what it lacks.
func TestFormation(t *testing.T) {
	if !pgformation.Installed() {
		t.Fatal(pgformation.ErrNotInstalled) // make unit installs it (make ha-deps)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	f, err := pgformation.Start(ctx, pgformation.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	pool, err := db.Open(ctx, f.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	r, err := New(pool, f.MonitorURI())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	primary, err := f.Primary(ctx)
	if err != nil || primary == nil {
		t.Fatalf("primary %v, %v", primary, err)
	}
	// The standby's row appears once it streams, and a keeper's report may
	// trail the monitor's assignment: poll briefly.
	var v *orchestratorv1.GetDatabaseFormationResponse
	deadline := time.Now().Add(30 * time.Second)
	for {
		v = r.Read(ctx)
		if problem := checkHealthy(v, primary.Port); problem == "" {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%s\n%v", problem, v)
		}
		time.Sleep(250 * time.Millisecond)
	}
	sb := v.Connection.Standbys[0]
	if !strings.HasPrefix(sb.ApplicationName, "pgautofailover_standby_") || sb.ReplayLsn == "" || sb.ReplayLagBytes < 0 {
		t.Errorf("standby %v", sb)
	}
	t.Logf("connection: %v", v.Connection)
	for _, n := range v.Monitor.Nodes {
		t.Logf("monitor: %v", n)
	}

	// A role that may log in but is not in pg_monitor sees the standby's
	// row with its details hidden.
	if _, err := pool.Exec(ctx, "CREATE ROLE formation_viewer LOGIN"); err != nil {
		t.Fatal(err)
	}
	weak, err := db.Open(ctx, strings.Replace(f.DSN("postgres"), "postgres://postgres@", "postgres://formation_viewer@", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer weak.Close()
	wr, _ := New(weak, "")
	c := wr.ReadConnection(ctx)
	if c.Error != "" && strings.Contains(c.Error, "formation_viewer") {
		// pg_auto_failover's pg_hba does not let a new role in: nothing to
		// check here.
		t.Logf("formation_viewer cannot connect: %s", c.Error)
		return
	}
	if c.Error != "" || len(c.Standbys) != 1 || !strings.Contains(c.StandbysError, "pg_monitor") {
		t.Fatalf("without pg_monitor: %v", c)
	}
	t.Logf("without pg_monitor: %s", c.StandbysError)
}

// checkHealthy says what is not yet as a healthy two-node formation shows
// it ("" when all is).
func checkHealthy(v *orchestratorv1.GetDatabaseFormationResponse, primaryPort int) string {
	c := v.Connection
	switch {
	case c.Error != "":
		return "connection: " + c.Error
	case !c.Primary || int(c.Port) != primaryPort:
		return fmt.Sprintf("connected to %s:%d (primary %v), want the primary on port %d", c.Host, c.Port, c.Primary, primaryPort)
	case c.StandbysError != "":
		return "standbys: " + c.StandbysError
	case len(c.Standbys) != 1:
		return fmt.Sprintf("%d standbys, want 1", len(c.Standbys))
	case c.Standbys[0].State != "streaming" || (c.Standbys[0].SyncState != "sync" && c.Standbys[0].SyncState != "quorum"):
		return fmt.Sprintf("standby %s %s, want streaming and sync or quorum", c.Standbys[0].State, c.Standbys[0].SyncState)
	case v.Monitor == nil || v.Monitor.Error != "":
		return fmt.Sprintf("monitor %v", v.Monitor)
	case len(v.Monitor.Nodes) != 2:
		return fmt.Sprintf("monitor lists %d nodes, want 2", len(v.Monitor.Nodes))
	}
	roles := map[string]int{}
	for _, n := range v.Monitor.Nodes {
		if n.Health != orchestratorv1.DatabaseNodeHealth_DATABASE_NODE_HEALTH_HEALTHY || n.LagBytes == nil {
			return fmt.Sprintf("node %v", n)
		}
		if n.Primary {
			roles["primary"]++
			if int(n.Port) != primaryPort || *n.LagBytes != 0 {
				return fmt.Sprintf("primary node %v, want port %d and no lag", n, primaryPort)
			}
		} else if n.ReportedState == "secondary" && n.AssignedState == "secondary" {
			roles["secondary"]++
		}
	}
	if roles["primary"] != 1 || roles["secondary"] != 1 {
		return fmt.Sprintf("monitor roles %v, want one primary and one secondary", roles)
	}
	return ""
}
