// Command sagalog-bench measures the saga log's own capacity: the real saga
// engine (group-committed log writer included) running sagas of no-op
// action nodes, as many at a time as a background task keeps in flight,
// against a database given by -dsn. make bench runs it on the fan-out's
// PostgreSQL, right before pgbench, so the two rates come from the same
// server in the same run (docs/testing.md, "Benchmarks"). It prints one JSON
// object.
//
// The actions do nothing, so what is measured is what the log costs: every
// node's started and succeeded events written durably (fsync as the cluster
// is configured) before the saga moves on.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagabench"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/db"
)

// result is the JSON printed on stdout.
type result struct {
	Concurrency int     `json:"concurrency"`
	Nodes       int     `json:"nodes_per_saga"`
	Seconds     float64 `json:"seconds"`
	Sagas       int64   `json:"sagas"`
	// Events are saga_node_event rows committed (started, succeeded, …):
	// each is one durable record, as each pgbench transaction is one row.
	Events          int64   `json:"events"`
	EventsPerSecond float64 `json:"events_per_second"`
	// SagaCommits are the sagas' durable log writes: a creation, or one
	// saga's share of a group commit (the node events one step of one
	// saga makes durable together). An engine without group commit would
	// make each its own transaction.
	SagaCommits          int64   `json:"saga_commits"`
	SagaCommitsPerSecond float64 `json:"saga_commits_per_second"`
	// Transactions are the statements (each one commit) that carried
	// them: creations, and group commits of several sagas each.
	Transactions          int64   `json:"transactions"`
	TransactionsPerSecond float64 `json:"transactions_per_second"`
}

func main() {
	dsn := flag.String("dsn", "", "PostgreSQL connection string of an empty database (migrated here)")
	dur := flag.Duration("duration", 10*time.Second, "how long to run sagas")
	conc := flag.Int("concurrency", 64, "sagas in flight")
	nodes := flag.Int("nodes", 10, "sequential no-op action nodes per saga")
	flag.Parse()
	if *dsn == "" || *conc < 1 || *nodes < 1 || *dur <= 0 {
		fmt.Fprintln(os.Stderr, "sagalog-bench: -dsn is required; -concurrency, -nodes and -duration must be positive")
		os.Exit(2)
	}
	res, err := run(context.Background(), *dsn, *dur, *conc, *nodes)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sagalog-bench:", err)
		os.Exit(1)
	}
	_ = json.NewEncoder(os.Stdout).Encode(res)
}

func run(ctx context.Context, dsn string, dur time.Duration, conc, nodes int) (result, error) {
	res := result{Concurrency: conc, Nodes: nodes}
	pool, err := db.Open(ctx, dsn)
	if err != nil {
		return res, err
	}
	defer pool.Close()
	if err := db.Migrate(ctx, pool, migrations.FS); err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	tmpl := sagabench.NoopTemplate("sagalog_bench_noop")
	reg, err := saga.NewRegistry(tmpl)
	if err != nil {
		return res, err
	}
	var events0 int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM saga_node_event`).Scan(&events0); err != nil {
		return res, err
	}
	sec := saga.NewSEC(pool, "sagalog-bench", reg, nil, nil)
	var sagas atomic.Int64
	var firstErr error
	var once sync.Once
	deadline := time.Now().Add(dur)
	start := time.Now()
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				o, err := sec.Run(ctx, tmpl, nodes)
				if err == nil && o.Kind != saga.Succeeded {
					err = o.Error()
				}
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				sagas.Add(1)
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	st := sec.Stats()
	_ = sec.Shutdown(ctx)
	if firstErr != nil {
		return res, firstErr
	}
	var events1 int64
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM saga_node_event`).Scan(&events1); err != nil {
		return res, err
	}
	res.Seconds = elapsed.Seconds()
	res.Sagas = sagas.Load()
	res.Events = events1 - events0
	res.EventsPerSecond = float64(res.Events) / res.Seconds
	res.SagaCommits = st.Appends
	res.SagaCommitsPerSecond = float64(res.SagaCommits) / res.Seconds
	res.Transactions = st.Writes
	res.TransactionsPerSecond = float64(res.Transactions) / res.Seconds
	return res, nil
}
