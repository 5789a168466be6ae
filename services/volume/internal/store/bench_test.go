package store

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p * float64(len(s)-1))
	return s[i]
}

func reportLatency(b *testing.B, ds []time.Duration) time.Duration {
	p50 := percentile(ds, 0.50)
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(ds, 0.99).Microseconds()), "p99-µs")
	b.ReportMetric(0, "ns/op") // latency percentiles are the figures here
	return p50
}

// BenchmarkFindVolumesReferencingTarget: 100k volumes, 100 of them naming
// the target. "index" answers from volume_target; "vcr-scan" computes the
// same answer the reference's way, decoding every VCR. vcr-scan reports
// its p50 as a multiple of the index's (x-index).
func BenchmarkFindVolumesReferencingTarget(b *testing.B) {
	ctx := context.Background()
	pool := pgtest.NewPool(b, "volume")
	s := New(pool)
	target := bulkVolumes(ctx, b, pool, s, 100_000, 1000)
	var indexP50 time.Duration
	b.Run("index", func(b *testing.B) {
		ds := make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			refs, _, err := s.FindVolumesReferencingTarget(ctx, target.ID, true, uuid.Nil, 1000)
			ds = append(ds, time.Since(t0))
			if err != nil || len(refs) != 100 {
				b.Fatalf("%d refs, %v", len(refs), err)
			}
		}
		indexP50 = reportLatency(b, ds)
	})
	b.Run("vcr-scan", func(b *testing.B) {
		ds := make([]time.Duration, 0, b.N)
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			ids, err := scanForTarget(ctx, pool, target.Address)
			ds = append(ds, time.Since(t0))
			if err != nil || len(ids) != 100 {
				b.Fatalf("%d ids, %v", len(ids), err)
			}
		}
		p50 := reportLatency(b, ds)
		if indexP50 > 0 {
			b.ReportMetric(float64(p50)/float64(indexP50), "x-index")
		}
	})
}

// BenchmarkCreateSoftDeletePair: CreateVolume of a clone-like volume naming
// three shared snapshot targets, then its SoftDeleteVolume — serially and
// from 8 goroutines — beside pgbench single-row INSERTs (1 and 8 clients)
// on the same PostgreSQL in the same run. Each reports pairs/s (or tps) and
// the pair rate as a fraction of pgbench's (x-pgbench).
//
// The pgtest cluster runs with fsync off; `make bench` repeats this on its
// own fsync-on cluster.
func BenchmarkCreateSoftDeletePair(b *testing.B) {
	ctx := context.Background()
	f := newFixture(b)
	_, rw := f.newDisk(nil)
	_, snaps := f.newSnapshot(rw)
	pair := func() error {
		id := uuid.New()
		if _, _, err := f.s.CreateVolume(ctx, CreateParams{ID: id, VCR: volumeNode(snapshotVCR(snaps))}); err != nil {
			return err
		}
		_, err := f.s.SoftDeleteVolume(ctx, id)
		return err
	}
	rates := map[string]float64{}
	b.Run("serial", func(b *testing.B) {
		t0 := time.Now()
		for i := 0; i < b.N; i++ {
			if err := pair(); err != nil {
				b.Fatal(err)
			}
		}
		rates["serial"] = float64(b.N) / time.Since(t0).Seconds()
		b.ReportMetric(rates["serial"], "pairs/s")
	})
	b.Run("parallel-8", func(b *testing.B) {
		var failed atomic.Value
		b.SetParallelism(8 / max(1, runtimeProcs()))
		t0 := time.Now()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := pair(); err != nil {
					failed.Store(err)
				}
			}
		})
		if err, _ := failed.Load().(error); err != nil {
			b.Fatal(err)
		}
		rates["parallel"] = float64(b.N) / time.Since(t0).Seconds()
		b.ReportMetric(rates["parallel"], "pairs/s")
	})
	for _, c := range []struct {
		name    string
		clients int
		rate    string
	}{{"pgbench-insert-1", 1, "serial"}, {"pgbench-insert-8", 8, "parallel"}} {
		b.Run(c.name, func(b *testing.B) {
			tps := pgbenchInsert(b, f, c.clients)
			b.ReportMetric(tps, "tps")
			b.ReportMetric(0, "ns/op")
			if r := rates[c.rate]; r > 0 {
				b.ReportMetric(r/tps, "x-pgbench")
			}
		})
	}
}

