package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// The rack bench's rack: 32 sleds of 10 disks, four sim-upstairs.
const (
	rackSleds        = 32
	rackDisksPerSled = 10
	rackSims         = 4
)

// The goal the rack bench reports against: every request terminal in
// under a minute on a server where pgbench's single-row inserts run at
// 14,000 transactions per second.
const (
	rackGoalSeconds = 60
	rackGoalTPS     = 14000
)

// rackResult is one rack bench run: a populated rack, one sled expunged.
type rackResult struct {
	Size         string     `json:"size"` // "half" or "full"
	Scale        float64    `json:"scale"`
	Population   population `json:"population"`
	Sleds        int        `json:"sleds"`
	DisksPerSled int        `json:"disks_per_sled"`
	// Volumes constructed on sim-upstairs (running instances).
	Attached    int `json:"attached_volumes"`
	SimUpstairs int `json:"sim_upstairs"`
	// ProbeSeconds is how often each sim-upstairs probed the simulated
	// agents for the content and liveness oracles (rackProbeInterval).
	ProbeSeconds    float64 `json:"sim_upstairs_probe_seconds"`
	PopulateSeconds float64 `json:"populate_seconds"`
	// The sled expunged: the one holding the most targets.
	ExpungedSled  string `json:"expunged_sled"`
	SledTargets   int    `json:"expunged_sled_targets"`
	FewestOnASled int    `json:"fewest_targets_on_a_sled"`
	// The rebuild budgets in force (AdminService/GetRebuildBudgets; 0 is
	// unlimited).
	Budgets map[string]int32 `json:"budgets"`
	// Requests by kind and by how they ended.
	Requests map[string]int `json:"requests_by_kind"`
	Outcomes map[string]int `json:"requests_by_outcome"`
	Replaced int            `json:"replaced_targets"`
	Steps    int            `json:"steps"`
	// Live repairs the Upstairs reported into the new rw regions.
	LiveRepairs int `json:"live_repairs"`
	// Peaks sampled every samplePeriod from the orchestrator's metrics.
	PeakSagas       float64 `json:"peak_sagas_in_flight"`
	PeakLockWaiters float64 `json:"peak_lock_waiters"`
	// Requests seen waiting on a repair lock, and the longest such wait
	// (sampled from ListReplacements' waits), and the orchestrator's own
	// gauge of the oldest waiter at its highest.
	LockWaits            int     `json:"lock_waits"`
	LongestLockWaitS     float64 `json:"longest_lock_wait_seconds"`
	OldestLockWaitGaugeS float64 `json:"oldest_lock_wait_gauge_seconds"`
	// From the expunge to every request terminal.
	SecondsToTerminal float64 `json:"seconds_to_terminal"`
	// From the expunge to the last request's creation: how long the
	// detectors took to see the whole sled.
	SecondsToLastRequest float64 `json:"seconds_to_last_request"`
	MsPerTarget          float64 `json:"ms_per_replaced_target"`
	// Per request: created → terminal (its last modification).
	P50Seconds       float64 `json:"p50_seconds"`
	P99Seconds       float64 `json:"p99_seconds"`
	MaxSeconds       float64 `json:"max_seconds"`
	P99Under2xMedian bool    `json:"p99_under_2x_median"`
	// Where each request's life went (sampled: see phases).
	Phases phases `json:"phases"`
	// Commits of the four service databases, per replaced target.
	Commits          int64   `json:"commits"`
	CommitsPerTarget float64 `json:"commits_per_replaced_target"`
	Rollbacks        int64   `json:"rollbacks"`
	// CPU milliseconds by process (the sim-upstairs summed, PostgreSQL
	// with every backend), per replaced target.
	CPUMsPerTarget      map[string]float64 `json:"cpu_ms_per_replaced_target"`
	CPUMsPerTargetTotal float64            `json:"cpu_ms_per_replaced_target_total"`
	CPUBusy             float64            `json:"machine_cpu_busy"`
	PgbenchTPS          float64            `json:"pgbench_single_row_insert_tps"`
	// SecondsToTerminal × pgbench_tps / 14,000: the time on the goal's
	// reference server, and whether it is under the goal's minute.
	ScaledSeconds float64 `json:"scaled_seconds"`
	UnderGoal     bool    `json:"under_goal"`
	// The machine's one-minute load average before the expunge and at
	// the end: the machine is shared, and these say how much.
	LoadBefore float64 `json:"load_average_before"`
	LoadAfter  float64 `json:"load_average_after"`
}

