// Package waiting tests that nothing stays stuck and every wait is bounded
// and visible, end to end over real processes: a request waiting for
// capacity says so, backs off, can be cancelled and asked for again; a rw
// replacement whose repair cannot or does not finish ends DataLost or
// NeedsOperator and releases its volume, so the read-only work waiting
// behind it completes; a volume under continuous lock contention still gets
// its step, served in arrival order.
package waiting

import (
	"context"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// triesRE reads a lock wait's try count from its detail.
var triesRE = regexp.MustCompile(`\((\d+) tries\)`)

func get(t *testing.T, r *rack.Rack, id string) *orchestratorv1.GetReplacementResponse {
	t.Helper()
	resp, err := r.Replacement.GetReplacement(context.Background(), &orchestratorv1.GetReplacementRequest{ReplacementId: id})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// requests lists every request of a kind family.
func requests(t *testing.T, r *rack.Rack, rw bool) []*orchestratorv1.Replacement {
	t.Helper()
	resp, err := r.Replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []*orchestratorv1.Replacement
	for _, rep := range resp.Replacements {
		if (rep.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION) == rw {
			out = append(out, rep)
		}
	}
	return out
}

func lockOn(t *testing.T, r *rack.Rack, volume string) *orchestratorv1.Lock {
	t.Helper()
	resp, err := r.Replacement.ListLocks(context.Background(), &orchestratorv1.ListLocksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range resp.Locks {
		if l.VolumeId == volume {
			return l
		}
	}
	return nil
}

// addSled adds a sled with one disk: room for what waited for capacity.
func addSled(t *testing.T, r *rack.Rack, serial string, n int) {
	t.Helper()
	ctx := context.Background()
	sled, err := r.Allocator.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: serial})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Allocator.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
		SledId: sled.Sled.SledId, CapacityBytes: 200 * rack.GiB, DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::1", 0x200+n),
	}); err != nil {
		t.Fatal(err)
	}
}

