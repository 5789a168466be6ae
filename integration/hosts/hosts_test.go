// Package hosts runs replacements on a rack's network instead of one
// loopback: every process on a host of its own, every link through a fault
// proxy (testsupport/stack's hosts mode), and network faults on those
// links in the middle of a fan-out.
//
// Each test builds the same replacement: a disk, its snapshot and clones of
// it, some of the clones running on sim-upstairs, and the snapshot's disk
// expunged. Once the fan-out is under way a fault goes on, and every test
// ends with the same checks: every request Complete; invariants, system
// validation and the data-loss probe clean; every Upstairs serving what its
// volume names; no saga stuck or running; draining (detach and delete
// everything) leaves nothing; and the fence epochs in the processes' logs
// show one leader at a time.
package hosts

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/fencelog"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// Sizes: the fan-out every fault test runs during, and how many of its
// clones run on an Upstairs. STORAGECP_HOSTS_CLONES overrides the first.
const (
	defaultClones = 200
	runningClones = 12
)

func clones(t *testing.T) int {
	if v := os.Getenv("STORAGECP_HOSTS_CLONES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("STORAGECP_HOSTS_CLONES=%q: want a positive number", v)
		}
		return n
	}
	return defaultClones
}

// soak skips a test outside `make soak`: `make test` runs a sample
// (TestLeaderCutOffFromDatabase, TestLostAnswers).
func soak(t *testing.T) {
	if os.Getenv("STORAGECP_SOAK") == "" {
		t.Skip("a soak test: make soak (STORAGECP_SOAK=1)")
	}
}

// soakRounds is how many times `make soak` runs each test
// (STORAGECP_HOSTS_ROUNDS overrides it).
const soakRounds = 3

// rounds runs a test once, or soakRounds times under `make soak`, each on
// a fresh rack.
func rounds(t *testing.T, test func(*testing.T)) {
	n := 1
	if os.Getenv("STORAGECP_SOAK") != "" {
		n = soakRounds
	}
	if v := os.Getenv("STORAGECP_HOSTS_ROUNDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			t.Fatalf("STORAGECP_HOSTS_ROUNDS=%q: want a positive number", v)
		}
	}
	if n == 1 {
		test(t)
		return
	}
	for i := range n {
		t.Run(fmt.Sprintf("round-%d", i), test)
	}
}

// scene is one fan-out on a hosts-mode rack.
type scene struct {
	r       *rack.Rack
	volumes []string
	atts    []*notifierv1.Attachment
	clones  int
}

// hostsConfig is every test's deployment: two orchestrators (a leader and
// a standby), two sim-upstairs.
// STORAGECP_HOSTS_HA=1 puts the database on a replicated formation (each
// data node a host of its own, every link to each through a proxy).
func hostsConfig() stack.Config {
	return stack.Config{Hosts: true, Orchestrators: 2, SimUpstairs: 2, HA: os.Getenv("STORAGECP_HOSTS_HA") == "1"}
}

// newScene starts the rack and builds the fan-out's volumes: a disk, its
// snapshot, n clones of it, and runningClones of those constructed on the
// sim-upstairs in turn.
func newScene(t *testing.T, cfg stack.Config, n int) *scene {
	t.Helper()
	r := rack.Start(t, 4, 2, cfg)
	sc := &scene{r: r, clones: n}
	t.Logf("%d processes on hosts of their own, %d links through fault proxies", len(r.Stack.Procs()), len(r.Stack.Links()))
	sc.followLeader(t, time.Minute)
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	sc.volumes = []string{disk, snap}
	sc.volumes = append(sc.volumes, r.CloneFanOut(t, snap, n)...)
	for i := range min(runningClones, n) {
		sc.atts = append(sc.atts, r.Construct(t, sc.volumes[2+i], i%len(r.Sims)))
	}
	return sc
}

