package store

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/pgtest"
	"storagecp.dev/platform/vcr"
)

// bulkVolumes inserts n volumes in one statement (generate_series), every
// `every`-th of which names target (a registered read-only region) in its
// VCR, with usage and index rows; the others name unregistered filler
// addresses (the VCR scan must still decode them). Returns the target.
func bulkVolumes(ctx context.Context, tb testing.TB, pool *pgxpool.Pool, s *Store, n, every int) Target {
	tb.Helper()
	regs, err := s.RegisterTargets(ctx, []Registration{{Kind: KindRORegion, RegionID: uuid.New()}})
	if err != nil {
		tb.Fatal(err)
	}
	acts, err := s.ActivateTargets(ctx, []Activation{{TargetID: regs[0].ID, DatasetID: uuid.New(), Address: "[fd00:7::1]:19000"}})
	if err != nil {
		tb.Fatal(err)
	}
	target := acts[0]
	type stmt struct {
		sql  string
		args []any
	}
	stmts := []stmt{{
		`INSERT INTO volume (id, data)
		 SELECT gen_random_uuid(), jsonb_build_object('type', 'volume', 'id', gen_random_uuid(), 'block_size', 512,
		   'read_only_parent', null, 'sub_volumes', jsonb_build_array(jsonb_build_object(
		     'type', 'region', 'block_size', 512, 'blocks_per_extent', 64, 'extent_count', 8, 'gen', 1,
		     'opts', jsonb_build_object('id', gen_random_uuid(), 'lossy', false, 'flush_timeout', null, 'key', 'a2V5',
		       'cert_pem', null, 'key_pem', null, 'root_cert_pem', null, 'control', null, 'read_only', true,
		       'target', jsonb_build_array(CASE WHEN i % $2 = 0 THEN $1 ELSE format('[fd00:8::%s:%s]:19000', to_hex(i / 65536), to_hex(i % 65536)) END)))))
		 FROM generate_series(1, $3::int) AS i`, []any{target.Address, every, n}}, {
		`INSERT INTO volume_target (volume_id, target_id, read_only)
		 SELECT id, $2, true FROM volume WHERE data->'sub_volumes'->0->'opts'->'target'->>0 = $1`, []any{target.Address, target.ID}}, {
		`INSERT INTO volume_resource_usage (usage_id, volume_id, target_id)
		 SELECT gen_random_uuid(), volume_id, target_id FROM volume_target WHERE target_id = $1`, []any{target.ID}},
	}
	for _, q := range stmts {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			tb.Fatalf("bulk load: %v", err)
		}
	}
	if _, err := pool.Exec(ctx, `ANALYZE`); err != nil {
		tb.Fatal(err)
	}
	return target
}

// tableScans reads seq_scan and idx_scan of a table after forcing this
// session's pending statistics out (PostgreSQL 15 flushes them lazily).
func tableScans(ctx context.Context, tb testing.TB, pool *pgxpool.Pool, table string) (seq, idx int64) {
	tb.Helper()
	if _, err := pool.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
		tb.Fatal(err)
	}
	// The flush happens when the backend goes idle after that statement;
	// this is the next statement on the same (only) connection.
	if err := pool.QueryRow(ctx, `SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_user_tables WHERE relname = $1`, table).Scan(&seq, &idx); err != nil {
		tb.Fatal(err)
	}
	return seq, idx
}

func singleConnPool(tb testing.TB) *pgxpool.Pool {
	tb.Helper()
	cfg, err := pgxpool.ParseConfig(pgtest.NewDSN(tb, "volume"))
	if err != nil {
		tb.Fatal(err)
	}
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(pool.Close)
	return pool
}

// The index lookup is proven to be one: with 100k volumes loaded,
// FindVolumesReferencingTarget leaves seq_scan of the volume table
// unchanged, while a VCR scan (the control) moves it.
func TestFindVolumesReferencingTargetDoesNotScanVolumesAmong100k(t *testing.T) {
	ctx := context.Background()
	pool := singleConnPool(t) // one backend, so its statistics are the ones flushed
	s := New(pool)
	const n, every = 100_000, 1000
	target := bulkVolumes(ctx, t, pool, s, n, every)

	seq0, idx0 := tableScans(ctx, t, pool, "volume")
	var got []VolumeRef
	after := uuid.Nil
	for {
		page, next, err := s.FindVolumesReferencingTarget(ctx, target.ID, true, after, 40)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, page...)
		if next == uuid.Nil {
			break
		}
		after = next
	}
	if len(got) != n/every {
		t.Fatalf("found %d volumes, want %d", len(got), n/every)
	}
	seq1, idx1 := tableScans(ctx, t, pool, "volume")
	if seq1 != seq0 {
		t.Fatalf("seq_scan of volume went %d → %d: the lookup scanned the table", seq0, seq1)
	}
	if idx1 == idx0 {
		t.Fatalf("idx_scan of volume did not move (%d): statistics are not being observed", idx0)
	}
	// Control: a query that reads every VCR does move seq_scan.
	var all int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM volume WHERE data->>'type' = 'volume'`).Scan(&all); err != nil || all != n {
		t.Fatalf("control scan: %d %v", all, err)
	}
	if seq2, _ := tableScans(ctx, t, pool, "volume"); seq2 == seq1 {
		t.Fatal("control VCR scan did not move seq_scan: the measurement is blind")
	}
}

// scanForTarget is the reference's find_volumes_referencing_socket_addr: a
// full scan decoding every VCR (the benchmark's baseline).
func scanForTarget(ctx context.Context, pool *pgxpool.Pool, addr string) ([]uuid.UUID, error) {
	var out []uuid.UUID
	rows, err := pool.Query(ctx, `SELECT id, data FROM volume`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id uuid.UUID
		var data []byte
		if err := rows.Scan(&id, &data); err != nil {
			return nil, err
		}
		v, err := vcr.Decode(data)
		if err != nil {
			return nil, err
		}
		rw, err := vcr.RegionInVCR(v, addr)
		if err != nil {
			return nil, err
		}
		ro, err := vcr.ReadOnlyTargetInVCR(v, addr)
		if err != nil {
			return nil, err
		}
		if rw || ro {
			out = append(out, id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("scan: %w", err)
	}
	return out, nil
}