func finish(t *testing.T, r *rack.Rack, volumes ...string) {
	t.Helper()
	if _, err := r.Admin.WaitIdle(context.Background(), &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	for _, v := range volumes {
		r.DeleteVolume(t, v)
	}
	r.ExpectEmpty(t)
}

// A read-only replacement with no room for its new region waits, says it
// waits for capacity (with its attempts and last error), backs off instead
// of retrying every pass, and can be cancelled: it ends Cancelled with the
// reason and releases the snapshot's lock, and nothing brings it back until
// an operator asks for the target again; then, with room added, it
// completes. Cancelling a request that ended is refused, naming its end.
// (On three sleds the rw requests the expunge caused wait for room too.)
func TestReadOnlyWaitsForCapacityThenCancelAndReopen(t *testing.T) {
	// Three sleds: the snapshot's three copies take them all, and a
	// replacement must go to a sled holding none of them.
	r := rack.Start(t, 3, 2, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, target.DatasetId))

	var ro *orchestratorv1.Replacement
	harness.Eventually(t, 60*time.Second, "the read-only request waits for capacity after failed attempts", func() error {
		reqs := requests(t, r, false)
		if len(reqs) != 1 {
			return fmt.Errorf("%d read-only requests", len(reqs))
		}
		ro = get(t, r, reqs[0].ReplacementId).Replacement
		if ro.Attempts < 2 || ro.Wait.GetKind() != orchestratorv1.WaitKind_WAIT_KIND_CAPACITY {
			return fmt.Errorf("request %s: %v, %d attempts, waits on %v", ro.ReplacementId, ro.ReadOnlyState, ro.Attempts, ro.Wait)
		}
		return nil
	})
	if !strings.Contains(ro.LastError, "not enough") || ro.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REQUESTED {
		t.Fatalf("request %s: %v, last error %q", ro.ReplacementId, ro.ReadOnlyState, ro.LastError)
	}
	// It backs off: attempts grow slowly, not with every pass.
	time.Sleep(2 * time.Second)
	if again := get(t, r, ro.ReplacementId).Replacement; again.Attempts > ro.Attempts+3 {
		t.Errorf("attempts went from %d to %d in 2s: no backoff", ro.Attempts, again.Attempts)
	}
	// The start task says what it skipped and why.
	tasks, err := r.Admin.ListBackgroundTasks(ctx, &orchestratorv1.ListBackgroundTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, tk := range tasks.Tasks {
		if tk.Name == "ro_replacement_start" && !strings.Contains(tk.LastStatusJson, "skipped") {
			t.Errorf("start task status %s says nothing of what it skipped", tk.LastStatusJson)
		}
	}

	// Bad input changes nothing.
	if _, err := r.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: ro.ReplacementId}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("cancel without a reason: %v", err)
	}
	if _, err := r.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: "nope", Reason: "x"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("cancel a malformed id: %v", err)
	}
	harness.Eventually(t, 30*time.Second, "the request is at rest (no saga working on it)", func() error {
		resp, err := r.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: ro.ReplacementId, Reason: "no room on this rack"})
		if err != nil {
			return err
		}
		ro = resp.Replacement
		return nil
	})
	if ro.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED || !strings.Contains(ro.EndReason, "no room on this rack") {
		t.Fatalf("cancelled request: %v, end reason %q", ro.ReadOnlyState, ro.EndReason)
	}
	if l := lockOn(t, r, snap); l != nil {
		t.Fatalf("the snapshot's lock is still held: %v", l)
	}
	if _, err := r.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: ro.ReplacementId, Reason: "again"}); err != nil {
		t.Fatalf("cancel a cancelled request: %v", err)
	}
	// Detectors do not bring it back.
	r.Expunge(t, r.DiskOf(t, target.DatasetId))
	time.Sleep(time.Second)
	if again := get(t, r, ro.ReplacementId).Replacement; again.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED {
		t.Fatalf("a detector brought the cancelled request back: %v", again.ReadOnlyState)
	}
	r.Validate(t)

	// Room, then the operator asks again: the same request, reopened,
	// completes.
	addSled(t, r, "sled-added", 0)
	resp, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil || resp.Replacement.ReplacementId != ro.ReplacementId || !resp.Created {
		t.Fatalf("request again: %v %v", resp, err)
	}
	reqs := r.WaitRequests(t, 60*time.Second)
	for _, rep := range reqs {
		if rep.ReplacementId == ro.ReplacementId && rep.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			t.Fatalf("reopened request ended %v", rep.ReadOnlyState)
		}
		// Cancelling a request that completed is refused, naming its end.
		_, err := r.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: rep.ReplacementId, Reason: "x"})
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(status.Convert(err).Message(), "complete") {
			t.Errorf("cancel completed request %s: %v", rep.ReplacementId, err)
		}
	}
	finish(t, r, clone, snap, disk)
}

// The same for a rw replacement: waiting for a sled its volume's other
// regions do not use, cancelled, and asked for again by its region.
func TestReadWriteWaitsForCapacityThenCancelAndReopen(t *testing.T) {
	r := rack.Start(t, 3, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	region := r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION)[0]
	r.Expunge(t, r.DiskOf(t, region.DatasetId))
	var rw *orchestratorv1.Replacement
	harness.Eventually(t, 60*time.Second, "the rw request waits for capacity", func() error {
		reqs := requests(t, r, true)
		if len(reqs) != 1 {
			return fmt.Errorf("%d rw requests", len(reqs))
		}
		rw = get(t, r, reqs[0].ReplacementId).Replacement
		if rw.Attempts < 1 || rw.Wait.GetKind() != orchestratorv1.WaitKind_WAIT_KIND_CAPACITY {
			return fmt.Errorf("request %s: %v, %d attempts, waits on %v", rw.ReplacementId, rw.RegionState, rw.Attempts, rw.Wait)
		}
		return nil
	})
	harness.Eventually(t, 30*time.Second, "cancelled at rest", func() error {
		resp, err := r.Replacement.CancelReplacement(ctx, &orchestratorv1.CancelReplacementRequest{ReplacementId: rw.ReplacementId, Reason: "waiting for a new sled"})
		if err != nil {
			return err
		}
		rw = resp.Replacement
		return nil
	})
	if rw.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_CANCELLED || lockOn(t, r, disk) != nil {
		t.Fatalf("cancelled rw request: %v, lock %v", rw.RegionState, lockOn(t, r, disk))
	}
	r.Validate(t)
	addSled(t, r, "sled-added", 1)
	resp, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: region.TargetId})
	if err != nil || resp.Replacement.ReplacementId != rw.ReplacementId {
		t.Fatalf("request the region again: %v %v", resp, err)
	}
	for _, rep := range r.WaitRequests(t, 60*time.Second) {
		if rep.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Fatalf("rw request %s ended %v", rep.ReplacementId, rep.RegionState)
		}
	}
	finish(t, r, disk)
}