// leader is the orchestrator process that leads now ("" if none does).
func (sc *scene) leader(t *testing.T) string {
	t.Helper()
	for _, p := range sc.r.Stack.Procs() {
		if k, _ := stack.KindOf(p.Name); k != stack.Orchestrator {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		l, err := orchestratorv1.NewAdminServiceClient(harness.Dial(t, sc.r.Stack, p.Addr)).GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
		cancel()
		if err == nil && l.IsLeader {
			return p.Name
		}
	}
	return ""
}

// followLeader waits for a leader and points the rack's orchestrator
// clients at it; it returns the leader's process name.
func (sc *scene) followLeader(t *testing.T, timeout time.Duration) string {
	t.Helper()
	var lead string
	harness.Eventually(t, timeout, "an orchestrator leads", func() error {
		if lead = sc.leader(t); lead == "" {
			return fmt.Errorf("no orchestrator leads")
		}
		return nil
	})
	sc.r.UseOrchestrator(t, lead)
	return lead
}

// takeOver waits for an orchestrator other than old to lead, points the
// rack's clients at it, and says how long it took.
func (sc *scene) takeOver(t *testing.T, old string, timeout time.Duration) (string, time.Duration) {
	t.Helper()
	began := time.Now()
	var lead string
	harness.Eventually(t, timeout, "the standby leads", func() error {
		if lead = sc.leader(t); lead == "" || lead == old {
			return fmt.Errorf("leader %q", lead)
		}
		return nil
	})
	sc.r.UseOrchestrator(t, lead)
	return lead, time.Since(began).Round(time.Millisecond)
}

// expunge expunges the snapshot's disk and waits until the fan-out is
// under way: some steps exist, most not done.
func (sc *scene) expunge(t *testing.T) time.Time {
	t.Helper()
	r := sc.r
	old := r.Targets(t, sc.volumes[1], commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	began := time.Now()
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	harness.Eventually(t, time.Minute, "the fan-out under way", func() error {
		if n := r.StepCount(t); n < sc.clones/10 {
			return fmt.Errorf("%d steps so far", n)
		}
		return nil
	})
	return began
}

// finish waits for every request, then runs every check and drains. It
// returns the time from the expunge to every request terminal.
func (sc *scene) finish(t *testing.T, began time.Time) time.Duration {
	t.Helper()
	r := sc.r
	sc.followLeader(t, 2*time.Minute)
	reqs := r.WaitRequests(t, 5*time.Minute)
	took := time.Since(began)
	for _, q := range reqs {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("%v request %s ended %v%v", q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
		}
	}
	t.Logf("%d clones (%d on sim-upstairs): every request terminal %s after the expunge", sc.clones, len(sc.atts), took.Round(time.Millisecond))
	if err := r.Stack.WaitHealthy(context.Background(), time.Minute); err != nil {
		t.Errorf("after the fault: %v", err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
	r.NoStuckSagas(t)
	r.Drain(t, sc.atts, sc.volumes)
	r.ExpectEmpty(t)
	sc.oneLeaderAtATime(t)
	return took
}

// oneLeaderAtATime reads the fence epochs in every process's log: each
// epoch led by one orchestrator, terms of one process never overlapping,
// every service's fence only ever rising, and every refusal one of an
// older epoch.
func (sc *scene) oneLeaderAtATime(t *testing.T) fencelog.Report {
	t.Helper()
	rep, err := fencelog.Check(sc.r.Stack.LogDir)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Errorf("the logs show more than one leader acting:\n%s", rep)
	}
	t.Logf("fence epochs in the logs: leaders %v", rep.Led())
	for _, svc := range rep.Services {
		var raised []int64
		for _, r := range svc.Raises {
			raised = append(raised, r.To)
		}
		if len(raised) > 0 || len(svc.Refusals) > 0 {
			t.Logf("  %s: fence raised to %v, %d stale calls refused", svc.Name, raised, len(svc.Refusals))
		}
	}
	return rep
}

// TestNoFault is the baseline: the same fan-out on the same network with
// no fault, for the time each fault adds.
func TestNoFault(t *testing.T) {
	soak(t)
	rounds(t, noFault)
}

func noFault(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	sc.finish(t, sc.expunge(t))
}

// TestLeaderCutOffFromDatabase: the leader loses its database link (both
// ways, connections held open and silent, as a partition does) in the
// middle of the fan-out. Its lease lapses; the standby takes the lease,
// raises every service's fence, adopts the leader's sagas and finishes
// them. When the link heals, the old leader finds it has lost the lease
// and stands down, and nothing it sends lands anywhere.
func TestLeaderCutOffFromDatabase(t *testing.T) {
	rounds(t, leaderCutOffFromDatabase)
}

func leaderCutOffFromDatabase(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	r := sc.r
	old := sc.leader(t)
	began := sc.expunge(t)
	before, err := r.Admin.GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// What the leader sends the services from now on arrives 8 s late:
	// the calls of its last moments as leader land after its successor
	// has raised their fences, as a leader's writes delayed in a network
	// would. A second of its calls goes out that way before the cut.
	var slowed []*stack.Link
	for _, srv := range []string{stack.Volume, stack.Allocator, stack.Notifier} {
		l := r.Stack.Link(old, srv)
		if err := l.Add(stack.Toxic{Name: "late", Type: "latency", Stream: stack.Upstream, Attributes: map[string]any{"latency": 8000}}); err != nil {
			t.Fatal(err)
		}
		slowed = append(slowed, l)
	}
	time.Sleep(time.Second)
	link := r.Stack.Link(old, stack.Postgres)
	if err := link.Partition(); err != nil {
		t.Fatal(err)
	}
	lead, took := sc.takeOver(t, old, time.Minute)
	t.Logf("%s cut off from the database; %s leads %s later", old, lead, took)
	after, err := r.Admin.GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if after.Epoch <= before.Epoch {
		t.Errorf("epoch %d before the cut, %d after: want higher", before.Epoch, after.Epoch)
	}
	// Heal while the standby is still replacing: the old leader comes
	// back to a database whose lease another holds.
	harness.Eventually(t, time.Minute, "the new leader finishing some steps", func() error {
		if n := len(r.SagasWithOutcome(t, "succeeded")); n == 0 {
			return fmt.Errorf("no saga succeeded yet")
		}
		return nil
	})
	link.Clear()
	// Let the late writes arrive before the links run fast again.
	time.Sleep(10 * time.Second)
	for _, l := range slowed {
		l.Clear()
	}
	oldAdmin := orchestratorv1.NewAdminServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(old)))
	harness.Eventually(t, time.Minute, "the old leader standing by", func() error {
		l, err := oldAdmin.GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
		if err != nil {
			return err
		}
		if l.IsLeader || l.Epoch < after.Epoch {
			return fmt.Errorf("old leader says leader=%v epoch %d", l.IsLeader, l.Epoch)
		}
		return nil
	})
	// Whether the old leader's delayed calls are handled before the
	// cancellations that follow them (its term ended meanwhile) is a
	// race; a write at its epoch reaching each service now is not: every
	// one must be refused.
	for _, srv := range []string{stack.Volume, stack.Allocator, stack.Notifier} {
		fence := commonv1.NewFenceServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(srv)))
		_, err := fence.AdvanceEpoch(context.Background(), &commonv1.AdvanceEpochRequest{Epoch: before.Epoch})
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: a write at the old leader's epoch %d: %v, want FailedPrecondition", srv, before.Epoch, err)
		}
	}
	sc.finish(t, began)
	// None of the old leader's writes landed after its successor's
	// first: no service raised its fence to the old epoch after the new
	// one (oneLeaderAtATime), and every refusal names the old one.
	rep, err := fencelog.Check(r.Stack.LogDir)
	if err != nil {
		t.Fatal(err)
	}
	late := 0
	refusedAt := map[string]bool{}
	for _, svc := range rep.Services {
		for _, f := range svc.Refusals {
			if f.Epoch != before.Epoch {
				t.Errorf("%s refused epoch %d (newest %d): want only the old leader's %d", svc.Name, f.Epoch, f.Newest, before.Epoch)
			}
			refusedAt[svc.Name] = true
			if f.Method != "/storage.common.v1.FenceService/AdvanceEpoch" {
				late++
			}
		}
	}
	t.Logf("the old leader's epoch %d: %d of its late writes refused, and a write at it refused by each service", before.Epoch, late)
	for _, srv := range []string{stack.Volume, stack.Allocator, stack.Notifier} {
		if !refusedAt[srv] {
			t.Errorf("%s's log shows no refusal of epoch %d", srv, before.Epoch)
		}
	}
}

