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

	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

const benchNodes = 10

func noopTemplate() *saga.Template {
	t := saga.NewTemplate("noop")
	step := t.Action("step", func(context.Context, *saga.ActionContext) (any, error) { return struct{}{}, nil },
		func(context.Context, *saga.ActionContext) error { return nil })
	saga.SetBuild(t, func(b *saga.Builder, n int) error {
		for i := range n {
			b.Append(saga.ActionNode(fmt.Sprintf("n%d", i), step))
		}
		return nil
	})
	return t
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

// BenchmarkSagaThroughput runs sagas of benchNodes sequential no-op action
// nodes, one at a time and 16 at a time, and reports node events committed
// per second and database commits per action node (pg_stat_database).
func BenchmarkSagaThroughput(b *testing.B) {
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) {
			dsn := pgtest.NewDSN(b, "orchestrator")
			tmpl := noopTemplate()
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
			b.ReportMetric(float64(st.Events)/elapsed.Seconds(), "events/s")
			b.ReportMetric(nodes/elapsed.Seconds(), "nodes/s")
			b.ReportMetric(float64(commits)/nodes, "commits/node")
			b.ReportMetric(float64(st.Writes)/nodes, "writes/node")
		})
	}
}

// BenchmarkInsertBaseline is the yardstick of the saga bench: single-row
// autocommit INSERTs (as pgbench's insert script) from 1 and 16 clients on
// the same cluster.
func BenchmarkInsertBaseline(b *testing.B) {
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) {
			pool := pgtest.NewPool(b, "orchestrator")
			ctx := context.Background()
			if _, err := pool.Exec(ctx, `CREATE TABLE bench_insert (id bigserial PRIMARY KEY, a int, b int, at timestamptz DEFAULT now())`); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			insertConcurrently(b, pool, conc)
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "inserts/s")
		})
	}
}

func insertConcurrently(b *testing.B, pool *pgxpool.Pool, conc int) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := pool.Exec(context.Background(), `INSERT INTO bench_insert (a, b) VALUES ($1, $2)`, i, i); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	for i := range b.N {
		next <- i
	}
	close(next)
	wg.Wait()
}

// BenchmarkPgbenchInsert runs pgbench itself (single-row INSERT script, 1
// and 16 clients) on the same cluster when the binary is installed; the
// saga engine's events/s is compared with its tps.
func BenchmarkPgbenchInsert(b *testing.B) {
	bin := "/usr/lib/postgresql/15/bin/pgbench"
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("pgbench"); err != nil {
			b.Skip("pgbench not installed")
		}
	}
	for _, conc := range []int{1, 16} {
		b.Run(fmt.Sprintf("concurrent=%d", conc), func(b *testing.B) {
			dsn := pgtest.NewDSN(b, "orchestrator")
			pool, err := db.Open(context.Background(), dsn)
			if err != nil {
				b.Fatal(err)
			}
			_, err = pool.Exec(context.Background(), `CREATE TABLE bench_insert (id bigserial PRIMARY KEY, a int, b int, at timestamptz DEFAULT now())`)
			pool.Close()
			if err != nil {
				b.Fatal(err)
			}
			script := filepath.Join(b.TempDir(), "insert.sql")
			if err := os.WriteFile(script, []byte("INSERT INTO bench_insert (a, b) VALUES (1, 2);\n"), 0o644); err != nil {
				b.Fatal(err)
			}
			perClient := max(b.N/conc, 1)
			b.ResetTimer()
			out, err := exec.Command(bin, "-n", "-f", script, "-c", strconv.Itoa(conc), "-j", "2",
				"-t", strconv.Itoa(perClient), dsn).CombinedOutput()
			b.StopTimer()
			if err != nil {
				b.Fatalf("pgbench: %v\n%s", err, out)
			}
			m := regexp.MustCompile(`tps = ([0-9.]+)`).FindSubmatch(out)
			if m == nil {
				b.Fatalf("no tps in pgbench output:\n%s", out)
			}
			tps, _ := strconv.ParseFloat(string(m[1]), 64)
			b.ReportMetric(tps, "inserts/s")
		})
	}
}
