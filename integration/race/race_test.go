// Package race runs randomized interleavings of user deletes, disk
// expungements, task activations, Upstairs restarts and orchestrator
// crashes against a running replacement, each from a reproducible seed.
package race

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// seeds: a fixed set in make test; STORAGECP_SEEDS=n (make soak) runs n
// random ones, each printed so a failure can be replayed with
// STORAGECP_SEED=<seed>.
func seeds() []uint64 {
	if s := os.Getenv("STORAGECP_SEED"); s != "" {
		v, _ := strconv.ParseUint(s, 10, 64)
		return []uint64{v}
	}
	if n, _ := strconv.Atoi(os.Getenv("STORAGECP_SEEDS")); n > 0 {
		out := make([]uint64, n)
		for i := range out {
			out[i] = rand.Uint64()
		}
		return out
	}
	return []uint64{1, 2, 3}
}

func TestRandomInterleavings(t *testing.T) {
	for _, seed := range seeds() {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			t.Logf("replay with STORAGECP_SEED=%d", seed)
			runSeed(t, seed)
		})
	}
}

type object struct {
	id         string
	kind       string // disk, snapshot, clone
	attachment *notifierv1.Attachment
	sim        int
	deleted    bool
}

func runSeed(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	// Two orchestrators: one leads, the other stands by and adopts the
	// leader's sagas when it is killed.
	r := rack.Start(t, 6, 3, stack.Config{Orchestrators: 2})
	ctx := context.Background()
	orchs := newOrchestrators(t, r)

	// The world: two disks, a snapshot of each, two clones of each
	// snapshot; some clones run on sim-upstairs.
	var objs []*object
	for i := 0; i < 2; i++ {
		disk := &object{id: r.CreateDisk(t), kind: "disk"}
		snap := &object{id: r.Snapshot(t, disk.id), kind: "snapshot"}
		objs = append(objs, disk, snap)
		for j := 0; j < 2; j++ {
			c := &object{id: r.Clone(t, snap.id), kind: "clone", sim: rng.IntN(2)}
			if rng.IntN(2) == 0 {
				c.attachment = r.Construct(t, c.id, c.sim)
			}
			objs = append(objs, c)
		}
	}
	// Expunge the disk of one region snapshot first, so a replacement runs.
	first := r.Targets(t, objs[1].id, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	expunged := map[string]bool{}
	expunge := func(disk string) {
		if !expunged[disk] {
			expunged[disk] = true
			r.Expunge(t, disk)
		}
	}
	expunge(r.DiskOf(t, first.DatasetId))

	for step := 0; step < 14; step++ {
		switch a := rng.IntN(10); {
		case a < 3: // a user deletes something
			o := objs[rng.IntN(len(objs))]
			if o.deleted {
				continue
			}
			t.Logf("step %d: delete %s %s", step, o.kind, o.id)
			if o.attachment != nil {
				if _, err := r.Notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: o.attachment.AttachmentId}); err != nil {
					t.Fatalf("detach: %v", err)
				}
			}
			if _, err := r.Lifecycle.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: o.id}); err != nil {
				t.Fatalf("delete %s: %v", o.id, err)
			}
			o.deleted = true
		case a < 4: // another disk is expunged (at most two in all)
			if len(expunged) >= 2 {
				continue
			}
			disks, err := r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
			if err != nil {
				t.Fatal(err)
			}
			var live []*allocatorv1.PhysicalDisk
			for _, d := range disks.Disks {
				if !expunged[d.DiskId] {
					live = append(live, d)
				}
			}
			d := live[rng.IntN(len(live))]
			t.Logf("step %d: expunge disk %s", step, d.DiskId)
			expunge(d.DiskId)
		case a < 6: // a task is activated out of turn
			tasks := []string{"ro_replacement_start", "ro_replacement_garbage_collect", "ro_replacement_step", "ro_replacement_finish", "rw_replacement_drive", "rw_replacement_finish"}
			name := tasks[rng.IntN(len(tasks))]
			_, _ = r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: name})
		case a < 7: // an Upstairs restarts; its instance manager constructs again
			i := rng.IntN(len(r.Sims))
			t.Logf("step %d: sim-upstairs-%d restarts", step, i)
			faults := upstairsv1.NewUpstairsFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.SimUpstairsAddrs()[i]))
			if _, err := faults.ForgetAll(ctx, &upstairsv1.ForgetAllRequest{}); err != nil {
				t.Fatal(err)
			}
			for _, o := range objs {
				if o.attachment != nil && o.sim == i && !o.deleted {
					o.attachment = r.Construct(t, o.id, o.sim)
				}
			}
		case a < 9: // the leader is killed; the standby adopts its sagas
			// The one killed before comes back first, as the standby.
			orchs.restartDead(t)
			i := orchs.leader(t)
			t.Logf("step %d: leading orchestrator %s killed", step, orchs.procs[i].Name)
			orchs.procs[i].Kill()
			if rng.IntN(2) == 0 {
				// Back at once: it races the standby for the lease.
				if err := orchs.procs[i].Restart(); err != nil {
					t.Fatal(err)
				}
			}
			orchs.leader(t)
		default: // time passes
			time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
		}
	}
	// Converge: every request terminal and Complete, the world consistent.
	orchs.restartDead(t)
	orchs.leader(t)
	reqs := waitRequests(t, r, 90*time.Second)
	for _, q := range reqs {
		if q.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION &&
			q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("request %s ended %v", q.ReplacementId, q.ReadOnlyState)
		}
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)

	// Delete everything the users still have; nothing may be left.
	for pass := 0; pass < 2; pass++ {
		for _, o := range objs {
			if o.attachment != nil && !o.deleted {
				if _, err := r.Notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: o.attachment.AttachmentId}); err != nil {
					t.Fatalf("detach: %v", err)
				}
				o.attachment = nil
			}
			r.DeleteVolume(t, o.id)
			o.deleted = true
		}
	}
	r.WaitRequests(t, 120*time.Second)
	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	r.ExpectEmpty(t)
	orchs.logAdoptions(t)
}