// TestLeaderCutOffFromVolumeService: the leader still reaches its
// database but not the volume-service, both ways, for longer than a call's
// deadline. Its calls time out; its saga actions retry or unwind and its
// undos retry; nothing is left stuck. When the link heals, the
// replacement completes.
func TestLeaderCutOffFromVolumeService(t *testing.T) {
	soak(t)
	rounds(t, leaderCutOffFromVolumeService)
}

func leaderCutOffFromVolumeService(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	r := sc.r
	lead := sc.leader(t)
	began := sc.expunge(t)
	link := r.Stack.Link(lead, stack.Volume)
	if err := link.Partition(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(cutFor)
	link.Clear()
	t.Logf("%s cut off from the volume-service for %s", lead, cutFor)
	sc.finish(t, began)
}

// cutFor is how long a partition lasts: longer than a call's default
// deadline (platform/grpcclient, 30 s), so that calls in flight time out.
const cutFor = 35 * time.Second

// TestLostAnswers: answers from the volume-service, the region-allocator
// and the upstairs-notifier to the leader are lost on the way back, over
// and over, while the requests reach the service and are applied: the
// proxy drops the return path for a moment and then closes the connection.
// Every saga action retried after a lost answer must find its work done:
// no second swap, no second allocation, no reference lost (the invariants,
// the system validation and draining to nothing would show each).
func TestLostAnswers(t *testing.T) {
	rounds(t, lostAnswers)
}

func lostAnswers(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	r := sc.r
	lead := sc.leader(t)
	var links []*stack.Link
	servers := []string{stack.Volume, stack.Allocator, stack.Notifier}
	for _, srv := range servers {
		links = append(links, r.Stack.Link(lead, srv))
	}
	clientBefore := calls(t, r.Stack, lead, false)
	serverBefore := map[string]map[string]float64{}
	for _, srv := range servers {
		maps.Copy(serverBefore, calls(t, r.Stack, srv, true))
	}
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		windows := 0
		defer func() { done <- windows }()
		for {
			for _, l := range links {
				if err := l.Add(stack.Toxic{Name: "lose-answers", Type: "timeout", Stream: stack.Downstream,
					Attributes: map[string]any{"timeout": 150}}); err != nil {
					t.Error(err)
					return
				}
			}
			windows++
			time.Sleep(300 * time.Millisecond)
			for _, l := range links {
				l.Clear()
			}
			select {
			case <-stop:
				return
			case <-time.After(700 * time.Millisecond):
			}
		}
	}()
	// From the expunge on, through the requests' start (allocations) to
	// every step past its swap.
	began := sc.expunge(t)
	harness.Eventually(t, time.Minute, "the fan-out's steps all past their swap", func() error {
		if done, n := len(r.DoneSteps(t)), r.StepCount(t); done < n || n < sc.clones {
			return fmt.Errorf("%d of %d steps done", done, n)
		}
		return nil
	})
	close(stop)
	windows := <-done
	// An answer lost after the server applied the call shows as a call
	// the server answered OK that the leader never saw answered.
	// Only methods the leader calls, and of those the mutating ones
	// only the orchestrators call: their servers' counts are the
	// leader's calls.
	clientAfter := calls(t, r.Stack, lead, false)
	lost := map[string]float64{}
	failed := map[string]float64{}
	for _, srv := range servers {
		for m, byCode := range calls(t, r.Stack, srv, true) {
			if _, called := clientAfter[m]; !called || readOnly(m) {
				continue
			}
			if d := (byCode["OK"] - serverBefore[m]["OK"]) - (clientAfter[m]["OK"] - clientBefore[m]["OK"]); d > 0 {
				lost[m] = d
			}
		}
	}
	for m, byCode := range clientAfter {
		for code, n := range byCode {
			if code != "OK" {
				failed[m+" "+code] = n - clientBefore[m][code]
			}
		}
	}
	t.Logf("attempts the leader saw fail, by method and code: %v", failed)
	t.Logf("%d windows of lost answers on %d links; answers lost after the server applied the call, by method: %v", windows, len(links), lost)
	t.Logf("saga nodes the leader retried (an error got past gRPC's own retries): %v", retriedNodes(t, r.Stack, lead))
	if len(lost) == 0 {
		t.Errorf("no answer was lost")
	}
	sc.finish(t, began)
}

