package saga_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagabench"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgcluster"
	"storagecp.dev/platform/pgtest"
)

// benchNodes is the length of the benchmark saga (sequential no-op actions).
const benchNodes = 10

// BenchmarkSagaThroughput runs sagas of benchNodes sequential no-op action
// nodes, one at a time and 16 at a time, on the test cluster (fsync off).
// It reports node events committed per second, database commits per action
// node (pg_stat_database.xact_commit delta) and, when pgbench is installed,
// pgbench's single-row INSERT rate with as many clients on the same cluster
// and the ratio events/s ÷ inserts/s.
func BenchmarkSagaThroughput(b *testing.B) {
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) {
			benchSagaAndPgbench(b, pgtest.NewDSN(b, "orchestrator"), pgtest.NewDSN(b, "orchestrator"), conc)
		})
	}
}

// BenchmarkSagaThroughputFsync is BenchmarkSagaThroughput on a private
// cluster with fsync on, as make bench measures (docs/testing.md,
// "Benchmarks"). Skipped with -short.
func BenchmarkSagaThroughputFsync(b *testing.B) {
	if testing.Short() {
		b.Skip("starts its own PostgreSQL cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, pgcluster.Options{Fsync: true})
	if err != nil {
		b.Skip("cannot start a PostgreSQL cluster:", err)
	}
	defer c.Close()
	seq := 0
	newDB := func() string {
		seq++
		name := fmt.Sprintf("bench_%d", seq)
		if err := c.CreateDatabase(ctx, name, ""); err != nil {
			b.Fatal(err)
		}
		dsn := c.DSN(name)
		pool, err := db.Open(ctx, dsn)
		if err != nil {
			b.Fatal(err)
		}
		defer pool.Close()
		if err := db.Migrate(ctx, pool, migrations.FS); err != nil {
			b.Fatal(err)
		}
		return dsn
	}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) {
			benchSagaAndPgbench(b, newDB(), newDB(), conc)
		})
	}
}

func benchSagaAndPgbench(b *testing.B, sagaDSN, pgbenchDSN string, conc int) {
	eventsPerSec := benchSagas(b, sagaDSN, conc)
	tps, ok := pgbenchInserts(b, pgbenchDSN, conc, b.N*benchNodes*2)
	if ok {
		b.ReportMetric(tps, "pgbench_inserts/s")
		b.ReportMetric(eventsPerSec/tps, "ratio")
	}
}

// benchSagas runs b.N sagas, conc at a time, and returns events/s.
func benchSagas(b *testing.B, dsn string, conc int) float64 {
	b.Helper()
	tmpl := sagabench.NoopTemplate("noop")
	reg, err := saga.NewRegistry(tmpl)
	if err != nil {
		b.Fatal(err)
	}
	before, measuring := xactCommits(b, dsn)
	pool, err := db.Open(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	sec := saga.NewSEC(pool, "bench", reg, nil, nil)
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan struct{})
	errs := make(chan error, conc)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				o, err := sec.Run(ctx, tmpl, benchNodes)
				if err == nil && o.Kind != saga.Succeeded {
					err = o.Error()
				}
				if err != nil {
					errs <- err
					for range next {
					}
					return
				}
			}
		}()
	}
	for range b.N {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	st := sec.Stats()
	_ = sec.Shutdown(ctx)
	pool.Close()
	after, _ := xactCommits(b, dsn)
	commits := after - before - measuring
	nodes := float64(b.N * benchNodes)
	eventsPerSec := float64(st.Events) / elapsed.Seconds()
	b.ReportMetric(eventsPerSec, "events/s")
	b.ReportMetric(nodes/elapsed.Seconds(), "nodes/s")
	b.ReportMetric(float64(commits)/nodes, "commits/node")
	b.ReportMetric(float64(st.Writes)/nodes, "writes/node")
	return eventsPerSec
}

// xactCommits reads the database's commit counter once every other
// session has gone (backends flush their statistics when they exit). It
// also returns how many transactions it ran itself, which the next reading
// counts.
func xactCommits(b *testing.B, dsn string) (commits, own int64) {
	b.Helper()
	ctx := context.Background()
	pool, err := db.Open(ctx, dsn)
	if err != nil {
		b.Fatal(err)
	}
	defer pool.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		own++
		var others int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&others); err != nil {
			b.Fatal(err)
		}
		if others == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	own++
	if err := pool.QueryRow(ctx, `SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()`).Scan(&commits); err != nil {
		b.Fatal(err)
	}
	return commits, own
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+)`)

// pgbenchInserts runs pgbench's single-row INSERT script with conc clients
// for about total transactions and returns its tps; ok is false when
// pgbench is not installed.
func pgbenchInserts(b *testing.B, dsn string, conc, total int) (tps float64, ok bool) {
	b.Helper()
	bin := "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("pgbench"); err != nil {
			return 0, false
		}
	}
	pool, err := db.Open(context.Background(), dsn)
	if err != nil {
		b.Fatal(err)
	}
	_, err = pool.Exec(context.Background(), `CREATE TABLE IF NOT EXISTS bench_insert (id bigserial PRIMARY KEY, a int, b int, at timestamptz DEFAULT now())`)
	pool.Close()
	if err != nil {
		b.Fatal(err)
	}
	script := filepath.Join(b.TempDir(), "insert.sql")
	if err := os.WriteFile(script, []byte("INSERT INTO bench_insert (a, b) VALUES (1, 2);\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	perClient := max(total/conc, 200)
	out, err := exec.Command(bin, "-n", "-f", script, "-c", strconv.Itoa(conc), "-j", "2",
		"-t", strconv.Itoa(perClient), dsn).CombinedOutput()
	if err != nil {
		b.Fatalf("pgbench: %v\n%s", err, out)
	}
	m := tpsRE.FindSubmatch(out)
	if m == nil {
		b.Fatalf("no tps in pgbench output:\n%s", out)
	}
	tps, _ = strconv.ParseFloat(string(m[1]), 64)
	return tps, true
}
