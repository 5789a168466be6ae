// Package bench measures replacement fan-out over real processes (make
// bench): one snapshot referenced by N clones, one disk expunged, time to
// Complete, beside pgbench on the same PostgreSQL in the same run.
package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/platform/pgcluster"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

type result struct {
	Clones int `json:"clones"`
	// Transport is "mtls" (the default) or "plaintext" (--insecure).
	Transport string `json:"transport"`
	// AttachedPercent of the clones run on sim-upstairs during the
	// fan-out (their steps are notified; the others nobody runs).
	AttachedPercent int `json:"attached_percent"`
	// StepBatch is the orchestrator's --step-batch (0: one saga per step).
	StepBatch         int     `json:"step_batch"`
	SecondsToComplete float64 `json:"seconds_to_complete"`
	StepsPerSecond    float64 `json:"steps_per_second"`
	CommitsPerVolume  float64 `json:"commits_per_replaced_volume"`
	// Write transactions (those that took a transaction id, i.e. wrote
	// WAL and waited for its flush) and WAL flushes, per replaced volume:
	// commits above also count read-only transactions, which cost no fsync.
	WriteTxPerVolume     float64 `json:"write_transactions_per_replaced_volume"`
	WALSyncsPerVolume    float64 `json:"wal_syncs_per_replaced_volume"`
	SerializationRetries int64   `json:"serialization_failures"`
	// CPUMsPerVolume is the machine's busy CPU time (every process: the
	// services, PostgreSQL, the kernel) during the fan-out per replaced
	// volume, and CPUBusy the share of all cores that was: a steadier
	// measure of work per volume than the time when the run is bound by
	// CPU.
	CPUMsPerVolume float64 `json:"cpu_ms_per_replaced_volume"`
	CPUBusy        float64 `json:"cpu_busy"`
	PgbenchTPS     float64 `json:"pgbench_single_row_insert_tps"`
	// StepsRatio is steps per second over pgbench's transactions per
	// second, measured in the same run: the fan-out's rate in units of
	// what the server's commits allow.
	StepsRatio float64 `json:"steps_ratio_to_pgbench"`
	// CommitsPerSecond are all the services' commits during the fan-out;
	// RatioToPgbench divides them by pgbench's rate. The fan-out is
	// bound by CPU, not by commits, so this says how much of the
	// server's commit capacity the whole system used.
	CommitsPerSecond float64 `json:"commits_per_second"`
	RatioToPgbench   float64 `json:"commit_rate_ratio_to_pgbench"`
	// SagaLog is the saga log's own capacity on the same server, measured
	// right before pgbench (cmd/sagalog-bench: the real engine running
	// no-op sagas, as many in flight as a task keeps). SagaLogRatio is its
	// saga commits per second (one saga's durable log write each) over
	// pgbench's single-row insert transactions per second. SagaLog is the
	// command's whole output, kept as it printed it.
	SagaLog      json.RawMessage `json:"saga_log,omitempty"`
	SagaLogRatio float64         `json:"saga_log_commit_ratio_to_pgbench"`
	sagaLog      sagaLogRates
}

// sagaLogRates are the figures of cmd/sagalog-bench's output the table
// shows.
type sagaLogRates struct {
	SagaCommitsPerSecond  float64 `json:"saga_commits_per_second"`
	TransactionsPerSecond float64 `json:"transactions_per_second"`
	EventsPerSecond       float64 `json:"events_per_second"`
}