// TestNotifierCutOffFromUpstairs: the notifier loses its link to one
// sim-upstairs, both ways, while it notifies the Upstairs of the fan-out's
// replacements. The steps of volumes on that Upstairs retry; none is
// activated again; after the link heals, every request completes and
// every Upstairs runs what its volume names.
func TestNotifierCutOffFromUpstairs(t *testing.T) {
	soak(t)
	rounds(t, notifierCutOffFromUpstairs)
}

func notifierCutOffFromUpstairs(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	r := sc.r
	sim := fmt.Sprintf("%s-0", stack.SimUpstairs)
	link := r.Stack.Link(stack.Notifier, sim)
	if err := link.Partition(); err != nil {
		t.Fatal(err)
	}
	began := sc.expunge(t)
	time.Sleep(cutFor)
	link.Clear()
	t.Logf("the notifier cut off from %s for %s", sim, cutFor)
	sc.activatedOnce(t)
	sc.finish(t, began)
}

// activatedOnce checks that every running clone was activated exactly
// once on its Upstairs: notifications retried across a partition replace
// a volume's VCR, they never activate it again.
func (sc *scene) activatedOnce(t *testing.T) {
	t.Helper()
	sims := map[string]int{}
	for i, e := range sc.r.Stack.UpstairsEndpoints() {
		sims[e] = i
	}
	for _, a := range sc.atts {
		st, err := sc.r.Sims[sims[a.Endpoint]].GetVolumeStatus(context.Background(), &upstairsv1.GetVolumeStatusRequest{VolumeId: a.VolumeId})
		if err != nil {
			t.Errorf("volume %s on %s: %v", a.VolumeId, a.Endpoint, err)
			continue
		}
		if st.Status.Activations != 1 {
			t.Errorf("volume %s was activated %d times on %s", a.VolumeId, st.Status.Activations, a.Endpoint)
		}
	}
}

