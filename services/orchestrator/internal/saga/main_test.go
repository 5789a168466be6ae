package saga_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	// The crash tests re-execute this binary as the process that crashes;
	// it must not start its own PostgreSQL.
	if os.Getenv(helperEnv) != "" {
		os.Exit(crashHelperMain())
	}
	pgtest.Main(m, pgtest.Schema{Name: "orchestrator", Migrations: migrations.FS})
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// fixture is a database with an `effects` table the sample saga writes.
type fixture struct {
	pool *pgxpool.Pool
	reg  *saga.Registry
	app  *sampleApp
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	pool := pgtest.NewPool(t, "orchestrator")
	if err := createEffects(context.Background(), pool); err != nil {
		t.Fatal(err)
	}
	app := newSampleApp()
	return &fixture{pool: pool, reg: app.registry(t), app: app}
}

func createEffects(ctx context.Context, pool *pgxpool.Pool) error {
	_, err := pool.Exec(ctx, `CREATE TABLE IF NOT EXISTS effects (
		key text NOT NULL, item text NOT NULL, PRIMARY KEY (key, item));
		CREATE TABLE IF NOT EXISTS runs (
		key text NOT NULL, node text NOT NULL, kind text NOT NULL, n int NOT NULL DEFAULT 1,
		PRIMARY KEY (key, node, kind))`)
	return err
}

func (f *fixture) sec(t testing.TB, id string, opts ...saga.SECOption) *saga.SEC {
	t.Helper()
	sec := saga.NewSEC(f.pool, id, f.reg, f.pool, testLogger(t), opts...)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sec.Shutdown(ctx); err != nil {
			t.Errorf("shutdown %s: %v", id, err)
		}
	})
	return sec
}

func (f *fixture) effects(t testing.TB, key string) []string {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT item FROM effects WHERE key = $1 ORDER BY item`, key)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var items []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		items = append(items, s)
	}
	return items
}

// runs returns how many times each node's action ("do") or undo ran.
func (f *fixture) runs(t testing.TB, key string) map[string]int {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT node || '/' || kind, n FROM runs WHERE key = $1`, key)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	m := map[string]int{}
	for rows.Next() {
		var k string
		var n int
		if err := rows.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		m[k] = n
	}
	return m
}

func wait(t testing.TB, sec *saga.SEC, id uuid.UUID) saga.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o, err := sec.Wait(ctx, id)
	if err != nil {
		t.Fatalf("wait %s: %v", id, err)
	}
	return o
}

// gate blocks actions until opened (tests use it to hold a node in flight).
type gate struct {
	once sync.Once
	ch   chan struct{}
}

func newGate() *gate  { return &gate{ch: make(chan struct{})} }
func (g *gate) open() { g.once.Do(func() { close(g.ch) }) }
func (g *gate) wait(ctx context.Context) error {
	select {
	case <-g.ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var errBoom = errors.New("boom")
