package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/platform/pgformation"
	"storagecp.dev/testsupport/stack"
)

// How the failover bench probes the services' writes: each call has
// probeTimeout; a failed one is retried after probeRetry, a successful one
// repeated after probeSpacing (the orchestrator's probe starts a saga that
// creates a disk, so successes are kept few), until probeStreak calls in a
// row that began once the formation was healthy again succeeded.
const (
	probeTimeout = 250 * time.Millisecond
	probeRetry   = 50 * time.Millisecond
	probeSpacing = time.Second
	probeStreak  = 3
	// failoverLimit bounds everything after the kill: the promotion, the
	// standby's return, every service writing again.
	failoverLimit = 3 * time.Minute
)

// kindFigures are one database kind's fan-out, without a failover.
type kindFigures struct {
	Database       string  `json:"database"`
	Seconds        float64 `json:"seconds_to_complete"`
	StepsPerSecond float64 `json:"steps_per_second"`
	PgbenchTPS     float64 `json:"pgbench_single_row_insert_tps"`
	// StepsPerPgbench is steps/s over pgbench's inserts/s on the same
	// database in the same run: what to compare across machines.
	StepsPerPgbench   float64 `json:"steps_per_second_per_pgbench_tps"`
	CommitsPerVolume  float64 `json:"commits_per_replaced_volume"`
	WriteTxPerVolume  float64 `json:"write_transactions_per_replaced_volume"`
	WALSyncsPerVolume float64 `json:"wal_syncs_per_replaced_volume"`
	CPUMsPerVolume    float64 `json:"cpu_ms_per_replaced_volume"`
	CPUBusy           float64 `json:"cpu_busy"`
	// FirstStep is the time from the expunge to the first step done, and
	// LongestGap the longest time between two steps done after it: the
	// stall a failover is to be compared with.
	FirstStep  float64 `json:"seconds_to_first_step"`
	LongestGap float64 `json:"longest_gap_seconds"`
	// Tail is the time from the last step done to every request Complete:
	// the steps' stash volumes collected, the request finished.
	Tail float64 `json:"seconds_from_last_step_done_to_complete"`
}

// serviceFigures are one service's writes and health across the failover,
// in seconds from the kill (null when it did not happen).
type serviceFigures struct {
	Service string `json:"service"`
	// Write is the RPC the probe calls.
	Write string `json:"write"`
	// FirstFailure is when the first write failed; FirstBack when the
	// first write after it succeeded (the end of the first outage; the
	// killed node's keeper may restart its PostgreSQL before the monitor
	// promotes the standby, which is then a second outage); Back when the
	// first write after the last failure succeeded: writes back for good.
	FirstFailure *float64 `json:"first_failed_write_s"`
	FirstBack    *float64 `json:"first_write_after_failure_s"`
	Back         *float64 `json:"writes_back_s"`
	// Unavailable adds up the outages: from the start of each run of
	// failed writes to the end of the success that ended it.
	Unavailable float64 `json:"unavailable_s"`
	Outages     int     `json:"outages"`
	Calls       int     `json:"calls"`
	Failures    int     `json:"failed_calls"`
	LastError   string  `json:"last_error,omitempty"`
	// HealthDown is when the service's gRPC health first was not SERVING
	// (as the probe saw it: a 100 ms poll), HealthBack when it turned
	// SERVING for the last time, HealthDownPeriods how often it was down.
	HealthDown        *float64 `json:"health_not_serving_s"`
	HealthBack        *float64 `json:"health_serving_again_s"`
	HealthDownPeriods int      `json:"health_down_periods"`
	// Timeline lists every change of the writes' outcome: the time from
	// the kill, and "ok" or the gRPC code with the first failure's message.
	Timeline []string `json:"timeline"`
	back     time.Time
}

