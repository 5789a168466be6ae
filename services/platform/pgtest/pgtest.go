// Package pgtest gives every test its own freshly migrated PostgreSQL
// database, quickly: one private cluster per test binary, one migrated
// template database per schema, and CREATE DATABASE … TEMPLATE per test.
//
// Use it from TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m, pgtest.Schema{Name: "volume", Migrations: migrations.FS}) }
//
// and in a test:
//
//	pool := pgtest.NewPool(t, "volume")
package pgtest

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgcluster"
)

// Schema is a named set of migrations.
type Schema struct {
	Name       string
	Migrations fs.FS
}

// harness is the state of one test binary. It lives in the Main call's
// stack and is reached through a package variable only because testing's
// TestMain offers no other way to hand it to tests.
type harness struct {
	cluster *pgcluster.Cluster
	schemas map[string]bool
	seq     atomic.Int64
	mu      sync.Mutex
}

var current *harness

// Main starts the cluster, prepares a template per schema, runs the tests
// and removes everything. It exits the process with the tests' code.
func Main(m *testing.M, schemas ...Schema) {
	os.Exit(run(m, schemas))
}

func run(m *testing.M, schemas []Schema) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	c, err := pgcluster.Start(ctx, pgcluster.Options{})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgtest: start PostgreSQL:", err)
		return 1
	}
	defer c.Close()
	h := &harness{cluster: c, schemas: map[string]bool{}}
	for _, s := range schemas {
		if err := h.prepare(s); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: template %s: %v\n", s.Name, err)
			return 1
		}
	}
	current = h
	return m.Run()
}

func templateName(schema string) string { return "tmpl_" + schema }

func (h *harness) prepare(s Schema) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	name := templateName(s.Name)
	if err := h.cluster.CreateDatabase(ctx, name, ""); err != nil {
		return err
	}
	pool, err := db.Open(ctx, h.cluster.DSN(name))
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool, s.Migrations); err != nil {
		return err
	}
	h.schemas[s.Name] = true
	return nil
}

// Cluster returns the test binary's cluster (for tests that stop it or
// need raw DSNs).
func Cluster(t testing.TB) *pgcluster.Cluster {
	t.Helper()
	if current == nil {
		t.Fatal("pgtest: call pgtest.Main from TestMain")
	}
	return current.cluster
}

// NewDSN creates a fresh database from the schema's template and returns
// its DSN. The database is dropped when the test ends.
func NewDSN(t testing.TB, schema string) string {
	t.Helper()
	h := current
	if h == nil {
		t.Fatal("pgtest: call pgtest.Main from TestMain")
	}
	if !h.schemas[schema] {
		t.Fatalf("pgtest: unknown schema %q", schema)
	}
	name := fmt.Sprintf("t_%s_%d", schema, h.seq.Add(1))
	ctx := context.Background()
	// CREATE DATABASE … TEMPLATE fails if another session is connected to
	// the template at that moment; serialise copies within the binary.
	h.mu.Lock()
	err := h.cluster.CreateDatabase(ctx, name, templateName(schema))
	h.mu.Unlock()
	if err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		if err := h.cluster.DropDatabase(context.Background(), name); err != nil {
			t.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	return h.cluster.DSN(name)
}

// NewPool creates a fresh database from the schema's template and a pool on
// it; both are gone when the test ends.
func NewPool(t testing.TB, schema string) *pgxpool.Pool {
	t.Helper()
	dsn := NewDSN(t, schema)
	pool, err := db.Open(context.Background(), dsn)
	if err != nil {
		t.Fatalf("pgtest: open: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool
}