// expungeSharedDisk finds a disk that holds one of the snapshot's region
// snapshots and one of the clone's rw regions, and expunges it; false when
// placement put none there.
func expungeSharedDisk(t *testing.T, r *rack.Rack, snap, clone string) bool {
	t.Helper()
	var snapDatasets []string
	for _, tg := range r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT) {
		snapDatasets = append(snapDatasets, tg.DatasetId)
	}
	for _, tg := range r.Targets(t, clone, commonv1.TargetKind_TARGET_KIND_RW_REGION) {
		if slices.Contains(snapDatasets, tg.DatasetId) {
			r.Expunge(t, r.DiskOf(t, tg.DatasetId))
			return true
		}
	}
	return false
}

// A rw replacement whose Upstairs never reports the repair finished ends
// NeedsOperator once nothing happened for its stall bound, releasing the
// volume: the read-only request whose step waited for that volume's lock
// then completes, and the drive task's status says why it gave up.
func TestReadWriteNeverRepairedEndsNeedsOperatorAndFreesTheVolume(t *testing.T) {
	r := rack.Start(t, 5, 1, stack.Config{ExtraArgs: map[string][]string{
		stack.Orchestrator: {"--rw-stall-timeout", "3s"},
		// Repairs that start and never finish within the test.
		stack.SimUpstairs + "-0": {"--repair-delay", "1h"},
	}})
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	var clone string
	for i := 0; ; i++ {
		clone = r.Clone(t, snap)
		r.Construct(t, clone, 0)
		if expungeSharedDisk(t, r, snap, clone) {
			break
		}
		if i == 10 {
			t.Fatal("no placement put a clone region beside a snapshot copy")
		}
	}
	var rw, ro *orchestratorv1.Replacement
	harness.Eventually(t, 90*time.Second, "the rw request gives up and the read-only request completes", func() error {
		for _, rep := range requests(t, r, true) {
			if rep.LockVolumeId == clone {
				rw = rep
			}
		}
		ros := requests(t, r, false)
		if rw == nil || len(ros) != 1 {
			return fmt.Errorf("rw request %v, %d read-only", rw, len(ros))
		}
		ro = ros[0]
		if rw.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_NEEDS_OPERATOR ||
			ro.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			return fmt.Errorf("rw %v (waits on %v), read-only %v (waits on %v)", rw.RegionState, rw.Wait, ro.ReadOnlyState, get(t, r, ro.ReplacementId).Replacement.Wait)
		}
		return nil
	})
	if !strings.Contains(rw.EndReason, "no drive attempt and no repair report") {
		t.Errorf("end reason %q", rw.EndReason)
	}
	if l := lockOn(t, r, clone); l != nil {
		t.Errorf("the clone's lock is still held: %v", l)
	}
	tasks, err := r.Admin.ListBackgroundTasks(context.Background(), &orchestratorv1.ListBackgroundTasksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var said bool
	for _, tk := range tasks.Tasks {
		said = said || strings.Contains(tk.LastStatusJson, rw.ReplacementId) && strings.Contains(tk.LastStatusJson, "needs_operator")
	}
	if !said {
		t.Logf("no task status names the give-up any more (a later pass replaced it)")
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
}

// A rw replacement with no surviving copy of its region set ends DataLost
// without trying a repair that could only copy nothing, as do the other two
// regions' requests (a replacement region never repaired is no source
// either); the read-only request that waited for the volume completes.
func TestReadWriteWithNoSourceEndsDataLostAndFreesTheVolume(t *testing.T) {
	r := rack.Start(t, 6, 1, stack.Config{})
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	snapDatasets := map[string]bool{}
	for _, tg := range r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT) {
		snapDatasets[tg.DatasetId] = true
	}
	// A clone sharing one or two disks with the snapshot's copies: losing
	// all three of its own regions then loses a copy of the snapshot too,
	// but not every copy.
	var clone string
	var regions []*commonv1.Target
	for i := 0; ; i++ {
		clone = r.Clone(t, snap)
		regions = r.Targets(t, clone, commonv1.TargetKind_TARGET_KIND_RW_REGION)
		shared := 0
		for _, tg := range regions {
			if snapDatasets[tg.DatasetId] {
				shared++
			}
		}
		if shared == 1 || shared == 2 {
			break
		}
		r.DeleteVolume(t, clone)
		if i == 20 {
			t.Fatal("no placement shared one or two disks")
		}
	}
	for _, tg := range regions {
		r.Expunge(t, r.DiskOf(t, tg.DatasetId))
	}
	harness.Eventually(t, 90*time.Second, "the clone's rw requests end DataLost, the rest completes", func() error {
		var rws []*orchestratorv1.Replacement
		for _, rw := range requests(t, r, true) {
			if rw.LockVolumeId != clone {
				// The disk's own lost regions: its set keeps a copy.
				if rw.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
					return fmt.Errorf("the disk's rw request %s is %v (waits on %v)", rw.ReplacementId, rw.RegionState, rw.Wait)
				}
				continue
			}
			rws = append(rws, rw)
		}
		if len(rws) != 3 {
			return fmt.Errorf("%d rw requests of the clone", len(rws))
		}
		for _, rw := range rws {
			if rw.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DATA_LOST {
				return fmt.Errorf("rw request %s is %v (waits on %v)", rw.ReplacementId, rw.RegionState, rw.Wait)
			}
			if !strings.Contains(rw.EndReason, "no copy of the region set survives") {
				return fmt.Errorf("rw request %s end reason %q", rw.ReplacementId, rw.EndReason)
			}
		}
		for _, ro := range requests(t, r, false) {
			if ro.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
				return fmt.Errorf("read-only request %s is %v (waits on %v)", ro.ReplacementId, ro.ReadOnlyState, ro.Wait)
			}
		}
		return nil
	})
	if l := lockOn(t, r, clone); l != nil {
		t.Errorf("the clone's lock is still held: %v", l)
	}
	r.Invariants(t)
	r.Validate(t)
}