// terminalPoll is how often the bench lists every request to see whether
// all are terminal.
const terminalPoll = 250 * time.Millisecond

// samplePeriod is how often the sampler reads the orchestrator during the
// replacement. Its reads are transactions too, a few per sample; at this
// period they are well under 1% of the commits measured.
const samplePeriod = 500 * time.Millisecond

// rackScale is STORAGECP_BENCH_RACK_SCALE (default 1: 4,000 disks, 400
// snapshots, 4,000 clones at full size).
func rackScale(t *testing.T) float64 {
	s := os.Getenv("STORAGECP_BENCH_RACK_SCALE")
	if s == "" {
		return 1
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v <= 0 {
		t.Fatalf("STORAGECP_BENCH_RACK_SCALE=%q: want a positive number", s)
	}
	return v
}

// rackSizes are the two populations at a scale: full and half of it.
func rackSizes(scale float64) []struct {
	name string
	pop  population
} {
	of := func(n float64) int { return max(1, int(math.Round(n*scale))) }
	full := population{Disks: of(4000), Snapshots: of(400), Clones: of(4000)}
	half := population{Disks: max(1, full.Disks/2), Snapshots: max(1, full.Snapshots/2), Clones: max(1, full.Clones/2)}
	return []struct {
		name string
		pop  population
	}{{"half", half}, {"full", full}}
}

// rackTimeout bounds the wait for every request to end
// (STORAGECP_BENCH_RACK_TIMEOUT, a Go duration; default 45m).
func rackTimeout(t *testing.T) time.Duration {
	return envDuration(t, "STORAGECP_BENCH_RACK_TIMEOUT", 45*time.Minute)
}

// envDuration is the positive Go duration in the environment variable
// name, else def.
func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive duration", name, s)
	}
	return d
}

// rackProbeInterval is how often each sim-upstairs probes the simulated
// agents (STORAGECP_BENCH_RACK_PROBE, a Go duration; default 3s, where the
// simulator's own default is 300ms). A probe reads every target of every
// volume the process runs from the allocator's database; with 500 running
// volumes per process every 300ms the simulated hardware, not the control
// plane, was the database's largest load (2,237 probes of 1,119 addresses,
// 18,500 buffers each, during one full-rack replacement). Real Upstairs
// read their downstairs, not our database. The content oracle still runs
// at every activation and every accepted ReplaceVolume, and the oracles
// run in full after the replacement.
func rackProbeInterval(t *testing.T) time.Duration {
	return envDuration(t, "STORAGECP_BENCH_RACK_PROBE", 3*time.Second)
}

// rackRebuilds is STORAGECP_BENCH_RACK_REBUILDS: the rack_rebuilds budget
// to set before the expunge (AdminService/SetRebuildBudgets, as an
// operator would), or -1 to keep the default.
func rackRebuilds(t *testing.T) int {
	s := os.Getenv("STORAGECP_BENCH_RACK_REBUILDS")
	if s == "" {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		t.Fatalf("STORAGECP_BENCH_RACK_REBUILDS=%q: want a budget (0 is unlimited)", s)
	}
	return n
}

// rackWorkers is how many RPCs populate keeps in flight
// (STORAGECP_BENCH_RACK_WORKERS, default 24).
func rackWorkers() int {
	if n, err := strconv.Atoi(os.Getenv("STORAGECP_BENCH_RACK_WORKERS")); err == nil && n > 0 {
		return n
	}
	return 24
}