func runtimeProcs() int {
	n, _ := strconv.Atoi(os.Getenv("GOMAXPROCS"))
	if n > 0 {
		return n
	}
	return 2
}

var tpsLine = regexp.MustCompile(`tps = ([0-9.]+)`)

// pgbenchInsert runs pgbench's single-row INSERT for 3 s against the
// fixture's database.
func pgbenchInsert(b *testing.B, f *fixture, clients int) float64 {
	bin := "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(bin); err != nil {
		b.Skip("pgbench not installed")
	}
	f.exec(`CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, v int)`)
	script := filepath.Join(b.TempDir(), "insert.sql")
	if err := os.WriteFile(script, []byte("INSERT INTO bench_insert (v) VALUES (1);\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	cfg := f.pool.Config().ConnConfig
	cmd := exec.Command(bin, "-n", "-T", "3", "-c", strconv.Itoa(clients), "-j", strconv.Itoa(clients), "-f", script,
		"-h", cfg.Host, "-p", strconv.Itoa(int(cfg.Port)), "-U", cfg.User, cfg.Database)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("pgbench: %v\n%s", err, out)
	}
	m := tpsLine.FindSubmatch(out)
	if m == nil {
		b.Fatalf("pgbench output without tps:\n%s", out)
	}
	tps, _ := strconv.ParseFloat(string(m[1]), 64)
	return tps
}

// BenchmarkReplaceFanOut is the volume-service's half of a region snapshot
// replacement fanning out over many clones: one snapshot target swapped
// for a new read-only region in every clone, 16 at a time, each with its
// own stash. It reports swaps per second and the transactions rolled back
// (serialization failures retried) per swap.
func BenchmarkReplaceFanOut(b *testing.B) {
	const workers = 16
	clones := 1000
	if n, _ := strconv.Atoi(os.Getenv("STORAGECP_BENCH_CLONES")); n > 0 {
		clones = n
	}
	f := newFixture(b)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	ids := make([]uuid.UUID, clones)
	stashes := make([]uuid.UUID, clones)
	for i := range ids {
		ids[i], stashes[i] = uuid.New(), uuid.New()
		f.create(ids[i], volumeNode(snapshotVCR(snaps)))
		f.create(stashes[i], volumeNode(nil))
	}
	f.exec(`ANALYZE`)
	newRegion := f.roRegion(snapID)
	var retries atomic.Int64
	ctx := db.WithRetryCounter(f.ctx, &retries)
	b.ResetTimer()
	for range b.N {
		retries.Store(0)
		t0 := time.Now()
		ch := make(chan int)
		var wg sync.WaitGroup
		var failed atomic.Value
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range ch {
					if _, err := f.s.ReplaceReadOnlyTarget(ctx, ids[i], snaps[0].ID, newRegion.ID, stashes[i]); err != nil {
						failed.Store(err)
					}
				}
			}()
		}
		for i := range clones {
			ch <- i
		}
		close(ch)
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			b.Fatal(err)
		}
		took := time.Since(t0)
		if os.Getenv("STORAGECP_BENCH_EXPLAIN") == "1" {
			tx, _ := f.pool.Begin(f.ctx)
			rows, _ := tx.Query(f.ctx, `EXPLAIN (ANALYZE, BUFFERS) UPDATE volume_resource_usage SET volume_id = $2 WHERE volume_id = $1 AND target_id = $3`, stashes[0], ids[0], snaps[0].ID)
			for rows.Next() {
				var l string
				_ = rows.Scan(&l)
				b.Log(l)
			}
			rows.Close()
			_ = tx.Rollback(f.ctx)
		}
		b.ReportMetric(float64(clones)/took.Seconds(), "swaps/s")
		b.ReportMetric(float64(retries.Load())/float64(clones), "retries/swap")
		b.StopTimer()
		// Swap back for the next round.
		for i := range clones {
			if _, err := f.s.ReplaceReadOnlyTarget(f.ctx, ids[i], newRegion.ID, snaps[0].ID, stashes[i]); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
}