// failoverFigures are the fan-out with the primary killed, beside the same
// fan-out without a failover (on a formation of its own, as this one).
type failoverFigures struct {
	Seconds        float64 `json:"seconds_to_complete"`
	StepsPerSecond float64 `json:"steps_per_second"`
	// WithoutSeconds is the HA fan-out without a failover, Ratio this one's
	// time over it.
	WithoutSeconds float64 `json:"seconds_without_failover"`
	Ratio          float64 `json:"ratio_to_without_failover"`
	// StepsAtKill of Clones steps were done when the primary's postmaster
	// was killed.
	StepsAtKill  int64  `json:"steps_done_at_kill"`
	KilledNode   string `json:"killed_node"`
	PromotedNode string `json:"promoted_node"`
	// From the kill, as the monitor reports it (polled every 100 ms):
	// Promotion until another node takes writes (wait_primary, or primary,
	// as assigned and as reported; what Formation.WaitFailover waits for);
	// PrimaryWithStandby until that node is primary, which pg_auto_failover
	// reports only once the old node is back as its synchronous standby;
	// Healthy until a primary and a secondary (Formation.WaitHealthy's
	// condition).
	Promotion          *float64 `json:"kill_to_promotion_s"`
	PrimaryWithStandby *float64 `json:"kill_to_primary_with_standby_s"`
	Healthy            *float64 `json:"kill_to_formation_healthy_s"`
	// FanOutEnded is when every request was terminal, from the kill.
	FanOutEnded float64 `json:"kill_to_fanout_complete_s"`
	// GapFrom and GapTo bound the gap with no step done that contains the
	// kill: the last step seen done before it and the first after it
	// (seconds from the kill); Gap is its length.
	GapFrom float64 `json:"gap_at_kill_from_s"`
	GapTo   float64 `json:"gap_at_kill_to_s"`
	Gap     float64 `json:"gap_at_kill_s"`
	// The stall lasts from GapFrom until the first step done once writes
	// were back (Resumed): WritesBack is the first probe write of any
	// service that succeeded after failing. A step can be seen done
	// before that, a commit visible on a node that cannot acknowledge it
	// (the killed node's PostgreSQL, restarted by its keeper before it is
	// demoted, waits for a synchronous standby that no longer follows
	// it): SeenBeforeWritesBack counts those steps, Gap ends at the first.
	WritesBack           *float64 `json:"first_write_back_s"`
	Resumed              *float64 `json:"steps_resumed_s"`
	Stall                *float64 `json:"stall_s"`
	SeenBeforeWritesBack int64    `json:"steps_seen_done_before_writes_back"`
	// AfterResumed is the rate of the steps left when steps resumed, until
	// the last was done; WhileRejoining the rate until the formation was
	// healthy again (the old primary rejoining, on the same cores), and
	// AfterHealthy from then to the last (both 0 when the steps were done
	// first); DoneBySecond the steps seen done at each whole second from
	// the kill, the shape of the recovery.
	AfterResumed   float64 `json:"steps_per_second_after_resumed"`
	WhileRejoining float64 `json:"steps_per_second_while_rejoining"`
	AfterHealthy   float64 `json:"steps_per_second_after_healthy"`
	DoneBySecond   []int64 `json:"steps_done_by_second_from_kill"`
	// CollectedBySecond counts the steps whose stash volume was also
	// deleted (volume_deleted, a step's end), and Tail is the time from the
	// last step done to every request Complete.
	CollectedBySecond []int64 `json:"steps_collected_by_second_from_kill"`
	Tail              float64 `json:"seconds_from_last_step_done_to_complete"`
	// The machine's CPU time per replaced volume and how busy the cores
	// were, across the whole fan-out (the rejoin included).
	CPUMsPerVolume float64 `json:"cpu_ms_per_replaced_volume"`
	CPUBusy        float64 `json:"cpu_busy"`
	// LongestGap is the run's longest time between two steps done.
	LongestGap         float64          `json:"longest_gap_seconds"`
	LeaderEpochBefore  int64            `json:"leader_epoch_before"`
	LeaderEpochAfter   int64            `json:"leader_epoch_after"`
	Services           []serviceFigures `json:"services"`
	FormationStates    []string         `json:"formation_states"`
	AcknowledgedProbes int              `json:"acknowledged_probe_writes_checked"`
}

type failoverReport struct {
	Clones    int    `json:"clones"`
	Transport string `json:"transport"`
	// Fsync is on for every database (and the standby), as in every bench.
	Fsync  bool         `json:"fsync"`
	Single *kindFigures `json:"single"`
	HA     *kindFigures `json:"ha"`
	// HAOverSingle: each figure of HA over the same of the single cluster.
	HAOverSingle map[string]float64 `json:"ha_over_single,omitempty"`
	Failover     *failoverFigures   `json:"failover"`
}

// TestFailover measures the replicated database (make bench, or alone with
// make bench BENCH=failover): the same fan-out (one snapshot, N clones, the
// disk of its region snapshot expunged; N is STORAGECP_BENCH_FAILOVER_CLONES,
// else the first of STORAGECP_BENCH_CLONES, else 1,000) on the single
// cluster and on a pg_auto_failover formation, each beside pgbench on the
// same database, fsync on: the cost of synchronous replication. Then, on
// another formation, the fan-out with the primary's postmaster killed
// (kill -9) once a fifth of the steps are done: the time to the monitor's
// promotion, to each service's first successful write, to each service's
// health SERVING again, the longest time no step completed, and the fan-out
// time beside the one without a failover (each on a fresh formation).
// Everything ends Complete with nothing lost.
func TestFailover(t *testing.T) {
	if os.Getenv("STORAGECP_BENCH") != "1" {
		t.Skip("benchmark: run with make bench")
	}
	if !pgformation.Installed() {
		t.Fatal(pgformation.ErrNotInstalled)
	}
	clones := 1000
	if sizes := cloneSizes(); len(sizes) > 0 {
		clones = sizes[0]
	}
	if s := os.Getenv("STORAGECP_BENCH_FAILOVER_CLONES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 10 {
			t.Fatalf("STORAGECP_BENCH_FAILOVER_CLONES=%q: want a number of clones, at least 10", s)
		}
		clones = n
	}
	// One transport: the first that STORAGECP_BENCH_TLS allows (mutual
	// TLS unless it says off); TestFanOut compares the two.
	mode := transportModes()[0]
	rep := failoverReport{Clones: clones, Transport: mode.name, Fsync: true}
	// One stack at a time: the single cluster's is stopped before the
	// formation starts, so neither run shares the cores with the other.
	t.Run("single", func(t *testing.T) {
		r := rack.Start(t, 6, 2, benchConfig(mode))
		rep.Single = fanOutOn(t, r, "single", clones)
	})
	ha := benchConfig(mode)
	ha.HA = true
	t.Run("ha", func(t *testing.T) {
		r := rack.Start(t, 6, 2, ha)
		rep.HA = fanOutOn(t, r, "ha", clones)
	})
	// The failover on a formation of its own, so that its fan-out starts
	// from the state the one without a failover started from: a second
	// fan-out on the same stack runs slower even without a failover (at
	// 1,000 clones, 40 s after 18 s on one formation).
	t.Run("failover", func(t *testing.T) {
		if rep.HA == nil {
			t.Skip("no fan-out without a failover to compare with")
		}
		r := rack.Start(t, 6, 2, ha)
		failover(t, r, clones, rep.HA, func(fo *failoverFigures) { rep.Failover = fo })
	})
	if rep.Single != nil && rep.HA != nil {
		rep.HAOverSingle = map[string]float64{
			"seconds_to_complete":              ratio(rep.HA.Seconds, rep.Single.Seconds),
			"steps_per_second":                 ratio(rep.HA.StepsPerSecond, rep.Single.StepsPerSecond),
			"pgbench_single_row_insert_tps":    ratio(rep.HA.PgbenchTPS, rep.Single.PgbenchTPS),
			"steps_per_second_per_pgbench_tps": ratio(rep.HA.StepsPerPgbench, rep.Single.StepsPerPgbench),
			"write_transactions_per_volume":    ratio(rep.HA.WriteTxPerVolume, rep.Single.WriteTxPerVolume),
		}
	}
	printFailover(rep)
	root, _ := stack.FindRepoRoot()
	dir := filepath.Join(root, ".run", "bench")
	_ = os.MkdirAll(dir, 0o755)
	b, _ := json.MarshalIndent(rep, "", "  ")
	_ = os.WriteFile(filepath.Join(dir, "failover.json"), b, 0o644)
}