// TestRack runs only under make bench (STORAGECP_BENCH=1), with fsync on:
// a populated rack of 32 sleds, its fullest sled expunged, at half and at
// full population.
func TestRack(t *testing.T) {
	if os.Getenv("STORAGECP_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	scale := rackScale(t)
	var results []rackResult
	for _, size := range rackSizes(scale) {
		if only := os.Getenv("STORAGECP_BENCH_RACK_ONLY"); only != "" && only != size.name {
			continue
		}
		t.Run(size.name, func(t *testing.T) {
			rackRun(t, size.pop, func(res rackResult) {
				res.Size, res.Scale = size.name, scale
				results = append(results, res)
			})
		})
	}
	printRack(results)
	root, _ := stack.FindRepoRoot()
	dir := filepath.Join(root, ".run", "bench")
	_ = os.MkdirAll(dir, 0o755)
	b, _ := json.MarshalIndent(results, "", "  ")
	_ = os.WriteFile(filepath.Join(dir, "rack.json"), b, 0o644)
}

// rackRun populates a rack, expunges its fullest sled and measures the
// replacement. It hands the figures to record before the closing checks,
// so that a check that fails still leaves them in the table.
func rackRun(t *testing.T, pop population, record func(rackResult)) {
	ctx := context.Background()
	pprof := os.Getenv("STORAGECP_BENCH_PPROF") == "1"
	probe := rackProbeInterval(t)
	cfg := stack.Config{Fsync: true, SimUpstairs: rackSims,
		ExtraArgs: map[string][]string{stack.SimUpstairs: {"--probe-interval=" + probe.String()}}}
	if pprof {
		cfg.PGConfig = map[string]string{"shared_preload_libraries": "pg_stat_statements"}
	}
	r := rack.Start(t, rackSleds, rackDisksPerSled, cfg)
	db := databaseOf(r.Stack)
	p := populate(t, r, pop, rackWorkers())
	r.Invariants(t)
	r.Validate(t)
	if t.Failed() {
		t.FailNow()
	}
	res := rackResult{Population: pop, Sleds: rackSleds, DisksPerSled: rackDisksPerSled, Attached: p.attached,
		SimUpstairs: rackSims, ProbeSeconds: probe.Seconds(), PopulateSeconds: p.took.Seconds()}
	t.Logf("populated in %s: %d disks, %d snapshots, %d clones (most popular images: %v), %d running on sim-upstairs",
		p.took.Round(time.Second), len(p.disks), len(p.snapshots), len(p.clones), p.clonesPer[:min(5, len(p.clonesPer))], p.attached)

	// The sled the allocator filled most.
	counts := sledTargets(t, r)
	sleds := sortedKeys(counts)
	slices.SortStableFunc(sleds, func(a, b string) int { return counts[b] - counts[a] })
	res.ExpungedSled, res.SledTargets = sleds[0], counts[sleds[0]]
	res.FewestOnASled = counts[sleds[len(sleds)-1]]
	if n := rackRebuilds(t); n >= 0 {
		if _, err := r.Admin.SetRebuildBudgets(ctx, &orchestratorv1.SetRebuildBudgetsRequest{RackRebuilds: proto.Int32(int32(n))}); err != nil {
			t.Fatal(err)
		}
	}
	res.Budgets = budgets(t, r)
	t.Logf("expunging sled %s: %d targets (fewest on a sled: %d); budgets %v", res.ExpungedSled, res.SledTargets, res.FewestOnASled, res.Budgets)

	before := dbStats(t, db)
	cpu0, mcpu0 := cpuByProcess(r), cpuTicks(t)
	res.LoadBefore = loadAverage()
	sctx, stopSampling := context.WithCancel(ctx)
	s := &sampler{}
	sampled := make(chan struct{})
	go func() { defer close(sampled); s.run(sctx, r, samplePeriod) }()
	if pprof {
		// Statement statistics of the replacement only, not of the
		// population.
		resetStatements(t, db)
		// CPU profiles of the services, 30 s from 15 s after the
		// expunge: the steady middle of the replacement, not the
		// detectors' first listing (go tool pprof -top
		// .run/bench/rack-*.pprof).
		for _, name := range []string{stack.Orchestrator, stack.Volume, stack.Allocator, stack.Notifier} {
			go func() {
				select {
				case <-time.After(15 * time.Second):
				case <-sctx.Done():
					return
				}
				saveProfile(t, r.Stack.MetricsURL(name), fmt.Sprintf("rack-%s-%d.pprof", name, pop.Disks), 30)
			}()
		}
	}

	began := time.Now()
	if _, err := r.Allocator.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: res.ExpungedSled}); err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}
	// Every target on the sled gets a request; the run ends when all of
	// them are terminal. Listing every request is what the bench adds to
	// the load, so it polls four times a second (not the harness's
	// twenty), and the time to terminal is the last request's own
	// terminal time, not when the poll saw it.
	var reqs []*orchestratorv1.Replacement
	harness.EventuallyEvery(t, rackTimeout(t), terminalPoll, "every request of the sled terminal", func() error {
		got, err := allReplacements(ctx, r)
		if err != nil {
			return err
		}
		if len(got) < res.SledTargets {
			return fmt.Errorf("%d requests of %d", len(got), res.SledTargets)
		}
		var open []*orchestratorv1.Replacement
		for _, q := range got {
			if !rack.Terminal(q) {
				open = append(open, q)
			}
		}
		if len(open) > 0 {
			q := open[0]
			return fmt.Errorf("%d of %d requests open; %s %s waits on %v (%s), %d attempts, last error %q",
				len(open), len(got), kindName(q.Kind), q.ReplacementId, q.GetWait().GetKind(), q.GetWait().GetDetail(), q.Attempts, q.LastError)
		}
		reqs = got
		return nil
	})
	cpu1, mcpu1 := cpuByProcess(r), cpuTicks(t)
	after := dbStats(t, db)
	stopSampling()
	<-sampled
	res.LoadAfter = loadAverage()

	res.Replaced = len(reqs)
	var last, lastCreated time.Time
	for _, q := range reqs {
		if m := q.TimeModified.AsTime(); m.After(last) {
			last = m
		}
		if c := q.RequestTime.AsTime(); c.After(lastCreated) {
			lastCreated = c
		}
	}
	res.SecondsToTerminal = last.Sub(began).Seconds()
	res.SecondsToLastRequest = lastCreated.Sub(began).Seconds()
	res.MsPerTarget = res.SecondsToTerminal * 1000 / float64(res.Replaced)
	res.Requests, res.Outcomes = map[string]int{}, map[string]int{}
	var per []time.Duration
	for _, q := range reqs {
		res.Requests[kindName(q.Kind)]++
		state := q.ReadOnlyState.String()
		if q.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
			state = q.RegionState.String()
		}
		res.Outcomes[strings.ToLower(state[strings.LastIndex(state, "STATE_")+len("STATE_"):])]++
		per = append(per, q.TimeModified.AsTime().Sub(q.RequestTime.AsTime()))
		if !strings.HasSuffix(state, "_COMPLETE") {
			t.Errorf("request %s (%s, lock volume %s, old target %s) ended %s: %s; last error %q",
				q.ReplacementId, kindName(q.Kind), q.LockVolumeId, q.OldTargetId, state, q.EndReason, q.LastError)
		}
	}
	slices.Sort(per)
	res.P50Seconds = percentile(per, 50).Seconds()
	res.P99Seconds = percentile(per, 99).Seconds()
	res.MaxSeconds = maxDuration(per).Seconds()
	res.P99Under2xMedian = res.P99Seconds < 2*res.P50Seconds
	res.Phases = s.phasesOf(reqs)
	res.Steps = stepCount(t, r)
	res.LiveRepairs = liveRepairs(t, r, reqs)
	res.PeakSagas, res.PeakLockWaiters, res.OldestLockWaitGaugeS = s.peakSagas, s.peakWaiters, s.oldestLockWait
	res.LockWaits = len(s.lockWaited)
	for _, d := range s.lockWaited {
		res.LongestLockWaitS = max(res.LongestLockWaitS, d.Seconds())
	}
	res.Commits = after.commits - before.commits
	res.Rollbacks = after.rollbacks - before.rollbacks
	res.CommitsPerTarget = float64(res.Commits) / float64(res.Replaced)
	res.CPUMsPerTarget = map[string]float64{}
	for name, v := range cpu1 {
		ms := float64(v-cpu0[name]) * 1000 / clockTicks / float64(res.Replaced)
		res.CPUMsPerTarget[name] = ms
		res.CPUMsPerTargetTotal += ms
	}
	if total := mcpu1.total - mcpu0.total; total > 0 {
		res.CPUBusy = float64(mcpu1.busy-mcpu0.busy) / float64(total)
	}
	perDatabase(t, db)
	if pprof {
		topStatements(t, db)
		for _, name := range []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator} {
			rpcCounts(t, r.Stack.MetricsURL(name), name, res.Replaced)
		}
	}

	res.PgbenchTPS = pgbench(t, db)
	res.ScaledSeconds = res.SecondsToTerminal * res.PgbenchTPS / rackGoalTPS
	res.UnderGoal = res.PgbenchTPS > 0 && res.ScaledSeconds < rackGoalSeconds
	record(res)

	r.Invariants(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
	r.Validate(t)
}

