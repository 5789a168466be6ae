// Package ha runs storagecp on a replicated PostgreSQL (pg_auto_failover)
// and takes the primary away in the middle of a replacement.
package ha

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// The primary's postmaster is killed (kill -9) in the middle of a 200-clone
// fan-out. pg_auto_failover promotes the synchronous standby; the services
// reach it through their multi-host DSN with no restart, and the
// replacement completes with nothing lost.
func TestPrimaryKilledMidFanOut(t *testing.T) {
	midFanOut(t, 200, func(t *testing.T, r *rack.Rack) {
		ctx := context.Background()
		f := r.Stack.Formation
		primary, err := f.Primary(ctx)
		if err != nil || primary == nil {
			t.Fatalf("primary: %v %v", primary, err)
		}
		watch := watchHealth(t, r)
		killed := time.Now()
		if err := syscall.Kill(primary.Postmaster(), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t.Logf("killed %s's postmaster", primary.Name)
		// The killed node's keeper may restart its PostgreSQL at once; the
		// monitor promotes the standby anyway. Wait for that, so that the
		// checks that follow do not meet a failover still to come.
		now, err := f.WaitFailover(ctx, primary.Name, 90*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("primary %s → %s %s after the kill", primary.Name, now.Name, time.Since(killed).Round(time.Millisecond))
		// While no primary answered, health said so; it says SERVING
		// again after (midFanOut checks every process).
		harness.Eventually(t, 60*time.Second, "every service SERVING again", func() error { return watch.allServing() })
		seen := watch.stop()
		if len(seen) == 0 {
			t.Error("no service reported NOT_SERVING while the primary was gone")
		}
		t.Logf("NOT_SERVING seen during the failover: %v", seen)
	})
}

// healthWatch polls every service's gRPC health every 100 ms and
// remembers who said NOT_SERVING.
type healthWatch struct {
	mu      sync.Mutex
	seen    map[string]bool
	current map[string]healthpb.HealthCheckResponse_ServingStatus
	done    chan struct{}
	wg      sync.WaitGroup
}

func watchHealth(t *testing.T, r *rack.Rack) *healthWatch {
	w := &healthWatch{seen: map[string]bool{}, current: map[string]healthpb.HealthCheckResponse_ServingStatus{}, done: make(chan struct{})}
	for _, name := range []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator} {
		client := healthpb.NewHealthClient(harness.Dial(t, r.Stack, r.Stack.Addr(name)))
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			for {
				ctx, cancel := context.WithTimeout(context.Background(), time.Second)
				resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
				cancel()
				if err == nil {
					w.mu.Lock()
					w.current[name] = resp.Status
					if resp.Status == healthpb.HealthCheckResponse_NOT_SERVING {
						w.seen[name] = true
					}
					w.mu.Unlock()
				}
				select {
				case <-w.done:
					return
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	t.Cleanup(func() { w.stop() })
	return w
}

func (w *healthWatch) allServing() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	for name, st := range w.current {
		if st != healthpb.HealthCheckResponse_SERVING {
			return fmt.Errorf("%s is %v", name, st)
		}
	}
	return nil
}

// stop ends the polling and lists who was seen NOT_SERVING.
func (w *healthWatch) stop() []string {
	select {
	case <-w.done:
	default:
		close(w.done)
	}
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []string
	for name := range w.seen {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// A planned switchover (an operator's `pg_autoctl perform switchover`,
// say before patching the primary's machine) in the middle of a fan-out:
// the primary is demoted once the standby has caught up, the standby
// promoted, and the services follow as they do after a failure.
func TestSwitchoverMidFanOut(t *testing.T) {
	// Mostly waiting for the keepers' and the monitor's state changes:
	// beside another test.
	t.Parallel()
	midFanOut(t, 60, func(t *testing.T, r *rack.Rack) {
		ctx := context.Background()
		f := r.Stack.Formation
		before, err := f.Primary(ctx)
		if err != nil || before == nil {
			t.Fatalf("primary: %v %v", before, err)
		}
		began := time.Now()
		if err := f.Switchover(ctx); err != nil {
			t.Fatal(err)
		}
		// Usually seconds; a primary slow to stop waits for the monitor's
		// demote timeout (30 s), and a loaded machine adds to both.
		now, err := f.WaitFailover(ctx, before.Name, 2*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("switchover %s → %s took %s", before.Name, now.Name, time.Since(began).Round(time.Millisecond))
	})
}

// The standby's machine goes away in the middle of a fan-out and comes
// back. pg_auto_failover trades synchronous replication for availability:
// the monitor moves the primary to wait_primary, which stops waiting for a
// standby's acknowledgement, and the replacement goes on. When the standby
// returns it catches up and replication is synchronous again.
func TestStandbyLostAndBack(t *testing.T) {
	// Mostly waiting for the monitor's timeouts: beside another test.
	t.Parallel()
	midFanOut(t, 60, func(t *testing.T, r *rack.Rack) {
		ctx := context.Background()
		f := r.Stack.Formation
		primary, err := f.Primary(ctx)
		if err != nil || primary == nil {
			t.Fatalf("primary: %v %v", primary, err)
		}
		standby, err := f.Standby(ctx)
		if err != nil || standby == nil {
			t.Fatalf("standby: %v %v", standby, err)
		}
		stopped := time.Now()
		if err := f.StopNode(ctx, standby); err != nil {
			t.Fatal(err)
		}
		if err := f.WaitStates(ctx, map[string]string{primary.Name: "wait_primary"}, 90*time.Second); err != nil {
			t.Fatal(err)
		}
		t.Logf("standby %s stopped; %s is wait_primary %s later", standby.Name, primary.Name, time.Since(stopped).Round(time.Millisecond))
		// The primary goes on alone: steps keep completing.
		done := r.DoneSteps(t)
		harness.Eventually(t, 90*time.Second, "steps completing without the standby", func() error {
			more := 0
			for id := range r.DoneSteps(t) {
				if !done[id] {
					more++
				}
			}
			if more < 10 {
				return fmt.Errorf("%d steps done since the standby stopped", more)
			}
			return nil
		})
		if err := f.StartNode(standby); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
			t.Fatal(err)
		}
		t.Logf("standby %s back and synchronous %s after its restart", standby.Name, time.Since(back).Round(time.Millisecond))
		if now, err := f.Primary(ctx); err != nil || now == nil || now.Name != primary.Name {
			t.Errorf("primary after the standby's return: %v %v, want %s unchanged", now, err, primary.Name)
		}
	})
}

// The primary's link is cut in the middle of a fan-out (its network
// namespace's veth taken down): no RST, no refusal, just silence, for the
// services, the monitor and the standby alike. Connections to it hang
// until their deadlines, new ones time out, the monitor promotes the
// standby once the old primary has had time to demote itself, and the
// services find the new primary. The link comes back and the old primary
// rejoins as the standby. (platform/pgformation's TestIsolatedPrimaryCutOff
// shows a write on the cut-off side is never acknowledged.)
func TestPrimaryCutOffMidFanOut(t *testing.T) {
	// Mostly waiting for the monitor's timeouts: beside another test.
	t.Parallel()
	midFanOutOn(t, 60, stack.Config{HA: true, HAIsolated: true}, func(t *testing.T, r *rack.Rack) {
		ctx := context.Background()
		f := r.Stack.Formation
		primary, err := f.Primary(ctx)
		if err != nil || primary == nil {
			t.Fatalf("primary: %v %v", primary, err)
		}
		cut := time.Now()
		if err := f.Cut(ctx, primary); err != nil {
			t.Fatal(err)
		}
		// No split brain: a client on the old primary's side of the cut
		// gets no write acknowledged. The commit waits for a synchronous
		// standby that cannot answer (or meets a node that demoted
		// itself); the client gives up after ten seconds.
		out, answered := f.WriteFromInside(ctx, primary, stack.DatabaseOf(stack.Volume),
			"create table split_brain_probe (id int)", 10*time.Second)
		if answered && strings.Contains(out, "CREATE TABLE") {
			t.Errorf("the cut-off primary acknowledged a write: %s", out)
		}
		t.Logf("a write on the cut-off side: answered=%v %q", answered, out)
		now, err := f.WaitFailover(ctx, primary.Name, 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s cut off; %s promoted %s later", primary.Name, now.Name, time.Since(cut).Round(time.Millisecond))
		if err := f.Heal(ctx, primary); err != nil {
			t.Fatal(err)
		}
		// Healed, the old primary rejoins as the standby (midFanOut waits
		// for that) and its unacknowledged write is gone with its
		// divergent history.
		if err := f.WaitHealthy(ctx, 3*time.Minute); err != nil {
			t.Fatal(err)
		}
		var probe *string
		conn := r.Stack.DSN(stack.DatabaseOf(stack.Volume))
		if err := queryRow(ctx, conn, "select to_regclass('split_brain_probe')::text", &probe); err != nil || probe != nil {
			t.Errorf("the cut-off side's table after healing: %v %v, want none", probe, err)
		}
	})
}

// queryRow runs one query on a database and scans its row.
func queryRow(ctx context.Context, dsn, sql string, dest ...any) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}

// midFanOut makes a snapshot with the given number of clones on an HA
// stack, expunges the snapshot's disk, applies fault once the fan-out is
// under way, and then checks that nothing acknowledged was lost: every
// request completes, every saga reported succeeded before the fault still
// is, the leader's term survived or a later one took over, the checks are
// clean, and deleting everything leaves nothing behind.
func midFanOut(t *testing.T, clones int, fault func(*testing.T, *rack.Rack)) {
	midFanOutOn(t, clones, stack.Config{HA: true}, fault)
}

func midFanOutOn(t *testing.T, clones int, cfg stack.Config, fault func(*testing.T, *rack.Rack)) {
	// One saga per step, as before the batch swap: batches (256 by
	// default; even of 4) finish the whole fan-out in the moment commits
	// resume after the fault, and these tests need a fan-out still going
	// to count steps before and after it. TestAmbiguousCommits runs the
	// batch path under lost commits. A rack step budget of 4 keeps the
	// fan-out going for the fault: with 64 steps at once, a faster plan let
	// the 60 steps all finish before the fault landed.
	cfg.ExtraArgs = map[string][]string{stack.Orchestrator: {"--step-batch=0", "--budget-rack-steps=4"}}
	r := rack.Start(t, 4, 2, cfg)
	ctx := context.Background()
	f := r.Stack.Formation
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	volumes := []string{disk, snap}
	volumes = append(volumes, r.CloneFanOut(t, snap, clones)...)

	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	// The fault comes once the fan-out is under way: some steps done,
	// most not.
	harness.Eventually(t, 60*time.Second, "the fan-out under way", func() error {
		if n := r.StepCount(t); n < clones/10 {
			return fmt.Errorf("%d steps so far", n)
		}
		return nil
	})
	// What was acknowledged before the fault: the sagas reported
	// succeeded, and the leader's epoch.
	succeeded := r.SagasWithOutcome(t, "succeeded")
	lead, err := r.Admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	fault(t, r)

	reqs := r.WaitRequests(t, 3*time.Minute)
	t.Logf("every request terminal %s after the fault began", time.Since(began).Round(time.Millisecond))
	for _, q := range reqs {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("%v request %s ended %v%v", q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
		}
	}
	if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	after := r.SagasWithOutcome(t, "succeeded")
	for id := range succeeded {
		if !after[id] {
			t.Errorf("saga %s was reported succeeded before the fault and is not after it", id)
		}
	}
	t.Logf("%d sagas acknowledged succeeded before the fault, all still succeeded after", len(succeeded))
	// A lease that lapsed with the database was won again with a higher
	// epoch; one that did not lapse kept its term. Never a lower one.
	r.WaitLeader(t, r.Admin)
	lead2, err := r.Admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
	if err != nil || lead2.Epoch < lead.Epoch {
		t.Errorf("leader epoch %d before the fault, %v after (%v): want no lower", lead.Epoch, lead2.GetEpoch(), err)
	}
	t.Logf("leader epoch %d before the fault, %d after", lead.Epoch, lead2.Epoch)
	if err := r.Stack.WaitHealthy(ctx, 30*time.Second); err != nil {
		t.Errorf("after the fault: %v", err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.NoStuckSagas(t)
	r.Drain(t, nil, volumes)
	r.ExpectEmpty(t)
}