// TestLatency is the canonical case (ten clones running on sim-upstairs,
// the disk of one of the snapshot's region snapshots expunged) on a quiet
// network, with 200 ms ± 50 ms added to every round trip of every link, and
// with 100 ms ± 20 ms added to the database links alone.
func TestLatency(t *testing.T) {
	soak(t)
	rounds(t, latency)
}

func latency(t *testing.T) {
	for _, c := range []struct {
		name            string
		latency, jitter int
		only            string // a server: only links to it
	}{
		{"quiet", 0, 0, ""},
		{"every-link-200ms", 200, 50, ""},
		{"database-100ms", 100, 20, stack.Postgres},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := rack.Start(t, 4, 2, stack.Config{Hosts: true, SimUpstairs: 2})
			disk := r.CreateDisk(t)
			snap := r.Snapshot(t, disk)
			var atts []*notifierv1.Attachment
			volumes := []string{disk, snap}
			for i := range 10 {
				v := r.Clone(t, snap)
				volumes = append(volumes, v)
				atts = append(atts, r.Construct(t, v, i%2))
			}
			if c.latency > 0 {
				for _, l := range r.Stack.Links() {
					if c.only != "" && l.Server != c.only {
						continue
					}
					if err := l.Add(stack.Toxic{Name: "latency", Type: "latency", Stream: stack.Downstream,
						Attributes: map[string]any{"latency": c.latency, "jitter": c.jitter}}); err != nil {
						t.Fatal(err)
					}
				}
			}
			old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
			began := time.Now()
			r.Expunge(t, r.DiskOf(t, old.DatasetId))
			reqs := r.WaitRequests(t, 10*time.Minute)
			t.Logf("canonical case, %s: %d requests terminal %s after the expunge", c.name, len(reqs), time.Since(began).Round(time.Millisecond))
			for _, l := range r.Stack.Links() {
				l.Clear()
			}
			sc := &scene{r: r, volumes: volumes, atts: atts, clones: 10}
			sc.finish(t, began)
		})
	}
}