// printRack prints one column per run, one row per figure.
func printRack(results []rackResult) {
	if len(results) == 0 {
		return
	}
	row := func(name string, f func(r rackResult) string) {
		fmt.Printf("%-34s", name)
		for _, r := range results {
			fmt.Printf(" %-22s", f(r))
		}
		fmt.Println()
	}
	num := func(format string, f func(r rackResult) float64) func(r rackResult) string {
		return func(r rackResult) string { return fmt.Sprintf(format, f(r)) }
	}
	fmt.Println()
	row("rack bench", func(r rackResult) string { return fmt.Sprintf("%s (scale %g)", r.Size, r.Scale) })
	row("disks/snapshots/clones", func(r rackResult) string {
		return fmt.Sprintf("%d/%d/%d", r.Population.Disks, r.Population.Snapshots, r.Population.Clones)
	})
	row("running on sim-upstairs", func(r rackResult) string {
		return fmt.Sprintf("%d on %d, probe %gs", r.Attached, r.SimUpstairs, r.ProbeSeconds)
	})
	row("populate_s", num("%.0f", func(r rackResult) float64 { return r.PopulateSeconds }))
	row("expunged sled targets (fewest)", func(r rackResult) string { return fmt.Sprintf("%d (%d)", r.SledTargets, r.FewestOnASled) })
	row("budgets rack/src/dest/steps", func(r rackResult) string {
		b := r.Budgets
		return fmt.Sprintf("%d/%d/%d/%d", b["rack_rebuilds"], b["source_sled_rebuilds"], b["dest_sled_rebuilds"], b["rack_steps"])
	})
	row("requests rw/region_snap/ro_region", func(r rackResult) string {
		q := r.Requests
		return fmt.Sprintf("%d/%d/%d", q["read_write_region"], q["region_snapshot"], q["read_only_region"])
	})
	row("outcomes", func(r rackResult) string {
		var parts []string
		for _, k := range sortedKeys(r.Outcomes) {
			parts = append(parts, fmt.Sprintf("%s %d", k, r.Outcomes[k]))
		}
		return strings.Join(parts, ", ")
	})
	row("steps", num("%.0f", func(r rackResult) float64 { return float64(r.Steps) }))
	row("live repairs", num("%.0f", func(r rackResult) float64 { return float64(r.LiveRepairs) }))
	row("peak sagas in flight", num("%.0f", func(r rackResult) float64 { return r.PeakSagas }))
	row("lock waits (peak waiters)", func(r rackResult) string { return fmt.Sprintf("%d (%.0f)", r.LockWaits, r.PeakLockWaiters) })
	row("longest lock wait_s (gauge)", func(r rackResult) string {
		return fmt.Sprintf("%.1f (%.1f)", r.LongestLockWaitS, r.OldestLockWaitGaugeS)
	})
	row("last request created_s", num("%.1f", func(r rackResult) float64 { return r.SecondsToLastRequest }))
	row("terminal_s", num("%.1f", func(r rackResult) float64 { return r.SecondsToTerminal }))
	row("ms per replaced target", num("%.1f", func(r rackResult) float64 { return r.MsPerTarget }))
	row("per request p50/p99/max_s", func(r rackResult) string {
		return fmt.Sprintf("%.1f/%.1f/%.1f", r.P50Seconds, r.P99Seconds, r.MaxSeconds)
	})
	row("p99 < 2 x median", func(r rackResult) string { return strconv.FormatBool(r.P99Under2xMedian) })
	row("rw wait p50/p99_s (n)", func(r rackResult) string { return r.Phases.RWWait.String() })
	row("rw repair p50/p99_s", func(r rackResult) string { return r.Phases.RWRepair.String() })
	row("rw finish p50/p99_s", func(r rackResult) string { return r.Phases.RWFinish.String() })
	row("read-only wait p50/p99_s (n)", func(r rackResult) string { return r.Phases.ROWait.String() })
	row("read-only rest p50/p99_s", func(r rackResult) string { return r.Phases.RORest.String() })
	row("commits/target (rollbacks)", func(r rackResult) string { return fmt.Sprintf("%.1f (%d)", r.CommitsPerTarget, r.Rollbacks) })
	names := map[string]bool{}
	for _, r := range results {
		for n := range r.CPUMsPerTarget {
			names[n] = true
		}
	}
	for _, n := range sortedKeys(names) {
		row("cpu_ms/target "+n, num("%.1f", func(r rackResult) float64 { return r.CPUMsPerTarget[n] }))
	}
	row("cpu_ms/target all", num("%.1f", func(r rackResult) float64 { return r.CPUMsPerTargetTotal }))
	row("machine cpu busy", num("%.2f", func(r rackResult) float64 { return r.CPUBusy }))
	row("pgbench_tps", num("%.0f", func(r rackResult) float64 { return r.PgbenchTPS }))
	row("scaled_s (goal < 60)", func(r rackResult) string { return fmt.Sprintf("%.1f %v", r.ScaledSeconds, r.UnderGoal) })
	row("load average before/after", func(r rackResult) string { return fmt.Sprintf("%.2f/%.2f", r.LoadBefore, r.LoadAfter) })
	if len(results) == 2 && results[0].MsPerTarget > 0 {
		fmt.Printf("time per replaced target, full over half: %.2f\n", results[1].MsPerTarget/results[0].MsPerTarget)
	}
}