// Fairness: while users keep taking and releasing a clone's repair lock
// (snapshotting it in a loop, from sixteen clients), the read-only step that
// needs the same lock still gets it within a few passes of its task, being
// older in the volume's lock queue than any new snapshot; meanwhile the
// request says what it waits on (the lock and its holder).
func TestStepGetsItsLockUnderContinuousContention(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	// The first snapshot's agent call takes 3 s, so the lock is surely held
	// when the step first asks for it, however slow the machine: the test
	// always meets contention (and then the sixteen clients keep it up).
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	if _, err := faults.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT, Count: 1, Delay: durationpb.New(3 * time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var snapshots, refused sync.Map
	for c := 0; c < 16; c++ {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: clone, Wait: true})
				switch {
				case status.Code(err) == codes.Aborted:
					refused.Store(time.Now(), true)
					time.Sleep(5 * time.Millisecond)
				case err == nil && resp.Saga.GetOutcome() == orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED:
					snapshots.Store(resp.SnapshotId, true)
				}
			}
		})
	}
	// Once a snapshot holds the clone's lock, ask for one of the snapshot's
	// copies to be replaced: the clone needs a step.
	harness.Eventually(t, 30*time.Second, "a snapshot holds the clone's lock", func() error {
		if lockOn(t, r, clone) == nil {
			return fmt.Errorf("no lock on the clone yet")
		}
		return nil
	})
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	req, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil {
		t.Fatal(err)
	}
	activations := func() int64 {
		tasks, err := r.Admin.ListBackgroundTasks(ctx, &orchestratorv1.ListBackgroundTasksRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, tk := range tasks.Tasks {
			if tk.Name == "ro_replacement_step" {
				return tk.Activations
			}
		}
		return 0
	}
	var firstWait time.Time
	var passesAtWait int64
	var sawLockWait bool
	tries := "?"
	started := time.Now()
	harness.Eventually(t, 90*time.Second, "the clone gets its step", func() error {
		resp := get(t, r, req.Replacement.ReplacementId)
		for _, s := range resp.Steps {
			if s.VolumeId == clone {
				return nil
			}
		}
		if w := resp.Replacement.Wait; w.GetKind() == orchestratorv1.WaitKind_WAIT_KIND_LOCK {
			if firstWait.IsZero() {
				firstWait, passesAtWait, sawLockWait = time.Now(), activations(), true
				t.Logf("waits on: %s", w.Detail)
			}
			if m := triesRE.FindStringSubmatch(w.Detail); m != nil {
				tries = m[1]
			}
		}
		return fmt.Errorf("no step for the clone yet (waits on %v)", resp.Replacement.Wait)
	})
	won := time.Now()
	passes := activations() - passesAtWait
	close(stop)
	wg.Wait()
	n, nRefused := 0, 0
	snapshots.Range(func(any, any) bool { n++; return true })
	refused.Range(func(any, any) bool { nRefused++; return true })
	if sawLockWait {
		t.Logf("fairness: the step waited %v in the lock queue and got the lock after %s refused tries, within %d step-task activations; %d snapshots were taken and %d refused (queued behind it) meanwhile; %v from the request",
			won.Sub(firstWait).Round(time.Millisecond), tries, passes, n, nRefused, won.Sub(started).Round(time.Millisecond))
		if passes > 30 {
			t.Errorf("the step needed %d activations of its task under contention", passes)
		}
	} else {
		// Sixteen clients keep the lock held nearly always; a step that
		// never met them proves nothing about fairness.
		t.Errorf("the step never had to wait for the lock (%d snapshots taken meanwhile): no contention to test", n)
	}
	// The snapshots taken meanwhile copied the clone's read-only parent,
	// old target included: each needs a step of its own, found by the next
	// scans.
	harness.Eventually(t, 90*time.Second, "the request completes", func() error {
		resp := get(t, r, req.Replacement.ReplacementId)
		if rack.Terminal(resp.Replacement) {
			return nil
		}
		return fmt.Errorf("request %v, %d steps, waits on %v", resp.Replacement.ReadOnlyState, len(resp.Steps), resp.Replacement.Wait)
	})
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
}