func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// fanOutOn runs one fan-out on the rack and pgbench after it on the same
// database, watching the steps as the failover run does, so that both
// runs carry the same observers.
func fanOutOn(t *testing.T, r *rack.Rack, kind string, clones int) *kindFigures {
	db := databaseOf(r.Stack)
	snap := prepareFanOut(t, r, clones)
	var prog *progress
	res := replace(t, r, db, snap, clones, replaceHooks{expunged: func(began time.Time, old *commonv1.Target) {
		prog = watchProgress(t, r, old.TargetId, began, 0)
	}})
	prog.wait()
	k := &kindFigures{
		Database: kind, Seconds: res.SecondsToComplete, StepsPerSecond: res.StepsPerSecond,
		CommitsPerVolume: res.CommitsPerVolume, WriteTxPerVolume: res.WriteTxPerVolume, WALSyncsPerVolume: res.WALSyncsPerVolume,
		CPUMsPerVolume: res.CPUMsPerVolume, CPUBusy: res.CPUBusy,
	}
	k.FirstStep, k.LongestGap = prog.firstAndLongest()
	k.Tail = prog.began.Add(seconds(res.SecondsToComplete)).Sub(prog.lastDone()).Seconds()
	k.PgbenchTPS = pgbench(t, db)
	k.StepsPerPgbench = ratio(k.StepsPerSecond, k.PgbenchTPS)
	t.Logf("%s: %d clones in %.2fs (%.0f steps/s), pgbench %.0f tps, longest gap between steps %.2fs",
		kind, clones, k.Seconds, k.StepsPerSecond, k.PgbenchTPS, k.LongestGap)
	r.Invariants(t)
	return k
}

