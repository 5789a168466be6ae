package server

import (
	"context"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/migrations"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

func sledCount(t testing.TB, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM sled`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// A serial is required and sane; a bad one is refused naming the field,
// and nothing is added.
func TestAddSledValidatesSerial(t *testing.T) {
	ctx := context.Background()
	s, pool := newServer(t)
	for _, serial := range []string{"", "has space", "-leading-dash", ".hidden", "sled/1", "sled\n1", "séd", "sled;rm", strings.Repeat("x", 65)} {
		_, err := s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: serial})
		if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "serial: ") {
			t.Errorf("AddSled(serial %q): %v, want INVALID_ARGUMENT naming serial", serial, err)
		}
	}
	_, err := s.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: "nope", Serial: "ok"})
	wantCode(t, err, codes.InvalidArgument)
	if n := sledCount(t, pool); n != 0 {
		t.Fatalf("refused AddSled calls added %d sleds", n)
	}
	for _, serial := range []string{"BRM42220004", "sled-0", "a", "g0.rev_B-1", strings.Repeat("x", 64)} {
		ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: serial}))(t)
	}
}

// AddSled is idempotent on the serial: a repeat, with or without the id the
// first call got, returns the same sled and adds no row; an id or serial
// already taken by another sled is ALREADY_EXISTS naming the field.
func TestAddSledIdempotentBySerial(t *testing.T) {
	ctx := context.Background()
	s, pool := newServer(t)
	a := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: "sled-a"}))(t).GetSled()
	again := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: "sled-a"}))(t).GetSled()
	withID := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: a.GetSledId(), Serial: "sled-a"}))(t).GetSled()
	if again.GetSledId() != a.GetSledId() || withID.GetSledId() != a.GetSledId() || again.GetSerial() != "sled-a" {
		t.Fatalf("AddSled not idempotent on the serial: %v %v %v", a, again, withID)
	}
	if n := sledCount(t, pool); n != 1 {
		t.Fatalf("%d sleds, want 1", n)
	}
	// The serial under another id.
	_, err := s.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: uuid.NewString(), Serial: "sled-a"})
	if status.Code(err) != codes.AlreadyExists || !strings.HasPrefix(status.Convert(err).Message(), "serial: ") {
		t.Fatalf("serial taken by another id: %v", err)
	}
	// The id under another serial.
	_, err = s.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: a.GetSledId(), Serial: "sled-b"})
	if status.Code(err) != codes.AlreadyExists || !strings.HasPrefix(status.Convert(err).Message(), "sled_id: ") {
		t.Fatalf("id taken by another serial: %v", err)
	}
	if n := sledCount(t, pool); n != 1 {
		t.Fatalf("refused AddSled calls added rows: %d sleds", n)
	}
	// Concurrent first calls agree on one sled.
	var wg sync.WaitGroup
	ids := make([]string, 8)
	errs := make([]error, len(ids))
	for i := range ids {
		wg.Go(func() {
			resp, err := s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: "sled-race"})
			ids[i], errs[i] = resp.GetSled().GetSledId(), err
		})
	}
	wg.Wait()
	for i := range ids {
		if errs[i] != nil || ids[i] != ids[0] {
			t.Fatalf("concurrent AddSled %d: %s, %v; first got %s", i, ids[i], errs[i], ids[0])
		}
	}
	if n := sledCount(t, pool); n != 2 {
		t.Fatalf("%d sleds after the race, want 2", n)
	}
}

// migrationsBefore is the allocator's migrations numbered below n.
func migrationsBefore(t testing.TB, n int) fs.FS {
	t.Helper()
	out := fstest.MapFS{}
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		num, err := strconv.Atoi(f[:strings.IndexByte(f, '_')])
		if err != nil {
			t.Fatalf("migration %s: %v", f, err)
		}
		if num >= n {
			continue
		}
		b, err := fs.ReadFile(migrations.FS, f)
		if err != nil {
			t.Fatal(err)
		}
		out[f] = &fstest.MapFile{Data: b}
	}
	return out
}

// Migration 005 builds the serial index on a database that AddSled filled
// before serials were unique: of each repeated serial the oldest sled keeps
// it, the others are renamed after their ids, empty serials stay, and
// AddSled then finds the oldest sled by its serial.
func TestSerialMigrationKeepsOldestSled(t *testing.T) {
	ctx := context.Background()
	cluster := pgtest.Cluster(t)
	name := fmt.Sprintf("t_legacy_serial_%d", uuid.New().ID())
	if err := cluster.CreateDatabase(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.DropDatabase(context.Background(), name) })
	pool, err := db.Open(ctx, cluster.DSN(name))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := db.Migrate(ctx, pool, migrationsBefore(t, 5)); err != nil {
		t.Fatal(err)
	}
	oldest, dup, dup2, other := uuid.New(), uuid.New(), uuid.New(), uuid.New()
	if _, err := pool.Exec(ctx, `INSERT INTO sled (id, serial, time_created) VALUES
		($1, 'sled-0', now() - interval '3 hours'),
		($2, 'sled-0', now() - interval '2 hours'),
		($3, 'sled-0', now() - interval '1 hour'),
		($4, 'sled-1', now()),
		(gen_random_uuid(), '', now()),
		(gen_random_uuid(), '', now())`, oldest, dup, dup2, other); err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, pool, migrations.FS); err != nil {
		t.Fatal(err)
	}
	serials := map[uuid.UUID]string{}
	rows, err := pool.Query(ctx, `SELECT id, serial FROM sled`)
	if err != nil {
		t.Fatal(err)
	}
	empty := 0
	for rows.Next() {
		var id uuid.UUID
		var serial string
		if err := rows.Scan(&id, &serial); err != nil {
			t.Fatal(err)
		}
		serials[id] = serial
		if serial == "" {
			empty++
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if serials[oldest] != "sled-0" || serials[dup] != "sled-0#"+dup.String() || serials[dup2] != "sled-0#"+dup2.String() ||
		serials[other] != "sled-1" || empty != 2 || len(serials) != 6 {
		t.Fatalf("serials after the migration: %v", serials)
	}
	s := newSimServer(t, pool)
	got := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: "sled-0"}))(t).GetSled()
	if got.GetSledId() != oldest.String() || sledCount(t, pool) != 6 {
		t.Fatalf("AddSled(sled-0) after the migration: %v, %d sleds", got, sledCount(t, pool))
	}
}