// A step whose saga unwinds (its Upstairs refused the new VCR once) is
// retried within its backoff by a wake-up of its task, not after the
// task's period (an hour in this rack): the request completes in seconds,
// and the step shows the failed attempt and its error.
func TestUnwoundStepIsRetriedPromptly(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	r.Construct(t, clone, 0)
	faults := upstairsv1.NewUpstairsFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.SimUpstairsAddrs()[0]))
	if _, err := faults.InjectUpstairsFault(ctx, &upstairsv1.InjectUpstairsFaultRequest{Method: "ReplaceVolume", Count: 1, Fail: true}); err != nil {
		t.Fatal(err)
	}
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	req, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	harness.Eventually(t, 30*time.Second, "the request completes", func() error {
		resp := get(t, r, req.Replacement.ReplacementId)
		if rack.Terminal(resp.Replacement) {
			return nil
		}
		return fmt.Errorf("request %v, waits on %v", resp.Replacement.ReadOnlyState, resp.Replacement.Wait)
	})
	took := time.Since(began)
	var retried *orchestratorv1.Step
	for _, s := range get(t, r, req.Replacement.ReplacementId).Steps {
		if s.VolumeId == clone {
			retried = s
		}
	}
	if retried == nil || retried.Attempts != 1 || !strings.Contains(retried.LastError, "injected fault") {
		t.Fatalf("the clone's step: %v, want one failed attempt naming the injected fault", retried)
	}
	t.Logf("the unwound step was retried and the request completed %v after it was requested", took.Round(time.Millisecond))
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
}