// failover runs the fan-out on a formation and kills the primary's
// postmaster once a fifth of the steps are done. It reports the figures before the checks that end it, so that
// they are printed even when a check fails.
func failover(t *testing.T, r *rack.Rack, clones int, without *kindFigures, report func(*failoverFigures)) {
	ctx := context.Background()
	f := r.Stack.Formation
	snap := prepareFanOut(t, r, clones)
	primary, err := f.Primary(ctx)
	if err != nil || primary == nil {
		t.Fatalf("primary: %v %v", primary, err)
	}
	lead, err := r.Admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	probes := writeProbes(r)
	// Each probe once before the kill: one that cannot succeed would
	// measure nothing.
	for _, p := range probes {
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := p.write(c)
		cancel()
		if err != nil {
			t.Fatalf("%s probe %s before the kill: %v", p.service, p.rpc, err)
		}
	}
	// The orchestrator's probe started a saga: let it finish outside the
	// measured fan-out.
	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	run := &failoverRun{t: t, r: r, primary: primary, probes: probes, ended: make(chan struct{}), done: make(chan struct{})}
	res := replace(t, r, databaseOf(r.Stack), snap, clones, replaceHooks{noCounters: true, expunged: func(began time.Time, old *commonv1.Target) {
		run.progress = watchProgress(t, r, old.TargetId, began, int64(clones)/5)
		go run.run()
	}})
	completed := time.Now()
	close(run.ended)
	<-run.done
	run.progress.wait()
	if run.killed.IsZero() {
		t.Fatal("the primary was never killed")
	}
	out := &failoverFigures{
		Seconds: res.SecondsToComplete, StepsPerSecond: res.StepsPerSecond, CPUMsPerVolume: res.CPUMsPerVolume, CPUBusy: res.CPUBusy,
		WithoutSeconds: without.Seconds, Ratio: ratio(res.SecondsToComplete, without.Seconds),
		StepsAtKill: run.stepsAtKill, KilledNode: primary.Name, PromotedNode: run.promotedNode,
		Promotion: since(run.killed, run.promoted), PrimaryWithStandby: since(run.killed, run.failedOver), Healthy: since(run.killed, run.healthy),
		FanOutEnded:       completed.Sub(run.killed).Seconds(),
		LeaderEpochBefore: lead.Epoch, FormationStates: run.states,
	}
	from, to := run.progress.gapAround(run.killed)
	out.GapFrom, out.GapTo = from.Sub(run.killed).Seconds(), to.Sub(run.killed).Seconds()
	out.Gap = to.Sub(from).Seconds()
	_, out.LongestGap = run.progress.firstAndLongest()
	out.Tail = completed.Sub(run.progress.lastDone()).Seconds()
	var back time.Time
	for _, p := range probes {
		sf := run.figures(p.service)
		out.Services = append(out.Services, sf)
		if !sf.back.IsZero() && (back.IsZero() || sf.back.Before(back)) {
			back = sf.back
		}
	}
	if !back.IsZero() {
		out.WritesBack = since(run.killed, back)
		if resumed, doneBefore := run.progress.firstAfter(back); !resumed.IsZero() {
			out.Resumed = since(run.killed, resumed)
			out.Stall = since(from, resumed)
			out.SeenBeforeWritesBack = doneBefore - run.stepsAtKill
			last := run.progress.lastDone()
			out.AfterResumed = ratio(float64(run.progress.count()-doneBefore), last.Sub(resumed).Seconds())
			if h := run.healthy; h.After(resumed) && h.Before(last) {
				atHealthy := run.progress.doneAt(h)
				out.WhileRejoining = ratio(float64(atHealthy-doneBefore), h.Sub(resumed).Seconds())
				out.AfterHealthy = ratio(float64(run.progress.count()-atHealthy), last.Sub(h).Seconds())
			}
		}
	}
	for at := run.killed; !at.After(completed.Add(time.Second)); at = at.Add(time.Second) {
		out.DoneBySecond = append(out.DoneBySecond, run.progress.doneAt(at))
		out.CollectedBySecond = append(out.CollectedBySecond, run.progress.collectedAt(at))
	}
	report(out)

	// Every request Complete, the formation whole again, a new leader's
	// term, every acknowledged probe write still there, and the checks
	// every test ends with.
	for _, q := range r.WaitRequests(t, time.Minute) {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("%v request %s ended %v%v", q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
		}
	}
	if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
		t.Error(err)
	}
	r.WaitLeader(t, r.Admin)
	lead2, err := r.Admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	out.LeaderEpochAfter = lead2.Epoch
	if lead2.Epoch <= lead.Epoch {
		t.Errorf("leader epoch %d before the failover, %d after: want a higher one", lead.Epoch, lead2.Epoch)
	}
	if err := r.Stack.WaitHealthy(ctx, 30*time.Second); err != nil {
		t.Errorf("after the failover: %v", err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	for _, check := range run.checks() {
		if check != nil {
			check(t)
			out.AcknowledgedProbes++
		}
	}
	t.Logf("failover: killed %s at %d/%d steps; promotion %ss after the kill; fan-out %.2fs (%.2fs without a failover); stall %ss",
		primary.Name, out.StepsAtKill, clones, fmtSeconds(out.Promotion), out.Seconds, out.WithoutSeconds, fmtSeconds(out.Stall))
}

// since is b-a in seconds, nil when b never came.
func since(a, b time.Time) *float64 {
	if b.IsZero() {
		return nil
	}
	d := b.Sub(a).Seconds()
	return &d
}

// failoverRun is the kill and what is observed after it. run sets every
// field before it closes done; the test reads them after.
type failoverRun struct {
	t        *testing.T
	r        *rack.Rack
	primary  *pgformation.Node
	probes   []probe
	progress *progress
	// ended is closed when the fan-out is complete, done when run returns.
	ended, done chan struct{}

	killed       time.Time
	stepsAtKill  int64
	promotedNode string
	states       []string
	// failedOver is when another node was primary as assigned and as
	// reported: its standby back.
	failedOver time.Time
	writes     map[string]*probeLog
	health     map[string][]healthChange

	mu       sync.Mutex
	promoted time.Time
	healthy  time.Time
}

func (fr *failoverRun) promotedAt() time.Time {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.promoted
}

func (fr *failoverRun) healthyAt() time.Time {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.healthy
}

// run waits for a fifth of the steps, kills the primary's postmaster, and
// watches the formation, every service's writes and every service's health
// until all are back (or failoverLimit).
func (fr *failoverRun) run() {
	defer close(fr.done)
	t := fr.t
	select {
	case <-fr.progress.reached:
	case <-fr.ended:
		t.Errorf("the fan-out ended before a fifth of its steps were seen done: nothing killed")
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), failoverLimit)
	defer cancel()
	// The pollers wait for the kill, so that their first call follows it.
	start := make(chan struct{})
	var writers, watchers sync.WaitGroup
	stopHealth := make(chan struct{})
	logs := make([]*probeLog, len(fr.probes))
	changes := make([][]healthChange, len(fr.probes))
	for i, p := range fr.probes {
		writers.Add(1)
		go func() {
			defer writers.Done()
			<-start
			logs[i] = pollWrites(ctx, p, fr.healthyAt)
		}()
		watchers.Add(1)
		go func() {
			defer watchers.Done()
			<-start
			changes[i] = pollHealth(ctx, fr.r.Stack.Proc(p.service), stopHealth)
		}()
	}
	pid := fr.primary.Postmaster()
	if pid == 0 {
		t.Errorf("%s has no postmaster to kill", fr.primary.Name)
		close(start)
		cancel()
		writers.Wait()
		close(stopHealth)
		watchers.Wait()
		return
	}
	fr.stepsAtKill = fr.progress.count()
	fr.killed = time.Now()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Errorf("kill %s's postmaster (%d): %v", fr.primary.Name, pid, err)
	}
	close(start)
	fr.watchFormation(ctx)
	writers.Wait()
	close(stopHealth)
	watchers.Wait()
	fr.writes = map[string]*probeLog{}
	fr.health = map[string][]healthChange{}
	for i, p := range fr.probes {
		fr.writes[p.service] = logs[i]
		fr.health[p.service] = changes[i]
	}
}