// TestFanOut runs only under make bench (STORAGECP_BENCH=1), with fsync on.
func TestFanOut(t *testing.T) {
	if os.Getenv("STORAGECP_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	var results []result
	for _, n := range cloneSizes() {
		for _, m := range transportModes() {
			for _, pct := range attachedMixes() {
				t.Run(fmt.Sprintf("%d/%s/attached-%d", n, m.name, pct), func(t *testing.T) { results = append(results, fanOut(t, n, m, pct)) })
			}
		}
	}
	fmt.Printf("\n%-8s %-9s %-6s %-10s %-10s %-12s %-10s\n", "clones", "attached", "batch", "transport", "steps/s", "pgbench_tps", "steps_ratio")
	for _, r := range results {
		fmt.Printf("%-8d %-9d %-6d %-10s %-10.1f %-12.0f %.4f\n", r.Clones, r.AttachedPercent, r.StepBatch, r.Transport, r.StepsPerSecond, r.PgbenchTPS, r.StepsRatio)
	}
	fmt.Printf("\n%-8s %-10s %-12s %-10s %-16s %-14s %-14s %-11s %-9s %-10s %-12s %-12s %-7s %-14s %-12s %s\n", "clones", "transport", "complete_s", "steps/s", "commits/volume",
		"write_tx/vol", "wal_syncs/vol", "cpu_ms/vol", "cpu_busy", "rollbacks", "commits/s", "pgbench_tps", "ratio", "log_commits/s", "log_tx/s", "log_ratio")
	for _, r := range results {
		fmt.Printf("%-8d %-10s %-12.2f %-10.0f %-16.1f %-14.1f %-14.1f %-11.2f %-9.2f %-10d %-12.0f %-12.0f %-7.2f %-14.0f %-12.0f %.2f\n", r.Clones, r.Transport, r.SecondsToComplete, r.StepsPerSecond,
			r.CommitsPerVolume, r.WriteTxPerVolume, r.WALSyncsPerVolume, r.CPUMsPerVolume, r.CPUBusy, r.SerializationRetries, r.CommitsPerSecond, r.PgbenchTPS, r.RatioToPgbench,
			r.sagaLog.SagaCommitsPerSecond, r.sagaLog.TransactionsPerSecond, r.SagaLogRatio)
	}
	root, _ := stack.FindRepoRoot()
	dir := filepath.Join(root, ".run", "bench")
	_ = os.MkdirAll(dir, 0o755)
	b, _ := json.MarshalIndent(results, "", "  ")
	_ = os.WriteFile(filepath.Join(dir, "fanout.json"), b, 0o644)
}

// cloneSizes are the fan-out sizes: the numbers in STORAGECP_BENCH_CLONES
// (make bench CLONES="1000 10000"), else 1,000.
func cloneSizes() []int {
	sizes := []int{1000}
	if s := os.Getenv("STORAGECP_BENCH_CLONES"); s != "" {
		sizes = nil
		for _, f := range regexp.MustCompile(`\d+`).FindAllString(s, -1) {
			n, _ := strconv.Atoi(f)
			sizes = append(sizes, n)
		}
	}
	return sizes
}

// attachedMixes are the shares of clones (percent) run on sim-upstairs
// during a fan-out: the numbers in STORAGECP_BENCH_ATTACHED (make bench
// ATTACHED="0 25 100"), else 0 alone.
func attachedMixes() []int {
	mixes := []int{0}
	if s := os.Getenv("STORAGECP_BENCH_ATTACHED"); s != "" {
		mixes = nil
		for _, f := range regexp.MustCompile(`\d+`).FindAllString(s, -1) {
			n, _ := strconv.Atoi(f)
			mixes = append(mixes, min(n, 100))
		}
	}
	return mixes
}

// benchSims is how many sim-upstairs run the attached clones
// (STORAGECP_BENCH_SIMS, else 2).
func benchSims() int {
	if n, err := strconv.Atoi(os.Getenv("STORAGECP_BENCH_SIMS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// defaultStepBatch is the orchestrator's own --step-batch default.
const defaultStepBatch = 256

// stepBatch is the orchestrator's --step-batch for the run
// (STORAGECP_BENCH_STEP_BATCH, else the orchestrator's default; 0: one saga
// per step, the path before the batch swap).
func stepBatch() int {
	n, err := strconv.Atoi(os.Getenv("STORAGECP_BENCH_STEP_BATCH"))
	if err != nil {
		return defaultStepBatch
	}
	return n
}

func fanOut(t *testing.T, clones int, mode transportMode, attachedPct int) result {
	cfg := benchConfig(mode)
	sims := 0
	if attachedPct > 0 {
		sims = benchSims()
		cfg.SimUpstairs = sims
	}
	r := rack.Start(t, 6, 2, cfg)
	db := databaseOf(r.Stack)
	snap, ids := prepareClones(t, r, clones)
	attach(t, r, ids[:clones*attachedPct/100], sims)
	pprof := os.Getenv("STORAGECP_BENCH_PPROF") == "1"
	res := replace(t, r, db, snap, clones, replaceHooks{
		beforeExpunge: func() {
			if !pprof {
				return
			}
			// CPU profiles of the busiest processes during the replacement,
			// under .run/bench/ (go tool pprof -top FILE).
			// STORAGECP_BENCH_PPROF_DELAY (a duration) waits into the
			// fan-out first: its first seconds are the request's start.
			delay, _ := time.ParseDuration(os.Getenv("STORAGECP_BENCH_PPROF_DELAY"))
			for _, name := range []string{stack.Volume, stack.Orchestrator, stack.Notifier} {
				go func() {
					time.Sleep(delay)
					saveProfile(t, r.Stack.MetricsURL(name), fmt.Sprintf("%s-%d-attached-%d-batch-%d.pprof", name, clones, attachedPct, stepBatch()), 10)
				}()
			}
			// Statement statistics of the replacement only, not of the setup.
			resetStatements(t, db)
		},
		completed: func() {
			if !pprof {
				return
			}
			topStatements(t, db)
			saveServerLog(t, r.Stack.Cluster, fmt.Sprintf("postgres-%d.log", clones))
			for _, name := range []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator} {
				rpcCounts(t, r.Stack.MetricsURL(name), name, clones)
			}
		},
	})
	res.Transport = mode.name
	res.AttachedPercent = attachedPct
	res.StepBatch = stepBatch()
	res.SagaLog, res.sagaLog = sagaLogCapacity(t, db)
	res.PgbenchTPS = pgbench(t, db)
	if res.PgbenchTPS > 0 {
		res.StepsRatio = res.StepsPerSecond / res.PgbenchTPS
		res.RatioToPgbench = res.CommitsPerSecond / res.PgbenchTPS
		res.SagaLogRatio = res.sagaLog.SagaCommitsPerSecond / res.PgbenchTPS
	}
	r.Invariants(t)
	return res
}

// benchConfig is the deployment every fan-out runs on: fsync on, the
// transport of mode, and the orchestrator's default saga bound (64 per
// task) unless STORAGECP_BENCH_MAX_SAGAS says otherwise: at 1,000 clones
// 32 gave 48-52 steps/s, 64 and 128 both 69.
func benchConfig(mode transportMode) stack.Config {
	var extra []string
	if m := os.Getenv("STORAGECP_BENCH_MAX_SAGAS"); m != "" {
		extra = []string{"--max-sagas-per-task", m}
	}
	extra = append(extra, "--step-batch", strconv.Itoa(stepBatch()))
	cfg := stack.Config{Fsync: true, Insecure: mode.insecure, ExtraArgs: map[string][]string{stack.Orchestrator: extra}}
	if os.Getenv("STORAGECP_BENCH_PPROF") == "1" {
		// Failed statements (serialization failures above all) go to the
		// server log, copied to .run/bench/ at the end.
		cfg.PGConfig = map[string]string{"shared_preload_libraries": "pg_stat_statements", "log_min_error_statement": "error"}
	}
	return cfg
}

// prepareFanOut makes what a fan-out replaces: a disk, its snapshot and
// clones of the snapshot, and returns the snapshot's id. The clones are
// made directly in the volume-service: a read-only parent copied from the
// snapshot and no regions of their own (fast to set up; what is measured
// is the replacement, which only touches the parent).
func prepareFanOut(t *testing.T, r *rack.Rack, clones int) string {
	snap, _ := prepareClones(t, r, clones)
	return snap
}

// prepareClones is prepareFanOut returning the clones' ids too.
func prepareClones(t *testing.T, r *rack.Rack, clones int) (string, []string) {
	t.Helper()
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	start := time.Now()
	var wg sync.WaitGroup
	ids := make([]string, clones)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	ch := make(chan string)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ch {
				_, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
					VolumeId: id, ReadOnlyParentFromVolumeId: snap,
					Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{
						Volume: &commonv1.VcrVolume{Id: id, BlockSize: 512},
					}},
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for _, id := range ids {
		ch <- id
	}
	close(ch)
	wg.Wait()
	t.Logf("%d clones created in %s", clones, time.Since(start))
	return snap, ids
}

// attach runs each volume on one of the sim-upstairs (round robin), as an
// instance would: ConstructVolume through the notifier.
func attach(t *testing.T, r *rack.Rack, volumes []string, sims int) {
	t.Helper()
	if len(volumes) == 0 {
		return
	}
	start := time.Now()
	var wg sync.WaitGroup
	ch := make(chan int)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				_, err := r.Notifier.ConstructVolume(context.Background(), &notifierv1.ConstructVolumeRequest{
					VolumeId: volumes[i], Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS,
					Endpoint: r.Stack.UpstairsEndpoints()[i%sims], ReadOnly: true,
				})
				if err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for i := range volumes {
		ch <- i
	}
	close(ch)
	wg.Wait()
	t.Logf("%d clones attached to %d sim-upstairs in %s", len(volumes), sims, time.Since(start))
}

// replaceHooks let a bench act around the measured replacement.
type replaceHooks struct {
	// beforeExpunge runs after the counters are read, right before the
	// expunge.
	beforeExpunge func()
	// expunged runs right after the expunge, before the wait for every
	// request to end: what it starts runs beside the replacement.
	expunged func(began time.Time, old *commonv1.Target)
	// completed runs once every request is terminal, before the counters
	// are read again.
	completed func()
	// noCounters skips the database's counters: they are a node's own, so
	// across a failover they come from two servers and mean nothing.
	noCounters bool
}

// replace expunges the disk holding snap's region snapshot and times the
// replacement, from the expunge to every request terminal, with the
// database's counters and the machine's CPU time across it (result
// without transport, pgbench or saga log).
func replace(t *testing.T, r *rack.Rack, db database, snap string, clones int, h replaceHooks) result {
	t.Helper()
	var before stats
	if !h.noCounters {
		before = dbStats(t, db)
	}
	if h.beforeExpunge != nil {
		h.beforeExpunge()
	}
	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	began := time.Now()
	cpu0 := cpuTicks(t)
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	if h.expunged != nil {
		h.expunged(began, old)
	}
	// The expunge's own request first: on a rack that has replaced before,
	// the earlier requests are all terminal until the detector adds it.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	_, err := requestFor(ctx, r, old.TargetId)
	cancel()
	if err != nil {
		t.Fatalf("the request replacing %s: %v", old.TargetId, err)
	}
	r.WaitRequests(t, 30*time.Minute)
	took := time.Since(began)
	cpu1 := cpuTicks(t)
	var after stats
	if !h.noCounters {
		after = dbStats(t, db)
	}
	if h.completed != nil {
		h.completed()
	}
	res := result{Clones: clones, SecondsToComplete: took.Seconds(), StepsPerSecond: float64(clones) / took.Seconds()}
	if busy := cpu1.busy - cpu0.busy; busy > 0 {
		res.CPUMsPerVolume = float64(busy) * 1000 / clockTicks / float64(clones)
		res.CPUBusy = float64(busy) / float64(cpu1.total-cpu0.total)
	}
	if h.noCounters {
		return res
	}
	perDatabase(t, db)
	t.Logf("during the replacement: %d checkpoints, %d autovacuums, %d autoanalyzes (service databases)",
		after.checkpoints-before.checkpoints, after.autovacuums-before.autovacuums, after.autoanalyzes-before.autoanalyzes)
	commits := float64(after.commits - before.commits)
	res.CommitsPerVolume = commits / float64(clones)
	res.SerializationRetries = after.rollbacks - before.rollbacks
	res.CommitsPerSecond = commits / took.Seconds()
	res.WriteTxPerVolume = float64(after.xid-before.xid-1) / float64(clones)
	res.WALSyncsPerVolume = float64(after.walSyncs-before.walSyncs) / float64(clones)
	return res
}

// requestFor waits for the read-only request of a target.
func requestFor(ctx context.Context, r *rack.Rack, targetID string) (string, error) {
	for {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err == nil {
			for _, q := range resp.Replacements {
				if q.OldTargetId == targetID && q.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
					return q.ReplacementId, nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("%w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// database is the PostgreSQL a bench measures, reached as the services
// reach it: the single private cluster, or the replicated formation,
// whose connection string names both nodes and keeps the one that accepts
// writes (the primary).
type database interface {
	DSN(name string) string
	CreateDatabase(ctx context.Context, name, template string) error
}

// databaseOf is the stack's database: its formation under HA, else its
// cluster.
func databaseOf(st *stack.Stack) database {
	if st.Formation != nil {
		return st.Formation
	}
	return st.Cluster
}

// saveProfile fetches a CPU profile of seconds from a process's metrics
// listener into .run/bench/.
func saveProfile(t *testing.T, metricsURL, file string, seconds int) {
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(metricsURL, "/metrics"), seconds)
	resp, err := http.Get(url)
	if err != nil {
		t.Logf("profile %s: %v", url, err)
		return
	}
	defer resp.Body.Close()
	root, _ := stack.FindRepoRoot()
	f, err := os.Create(filepath.Join(root, ".run", "bench", file))
	if err != nil {
		t.Logf("profile: %v", err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}

// rpcCounts logs how many calls of each method a service served per
// replaced volume (its gRPC server metrics; setup calls included).
func rpcCounts(t *testing.T, metricsURL, service string, clones int) {
	resp, err := http.Get(metricsURL)
	if err != nil {
		t.Logf("metrics %s: %v", service, err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	method := regexp.MustCompile(`rpc_method="([^"]+)"`)
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "rpc_server_call_duration_seconds_count{") {
			continue
		}
		m := method.FindStringSubmatch(line)
		n, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if m == nil || err != nil {
			continue
		}
		t.Logf("%-24s %-36s %8.0f calls %6.2f per volume", service, m[1], n, n/float64(clones))
	}
}

// saveServerLog copies PostgreSQL's log into .run/bench/.
func saveServerLog(t *testing.T, c *pgcluster.Cluster, file string) {
	data, err := os.ReadFile(c.LogPath())
	if err != nil {
		t.Logf("server log: %v", err)
		return
	}
	root, _ := stack.FindRepoRoot()
	if err := os.WriteFile(filepath.Join(root, ".run", "bench", file), data, 0o644); err != nil {
		t.Logf("server log: %v", err)
	}
}

// topStatements logs the statements that cost PostgreSQL the most time in
// the run, cluster-wide (STORAGECP_BENCH_PPROF=1 preloads the extension).
func topStatements(t *testing.T, db database) {
	ctx := context.Background()
	conn := statementsConn(t, db)
	if conn == nil {
		return
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT d.datname, s.calls, round(s.total_exec_time)::bigint,
		(s.shared_blks_hit + s.shared_blks_read) / greatest(s.calls, 1), s.wal_bytes::bigint / greatest(s.calls, 1), s.rows / greatest(s.calls, 1),
		left(regexp_replace(s.query, '\s+', ' ', 'g'), 120)
		FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid ORDER BY s.total_exec_time DESC LIMIT 40`)
	if err != nil {
		t.Logf("pg_stat_statements: %v", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var db, q string
		var calls, ms int64
		var blocks, walBytes, nrows int64
		if err := rows.Scan(&db, &calls, &ms, &blocks, &walBytes, &nrows, &q); err != nil {
			t.Fatal(err)
		}
		t.Logf("%-12s %8d calls %7d ms %6d blocks/call %7d WAL B/call %5d rows/call  %s", db, calls, ms, blocks, walBytes, nrows, q)
	}
}

// clockTicks is USER_HZ, the unit of /proc/stat (100 on Linux).
const clockTicks = 100

type ticks struct{ busy, total int64 }

// cpuTicks reads the machine's CPU time from /proc/stat: busy is user,
// nice, system, irq, softirq and steal; total adds idle and iowait.
func cpuTicks(t *testing.T) ticks {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Logf("cpu: %v", err)
		return ticks{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var v [8]int64
	for i := range v {
		if i+1 < len(f) {
			v[i], _ = strconv.ParseInt(f[i+1], 10, 64)
		}
	}
	busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return ticks{busy: busy, total: busy + v[3] + v[4]}
}

// stats are cluster counters read before and after a run.
type stats struct {
	// commits and rollbacks of the service databases (rollbacks
	// approximate serialization failures: 40001 is not counted apart).
	commits, rollbacks int64
	// xid is the next transaction id: its advance counts write
	// transactions cluster-wide (reading it takes one).
	xid int64
	// walSyncs counts WAL flushes to disk.
	walSyncs int64
	// Background work that competes for the cores: checkpoints
	// (cluster-wide) and autovacuum/autoanalyze runs in this database.
	checkpoints, autovacuums, autoanalyzes int64
}

func dbStats(t *testing.T, db database) stats {
	ctx := context.Background()
	conn := connect(t, db, "postgres")
	defer conn.Close(ctx)
	var s stats
	err := conn.QueryRow(ctx, `SELECT sum(xact_commit)::bigint, sum(xact_rollback)::bigint FROM pg_stat_database
		WHERE datname IN ('volume', 'allocator', 'notifier', 'orchestrator')`).Scan(&s.commits, &s.rollbacks)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.QueryRow(ctx, `SELECT txid_current(), (SELECT wal_sync FROM pg_stat_wal),
		(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)`).Scan(&s.xid, &s.walSyncs, &s.checkpoints); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"volume", "allocator", "notifier", "orchestrator"} {
		dc := connect(t, db, name)
		var av, aa int64
		err := dc.QueryRow(ctx, `SELECT coalesce(sum(autovacuum_count), 0)::bigint, coalesce(sum(autoanalyze_count), 0)::bigint FROM pg_stat_user_tables`).Scan(&av, &aa)
		dc.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		s.autovacuums += av
		s.autoanalyzes += aa
	}
	return s
}

// pgbench measures single-row INSERT transactions (8 clients, 10 s) on the
// same server, connected as the services are (libpq takes the same
// connection string: the cluster's socket, or the formation's nodes of
// which it keeps the primary).
func pgbench(t *testing.T, db database) float64 {
	ctx := context.Background()
	if err := db.CreateDatabase(ctx, "pgbench", ""); err != nil {
		t.Fatal(err)
	}
	conn := connect(t, db, "pgbench")
	_, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS ins (id bigserial PRIMARY KEY, v int)`)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), "ins.sql")
	_ = os.WriteFile(script, []byte("INSERT INTO ins (v) VALUES (1);\n"), 0o644)
	out, err := exec.Command(filepath.Join(bin, "pgbench"), "-n", "-c", "8", "-j", "2", "-T", "10", "-f", script,
		db.DSN("pgbench")).CombinedOutput()
	if err != nil {
		t.Logf("pgbench: %v\n%s", err, out)
		return 0
	}
	m := regexp.MustCompile(`tps = ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

// sagaLogCapacity runs cmd/sagalog-bench for 10 s on a fresh database of
// the server (fsync as the run has it) and logs its result.
func sagaLogCapacity(t *testing.T, db database) (json.RawMessage, sagaLogRates) {
	ctx := context.Background()
	if err := db.CreateDatabase(ctx, "sagalog_bench", ""); err != nil {
		t.Fatal(err)
	}
	root, err := stack.FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "sagalog-bench")
	build := exec.Command("go", "build", "-o", bin, "./services/orchestrator/cmd/sagalog-bench")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build sagalog-bench: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "-dsn", db.DSN("sagalog_bench"), "-duration", "10s", "-concurrency", "64").Output()
	if err != nil {
		t.Fatalf("sagalog-bench: %v", err)
	}
	var rates sagaLogRates
	if err := json.Unmarshal(out, &rates); err != nil {
		t.Fatalf("sagalog-bench output %q: %v", out, err)
	}
	t.Logf("saga log: %.0f saga commits/s (%.0f events/s) in %.0f transactions/s; %s",
		rates.SagaCommitsPerSecond, rates.EventsPerSecond, rates.TransactionsPerSecond, bytes.TrimSpace(out))
	return json.RawMessage(bytes.TrimSpace(out)), rates
}

// connect opens a connection to a database of the server; the caller
// closes it.
func connect(t *testing.T, db database, name string) *pgx.Conn {
	conn, err := pgx.Connect(context.Background(), db.DSN(name))
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// statementsConn connects with pg_stat_statements available, or logs why
// not and returns nil (its library is preloaded only under
// STORAGECP_BENCH_PPROF=1).
func statementsConn(t *testing.T, db database) *pgx.Conn {
	conn := connect(t, db, "postgres")
	if _, err := conn.Exec(context.Background(), `CREATE EXTENSION IF NOT EXISTS pg_stat_statements`); err != nil {
		t.Logf("pg_stat_statements: %v", err)
		conn.Close(context.Background())
		return nil
	}
	return conn
}

// resetStatements clears pg_stat_statements cluster-wide.
func resetStatements(t *testing.T, db database) {
	ctx := context.Background()
	conn := statementsConn(t, db)
	if conn == nil {
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_stat_statements_reset()`); err != nil {
		t.Logf("pg_stat_statements_reset: %v", err)
	}
}

// perDatabase logs commits and rollbacks of each service database.
func perDatabase(t *testing.T, db database) {
	ctx := context.Background()
	conn := connect(t, db, "postgres")
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT datname, xact_commit, xact_rollback FROM pg_stat_database
		WHERE datname IN ('volume', 'allocator', 'notifier', 'orchestrator') ORDER BY datname`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var commits, rollbacks int64
		if err := rows.Scan(&name, &commits, &rollbacks); err != nil {
			t.Fatal(err)
		}
		t.Logf("database %-12s commits %8d rollbacks %8d", name, commits, rollbacks)
	}
}