// orchestrators are the leader and the standby of a race run. The rack's
// orchestrator clients always point at the current leader.
type orchestrators struct {
	r     *rack.Rack
	procs [2]*stack.Proc
	admin [2]orchestratorv1.AdminServiceClient
	life  [2]orchestratorv1.LifecycleServiceClient
	repl  [2]orchestratorv1.ReplacementServiceClient
}

func newOrchestrators(t *testing.T, r *rack.Rack) *orchestrators {
	o := &orchestrators{r: r}
	for i, name := range []string{stack.Orchestrator, stack.Orchestrator + "-1"} {
		o.procs[i] = r.Stack.Proc(name)
		conn := harness.Dial(t, r.Stack, r.Stack.Addr(name))
		o.admin[i] = orchestratorv1.NewAdminServiceClient(conn)
		o.life[i] = orchestratorv1.NewLifecycleServiceClient(conn)
		o.repl[i] = orchestratorv1.NewReplacementServiceClient(conn)
	}
	o.leader(t)
	return o
}

// leader waits until one orchestrator leads and points the rack at it.
func (o *orchestrators) leader(t *testing.T) int {
	t.Helper()
	idx := -1
	harness.Eventually(t, 30*time.Second, "one orchestrator leads", func() error {
		for i, a := range o.admin {
			if exited, _ := o.procs[i].Exited(); exited {
				continue
			}
			l, err := a.GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
			if err == nil && l.IsLeader {
				idx = i
				return nil
			}
		}
		return fmt.Errorf("no leader yet")
	})
	o.r.Admin, o.r.Lifecycle, o.r.Replacement = o.admin[idx], o.life[idx], o.repl[idx]
	return idx
}

// restartDead brings back every killed orchestrator, as a standby.
func (o *orchestrators) restartDead(t *testing.T) {
	t.Helper()
	for _, p := range o.procs {
		if exited, _ := p.Exited(); exited {
			if err := p.Restart(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// logAdoptions reports how many sagas were adopted (by the standby or by a
// restarted leader) in this run.
func (o *orchestrators) logAdoptions(t *testing.T) {
	resp, err := o.r.Admin.ListSagas(context.Background(), &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	adopted := 0
	for _, s := range resp.Sagas {
		if s.AdoptGeneration > 1 {
			adopted++
		}
	}
	t.Logf("%d of %d sagas were adopted after their leader was killed", adopted, len(resp.Sagas))
}

// waitRequests is rack.WaitRequests that, on timeout, shows why each
// unfinished request is waiting.
func waitRequests(t *testing.T, r *rack.Rack, timeout time.Duration) []*orchestratorv1.Replacement {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(timeout)
	for {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			t.Fatal(err)
		}
		var open []*orchestratorv1.Replacement
		for _, q := range resp.Replacements {
			if !rack.Terminal(q) {
				open = append(open, q)
			}
		}
		if len(open) == 0 {
			return resp.Replacements
		}
		if time.Now().After(deadline) {
			for _, q := range open {
				g, _ := r.Replacement.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: q.ReplacementId})
				t.Logf("open request %+v", q)
				for _, d := range g.GetDriveSteps() {
					t.Logf("  drive step %+v", d)
				}
				atts, _ := r.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{VolumeId: q.LockVolumeId})
				for _, a := range atts.GetAttachments() {
					t.Logf("  attachment %+v", a)
				}
				if q.NewRegionId != "" {
					tg, _ := r.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: q.NewRegionId})
					if tg != nil {
						reps, _ := r.Notifier.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: tg.Target.Address})
						for _, n := range reps.GetNotifications() {
							t.Logf("  repair %+v", n)
						}
						t.Logf("  new region target %+v", tg.Target)
					}
				}
				v, _ := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: q.LockVolumeId})
				if v != nil {
					t.Logf("  volume deleted=%v targets=%v", v.Volume.TimeDeleted != nil, v.Volume.Targets)
				}
			}
			t.Fatalf("%d requests not terminal after %s", len(open), timeout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