// watchFormation polls the monitor every 100 ms from the kill, recording
// every change of a node's state, until another node takes writes (the
// promotion) and the formation is healthy again: Formation.WaitFailover's
// and WaitHealthy's conditions, in one loop so that the transitions
// between them are seen too.
func (fr *failoverRun) watchFormation(ctx context.Context) {
	f := fr.r.Stack.Formation
	last := ""
	for {
		st, err := f.State(ctx)
		now := time.Now()
		if err == nil {
			key := ""
			primaries, secondaries := 0, 0
			for _, s := range st {
				key += fmt.Sprintf("%s %s/%s; ", s.Name, s.Current, s.Assigned)
				// wait_primary takes writes, without a synchronous
				// standby yet: the promotion as the services see it.
				writable := s.Current == s.Assigned && (s.Current == "wait_primary" || s.Current == "primary")
				if writable && s.Name != fr.primary.Name && fr.promotedAt().IsZero() {
					fr.mu.Lock()
					fr.promoted, fr.promotedNode = now, s.Name
					fr.mu.Unlock()
				}
				if s.Current == s.Assigned && s.Current == "primary" {
					primaries++
					if s.Name != fr.primary.Name && fr.failedOver.IsZero() {
						fr.failedOver = now
					}
				}
				if s.Current == s.Assigned && s.Current == "secondary" {
					secondaries++
				}
			}
			if key != last {
				fr.states = append(fr.states, fmt.Sprintf("+%.2fs %s", now.Sub(fr.killed).Seconds(), key))
				last = key
			}
			if !fr.promotedAt().IsZero() && primaries == 1 && secondaries == len(st)-1 {
				fr.mu.Lock()
				fr.healthy = now
				fr.mu.Unlock()
				return
			}
		}
		select {
		case <-ctx.Done():
			fr.t.Errorf("formation after the kill: not promoted and healthy again within %s (promoted: %v); states %v; last error %v\n%s",
				failoverLimit, !fr.promotedAt().IsZero(), fr.states, err, f.LogTail("monitor", 20))
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// checks are the verifications of every acknowledged probe write.
func (fr *failoverRun) checks() []func(*testing.T) {
	var out []func(*testing.T)
	for _, p := range fr.probes {
		if l := fr.writes[p.service]; l != nil {
			out = append(out, l.checks...)
		}
	}
	return out
}

// figures reduces a service's writes and health to its figures.
func (fr *failoverRun) figures(service string) serviceFigures {
	out := serviceFigures{Service: service}
	for _, p := range fr.probes {
		if p.service == service {
			out.Write = p.rpc
		}
	}
	rel := func(at time.Time) *float64 { return since(fr.killed, at) }
	if l := fr.writes[service]; l != nil {
		var failedSince time.Time // start of the current run of failures
		last := ""
		for _, c := range l.calls {
			outcome := "ok"
			if c.err != nil {
				st := status.Convert(c.err)
				outcome = st.Code().String() + ": " + st.Message()
			}
			if code, _, _ := strings.Cut(outcome, ":"); code != last {
				out.Timeline = append(out.Timeline, fmt.Sprintf("%+.2fs %s", c.end.Sub(fr.killed).Seconds(), outcome))
				last = code
			}
			out.Calls++
			if c.err != nil {
				out.Failures++
				out.LastError = c.err.Error()
				if out.FirstFailure == nil {
					out.FirstFailure = rel(c.end)
				}
				if failedSince.IsZero() {
					failedSince = c.start
				}
				continue
			}
			if !failedSince.IsZero() {
				out.Outages++
				out.Unavailable += c.end.Sub(failedSince).Seconds()
				if out.FirstBack == nil {
					out.FirstBack = rel(c.end)
				}
				out.Back, out.back = rel(c.end), c.end
				failedSince = time.Time{}
			}
		}
		if out.Failures == 0 && len(l.calls) > 0 {
			// Never failed: back from the first write on.
			out.Back, out.back = rel(l.calls[0].end), l.calls[0].end
		}
		if !failedSince.IsZero() {
			// Still failing when the probe gave up.
			out.Back, out.back = nil, time.Time{}
			fr.t.Errorf("%s: writes still failing %s after the kill: %s", service, failoverLimit, out.LastError)
		}
	}
	serving := true
	for _, h := range fr.health[service] {
		if h.serving == serving {
			continue
		}
		serving = h.serving
		if !serving {
			out.HealthDownPeriods++
			if out.HealthDown == nil {
				out.HealthDown = rel(h.at)
			}
		} else {
			out.HealthBack = rel(h.at)
		}
	}
	if !serving {
		fr.t.Errorf("%s: health not SERVING when the probes ended", service)
	}
	return out
}

// probe is one service's cheap write through its public API, each call a
// new row (so that every success is a commit, not an idempotent replay),
// harmless to the rack: check, for a success, verifies later that the
// write survived the failover (nil when the API cannot show it).
type probe struct {
	service, rpc string
	write        func(ctx context.Context) (check func(*testing.T), err error)
}

// writeProbes are the four services' probes:
//   - volume-service: CreateVolume of a new empty volume (no parent, no
//     regions: nothing to replace, nothing to validate);
//   - region-allocator: AddSled with a new serial (a sled with no disks,
//     which no allocation can pick);
//   - upstairs-notifier: DownstairsStopped for a new Upstairs id (an
//     append-only record of an Upstairs nobody runs);
//   - orchestrator: LifecycleService/CreateVolume without waiting, which
//     needs a leader with its saga log writable and answers once the
//     saga is durably created; the saga then creates a 1 GiB disk, hence
//     the probes' spacing.
func writeProbes(r *rack.Rack) []probe {
	return []probe{
		{stack.Volume, "VolumeService/CreateVolume", func(ctx context.Context) (func(*testing.T), error) {
			id := uuid.NewString()
			_, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: id,
				Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{
					Volume: &commonv1.VcrVolume{Id: id, BlockSize: 512},
				}}})
			return func(t *testing.T) {
				if _, err := r.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: id}); err != nil {
					t.Errorf("volume %s, acknowledged during the failover: %v", id, err)
				}
			}, err
		}},
		{stack.Allocator, "RegionAllocatorService/AddSled", func(ctx context.Context) (func(*testing.T), error) {
			serial := "failover-probe-" + uuid.NewString()[:8]
			resp, err := r.Allocator.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: serial})
			if err != nil {
				return nil, err
			}
			// Adding it again is idempotent on the serial: the same id
			// unless the first was lost.
			return func(t *testing.T) {
				again, err := r.Allocator.AddSled(context.Background(), &allocatorv1.AddSledRequest{Serial: serial})
				if err != nil || again.Sled.SledId != resp.Sled.SledId {
					t.Errorf("sled %s (%s), acknowledged during the failover: now %v, %v", serial, resp.Sled.SledId, again.GetSled().GetSledId(), err)
				}
			}, nil
		}},
		{stack.Notifier, "UpstairsNotifierService/DownstairsStopped", func(ctx context.Context) (func(*testing.T), error) {
			_, err := r.Notifier.DownstairsStopped(ctx, &notifierv1.DownstairsStoppedRequest{
				UpstairsId: uuid.NewString(), DownstairsId: uuid.NewString(), Time: timestamppb.Now(),
				Reason: notifierv1.StoppedReason_STOPPED_REASON_FINISHED,
			})
			// No RPC lists these records: nothing to check later.
			return nil, err
		}},
		{stack.Orchestrator, "LifecycleService/CreateVolume", func(ctx context.Context) (func(*testing.T), error) {
			resp, err := r.Lifecycle.CreateVolume(ctx, &orchestratorv1.CreateVolumeRequest{SizeBytes: rack.GiB})
			if err != nil {
				return nil, err
			}
			return func(t *testing.T) {
				got, err := r.Admin.GetSaga(context.Background(), &orchestratorv1.GetSagaRequest{SagaId: resp.Saga.SagaId})
				if err != nil || got.Saga.Outcome != "succeeded" {
					t.Errorf("saga %s (volume %s), acknowledged during the failover: %v %v", resp.Saga.SagaId, resp.VolumeId, got.GetSaga().GetOutcome(), err)
				}
			}, nil
		}},
	}
}

