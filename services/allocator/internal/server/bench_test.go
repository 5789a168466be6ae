package server

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/allocator/migrations"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgcluster"
)

// benchInventorySQL builds 32 sleds × 10 disks (one zpool and dataset
// each, room enough never to fill up) and 10,002 existing regions, three
// per volume on distinct datasets.
const benchInventorySQL = `
INSERT INTO sled (id) SELECT gen_random_uuid() FROM generate_series(1, 32);
INSERT INTO physical_disk (id, sled_id) SELECT gen_random_uuid(), s.id FROM sled s, generate_series(1, 10);
INSERT INTO zpool (id, physical_disk_id, sled_id) SELECT gen_random_uuid(), id, sled_id FROM physical_disk;
INSERT INTO crucible_dataset (id, zpool_id, ip, capacity)
	SELECT gen_random_uuid(), z.id, ('fd00::' || to_hex(row_number() OVER ()))::inet, 1::bigint << 50 FROM zpool z;
INSERT INTO region (id, dataset_id, allocated_for, block_size, blocks_per_extent, extent_count, read_only)
	SELECT gen_random_uuid(), d.id, v.vol, 512, 131072, 16, false
	FROM (SELECT gen_random_uuid() AS vol, g FROM generate_series(0, 3333) g) v,
	LATERAL (SELECT id FROM crucible_dataset ORDER BY md5(id::text || v.g) LIMIT 3) d;
UPDATE crucible_dataset d SET size_used = (SELECT coalesce(sum(reserved_bytes), 0) FROM region r WHERE r.dataset_id = d.id);
CREATE TABLE bench_insert (id bigserial PRIMARY KEY, v int NOT NULL);
`

// BenchmarkAllocateRegions measures AllocateRegions (3 regions on distinct
// sleds for a new volume, in process, no gRPC) on 32 sleds × 10 disks with
// 10k existing regions, on a private cluster with fsync ON, and beside it
// pgbench single-row INSERTs on the same cluster as the physical limit.
func BenchmarkAllocateRegions(b *testing.B) {
	ctx := context.Background()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Fsync: true})
	if err != nil {
		b.Fatalf("start cluster: %v", err)
	}
	b.Cleanup(func() { _ = c.Close() })
	if err := c.CreateDatabase(ctx, "bench", ""); err != nil {
		b.Fatal(err)
	}
	pool, err := db.Open(ctx, c.DSN("bench"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	if err := db.Migrate(ctx, pool, migrations.FS); err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, benchInventorySQL); err != nil {
		b.Fatalf("inventory: %v", err)
	}
	s := newSimServer(b, pool)
	req := func() *allocatorv1.AllocateRegionsRequest {
		r := allocReq(uuid.NewString(), 3, newIDs(3))
		r.Seed = ""
		return r
	}

	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.AllocateRegions(ctx, req()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
	})
	b.Run("parallel8", func(b *testing.B) {
		b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0)))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.AllocateRegions(ctx, req()); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
	})
	for _, clients := range []int{1, 8} {
		b.Run(fmt.Sprintf("pgbench_insert_%dclients", clients), func(b *testing.B) {
			tps, err := pgbenchInsert(b, c, clients)
			if err != nil {
				b.Skipf("pgbench: %v", err)
			}
			b.ReportMetric(tps, "tps")
		})
	}
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbenchInsert runs pgbench single-row INSERTs for 3 s and returns tps.
func pgbenchInsert(b *testing.B, c *pgcluster.Cluster, clients int) (float64, error) {
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		return 0, err
	}
	script := filepath.Join(b.TempDir(), "insert.sql")
	if err := os.WriteFile(script, []byte("INSERT INTO bench_insert (v) VALUES (1);\n"), 0o644); err != nil {
		return 0, err
	}
	if err := os.Chmod(filepath.Dir(script), 0o755); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, "pgbench"), "-n", "-T", "3",
		"-c", strconv.Itoa(clients), "-j", strconv.Itoa(clients), "-f", script,
		"-h", c.SocketDir(), "-p", strconv.Itoa(c.Port), "-U", "postgres", "bench").CombinedOutput()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no tps in output: %s", out)
	}
	return strconv.ParseFloat(string(m[1]), 64)
}