// TestLeaderHearsNoAnswersFromDatabase is an asymmetric partition: what
// the leader sends its database arrives, and nothing comes back. Its lease
// renewals may land while it hears none of them, so it must stand down by
// its own clock; the standby takes over once the lease lapses in the
// database, and the fence epochs show one leader at a time throughout.
func TestLeaderHearsNoAnswersFromDatabase(t *testing.T) {
	soak(t)
	rounds(t, leaderHearsNoAnswersFromDatabase)
}

func leaderHearsNoAnswersFromDatabase(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	r := sc.r
	old := sc.leader(t)
	began := sc.expunge(t)
	link := r.Stack.Link(old, stack.Postgres)
	if err := link.Blackhole(stack.Downstream); err != nil {
		t.Fatal(err)
	}
	lead, took := sc.takeOver(t, old, 2*time.Minute)
	t.Logf("%s hears nothing from the database; %s leads %s later", old, lead, took)
	time.Sleep(5 * time.Second)
	link.Clear()
	sc.finish(t, began)
}

// TestStandbyHearsNoAnswersWhileLeaderCutOff is the other way round: the
// leader is cut off from the database (both ways), and the standby's
// requests reach the database while its answers are lost. The standby's
// attempt to take the lapsed lease may commit without it knowing; until
// its link heals nobody acts, and then exactly one orchestrator leads.
func TestStandbyHearsNoAnswersWhileLeaderCutOff(t *testing.T) {
	soak(t)
	rounds(t, standbyHearsNoAnswersWhileLeaderCutOff)
}

func standbyHearsNoAnswersWhileLeaderCutOff(t *testing.T) {
	sc := newScene(t, hostsConfig(), clones(t))
	r := sc.r
	old := sc.leader(t)
	standby := stack.Orchestrator
	if old == standby {
		standby = stack.Orchestrator + "-1"
	}
	began := sc.expunge(t)
	deaf := r.Stack.Link(standby, stack.Postgres)
	if err := deaf.Blackhole(stack.Downstream); err != nil {
		t.Fatal(err)
	}
	cut := r.Stack.Link(old, stack.Postgres)
	if err := cut.Partition(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Second)
	if l := sc.leader(t); l != "" {
		t.Errorf("%s leads while neither orchestrator hears the database", l)
	}
	deaf.Clear()
	healed := time.Now()
	lead := sc.followLeader(t, 2*time.Minute)
	t.Logf("the standby's link healed; %s leads %s later", lead, time.Since(healed).Round(time.Millisecond))
	cut.Clear()
	sc.finish(t, began)
}