// call is one probe call.
type call struct {
	start, end time.Time
	err        error
}

type probeLog struct {
	calls  []call
	checks []func(*testing.T)
}

// pollWrites calls a probe from the kill on until probeStreak calls in a
// row, each begun once the formation was healthy again (a primary with
// its synchronous standby), succeeded (or ctx ends).
func pollWrites(ctx context.Context, p probe, settled func() time.Time) *probeLog {
	l := &probeLog{}
	streak := 0
	for ctx.Err() == nil {
		c, cancel := context.WithTimeout(ctx, probeTimeout)
		start := time.Now()
		check, err := p.write(c)
		cancel()
		l.calls = append(l.calls, call{start: start, end: time.Now(), err: err})
		pause := probeRetry
		if err != nil {
			streak = 0
		} else {
			l.checks = append(l.checks, check)
			pause = probeSpacing
			if at := settled(); !at.IsZero() && start.After(at) {
				if streak++; streak >= probeStreak {
					return l
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(pause):
		}
	}
	return l
}

// healthChange is a service's health as the poll saw it change.
type healthChange struct {
	at      time.Time
	serving bool
}

// pollHealth asks a process for its health every 100 ms, recording each
// change, until stop is closed and it is SERVING (or ctx ends).
func pollHealth(ctx context.Context, p *stack.Proc, stop <-chan struct{}) []healthChange {
	var out []healthChange
	serving := true
	for {
		st, err := p.Health(ctx)
		now := err == nil && st == healthpb.HealthCheckResponse_SERVING
		if now != serving {
			out = append(out, healthChange{at: time.Now(), serving: now})
			serving = now
		}
		select {
		case <-stop:
			if serving {
				return out
			}
		default:
		}
		select {
		case <-ctx.Done():
			return out
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// progress follows one read-only request's steps through
// ReplacementService/WatchReplacement (the orchestrator polls its database
// every 100 ms and sends a change), reconnecting when the stream breaks,
// and records when the number of steps done (past their step saga:
// complete, collecting or volume deleted) grew. Its own cost is one small
// query per 100 ms, the same in every run.
type progress struct {
	began   time.Time
	reached chan struct{} // closed once `at` steps are done
	at      int64
	stopped chan struct{}

	mu     sync.Mutex
	events []stepEvent
	done   int64
	// collected: when the number of steps ended (their stash volume
	// deleted too) grew.
	collected []stepEvent
}

type stepEvent struct {
	at   time.Time
	done int64
}

// watchProgress starts following the request that replaces the target
// (once the detector has created it); reached closes at `at` steps done
// (never when at is 0).
func watchProgress(t *testing.T, r *rack.Rack, targetID string, began time.Time, at int64) *progress {
	p := &progress{began: began, reached: make(chan struct{}), at: at, stopped: make(chan struct{})}
	go func() {
		defer close(p.stopped)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
		defer cancel()
		id, err := requestFor(ctx, r, targetID)
		if err != nil {
			t.Errorf("the request replacing %s: %v", targetID, err)
			return
		}
		for ctx.Err() == nil {
			if p.follow(ctx, r, id) {
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		t.Errorf("watching request %s: %v", id, ctx.Err())
	}()
	return p
}

// follow reads one stream until it breaks (false) or the request is
// terminal (true).
func (p *progress) follow(ctx context.Context, r *rack.Rack, id string) bool {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := r.Replacement.WatchReplacement(ctx, &orchestratorv1.WatchReplacementRequest{ReplacementId: id})
	if err != nil {
		return false
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return false
		}
		s := msg.GetSteps()
		p.observe(time.Now(), s.GetComplete()+s.GetCollecting()+s.GetVolumeDeleted(), s.GetVolumeDeleted())
		if msg.Done {
			return true
		}
	}
}

func (p *progress) observe(at time.Time, done, collected int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.collected); collected > 0 && (n == 0 || collected > p.collected[n-1].done) {
		p.collected = append(p.collected, stepEvent{at: at, done: collected})
	}
	if done <= p.done {
		return
	}
	if p.at > 0 && p.done < p.at && done >= p.at {
		close(p.reached)
	}
	p.done = done
	p.events = append(p.events, stepEvent{at: at, done: done})
}

func (p *progress) count() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.done
}

// wait returns once the watch has ended (its request terminal).
func (p *progress) wait() { <-p.stopped }

// firstAndLongest: the time from the expunge to the first step done, and
// the longest gap between steps done after it.
func (p *progress) firstAndLongest() (first, longest float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, e := range p.events {
		if i == 0 {
			first = e.at.Sub(p.began).Seconds()
			continue
		}
		longest = max(longest, e.at.Sub(p.events[i-1].at).Seconds())
	}
	return first, longest
}

// doneAt is how many steps were seen done at a time, collectedAt how many
// ended.
func (p *progress) doneAt(at time.Time) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return countAt(p.events, at)
}

func (p *progress) collectedAt(at time.Time) int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return countAt(p.collected, at)
}

func countAt(events []stepEvent, at time.Time) int64 {
	var n int64
	for _, e := range events {
		if e.at.After(at) {
			break
		}
		n = e.done
	}
	return n
}

// lastDone is when the last step was seen done (the expunge if none).
func (p *progress) lastDone() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.events) == 0 {
		return p.began
	}
	return p.events[len(p.events)-1].at
}

// seconds converts a figure in seconds back to a duration.
func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// firstAfter is the first time steps were seen done after at (zero if
// none), and how many were done before it.
func (p *progress) firstAfter(at time.Time) (time.Time, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var before int64
	for _, e := range p.events {
		if e.at.After(at) {
			return e.at, before
		}
		before = e.done
	}
	return time.Time{}, before
}

// gapAround is the gap between steps done that contains at: the last step
// done at or before it (the expunge if none) and the first after it (at,
// if none came).
func (p *progress) gapAround(at time.Time) (from, to time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	from, to = p.began, at
	i, _ := slices.BinarySearchFunc(p.events, at, func(e stepEvent, at time.Time) int { return e.at.Compare(at) })
	// events[i] is the first at or after `at`.
	for i < len(p.events) && !p.events[i].at.After(at) {
		i++
	}
	if i > 0 {
		from = p.events[i-1].at
	}
	if i < len(p.events) {
		to = p.events[i].at
	}
	return from, to
}

func fmtSeconds(s *float64) string {
	if s == nil {
		return "-"
	}
	return fmt.Sprintf("%+.2f", *s)
}

// printFailover prints the tables (make bench tees them to
// .run/bench/failover.txt).
func printFailover(rep failoverReport) {
	fmt.Printf("\nfailover bench: %d clones, %s, fsync on (the standby's too)\n", rep.Clones, rep.Transport)
	fmt.Printf("%-10s %-12s %-10s %-12s %-14s %-14s %-12s %s\n", "database", "complete_s", "steps/s", "pgbench_tps", "steps/s÷tps", "write_tx/vol", "cpu_ms/vol", "longest_gap_s")
	for _, k := range []*kindFigures{rep.Single, rep.HA} {
		if k == nil {
			continue
		}
		fmt.Printf("%-10s %-12.2f %-10.0f %-12.0f %-14.4f %-14.1f %-12.2f %.2f\n", k.Database, k.Seconds, k.StepsPerSecond, k.PgbenchTPS, k.StepsPerPgbench,
			k.WriteTxPerVolume, k.CPUMsPerVolume, k.LongestGap)
	}
	if q := rep.HAOverSingle; q != nil {
		fmt.Printf("%-10s %-12.2f %-10.2f %-12.2f %-14.2f %.2f\n", "ha/single", q["seconds_to_complete"], q["steps_per_second"], q["pgbench_single_row_insert_tps"],
			q["steps_per_second_per_pgbench_tps"], q["write_transactions_per_volume"])
	}
	fo := rep.Failover
	if fo == nil {
		return
	}
	fmt.Printf("\nfailover: kill -9 of %s's postmaster at %d of %d steps done; seconds from the kill\n", fo.KilledNode, fo.StepsAtKill, rep.Clones)
	fmt.Printf("  promotion of %s (takes writes, wait_primary)  %s\n", fo.PromotedNode, fmtSeconds(fo.Promotion))
	fmt.Printf("  first service write back                       %s\n", fmtSeconds(fo.WritesBack))
	fmt.Printf("  primary again, its standby back               %s\n", fmtSeconds(fo.PrimaryWithStandby))
	fmt.Printf("  formation healthy (WaitHealthy)                %s\n", fmtSeconds(fo.Healthy))
	fmt.Printf("  fan-out complete                               %+.2f\n", fo.FanOutEnded)
	fmt.Printf("  stall: no step done from %+.2f until steps resumed at %s: %s (%d seen done before writes were back; gap at the kill %.2f, to %+.2f)\n",
		fo.GapFrom, fmtSeconds(fo.Resumed), fmtSeconds(fo.Stall), fo.SeenBeforeWritesBack, fo.Gap, fo.GapTo)
	fmt.Printf("  longest gap between steps: %.2f with the failover; without: %.2f (ha), %.2f (single)\n", fo.LongestGap, gapOf(rep.HA), gapOf(rep.Single))
	fmt.Printf("  fan-out %.2fs (%.0f steps/s) with the failover, %.2fs without (each on a fresh formation): ratio %.2f\n", fo.Seconds, fo.StepsPerSecond, fo.WithoutSeconds, fo.Ratio)
	split := "every step done before the formation was healthy again"
	if fo.WhileRejoining > 0 || fo.AfterHealthy > 0 {
		split = fmt.Sprintf("%.0f while the old primary rejoined, %.0f after", fo.WhileRejoining, fo.AfterHealthy)
	}
	fmt.Printf("  after steps resumed: %.0f steps/s (%s); %.2f ms CPU per volume, cores %.0f%% busy over the fan-out\n",
		fo.AfterResumed, split, fo.CPUMsPerVolume, fo.CPUBusy*100)
	fmt.Printf("  last step done → fan-out complete: %.2f with the failover; without: %.2f (ha), %.2f (single)\n", fo.Tail, tailOf(rep.HA), tailOf(rep.Single))
	fmt.Printf("  steps done at each second from the kill:  %v\n", fo.DoneBySecond)
	fmt.Printf("  steps ended (stash volume deleted too):   %v\n", fo.CollectedBySecond)
	fmt.Printf("  leader epoch %d → %d; %d acknowledged probe writes checked after\n", fo.LeaderEpochBefore, fo.LeaderEpochAfter, fo.AcknowledgedProbes)
	fmt.Printf("\n%-26s %-11s %-12s %-12s %-9s %-8s %-12s %-12s %s\n", "service (s from the kill)", "first_fail", "first_write", "writes_back", "unavail", "outages",
		"health_down", "health_back", "down_periods")
	for _, s := range fo.Services {
		fmt.Printf("%-26s %-11s %-12s %-12s %-9.2f %-8d %-12s %-12s %d\n", s.Service, fmtSeconds(s.FirstFailure), fmtSeconds(s.FirstBack), fmtSeconds(s.Back),
			s.Unavailable, s.Outages, fmtSeconds(s.HealthDown), fmtSeconds(s.HealthBack), s.HealthDownPeriods)
	}
	fmt.Printf("\nwrites from the kill (each change of outcome):\n")
	for _, s := range fo.Services {
		fmt.Printf("  %s (%s)\n", s.Service, s.Write)
		for _, e := range s.Timeline {
			fmt.Printf("    %s\n", e)
		}
	}
	fmt.Printf("\nformation states from the kill:\n")
	for _, s := range fo.FormationStates {
		fmt.Printf("  %s\n", s)
	}
}

func tailOf(k *kindFigures) float64 {
	if k == nil {
		return 0
	}
	return k.Tail
}

func gapOf(k *kindFigures) float64 {
	if k == nil {
		return 0
	}
	return k.LongestGap
}
