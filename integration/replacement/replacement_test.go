// Package replacement tests read-only target replacement end to end over
// real processes.
package replacement

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// The canonical case: a disk, its snapshot, two clones running on
// sim-upstairs; the disk of one region snapshot is expunged. With every task
// period at one hour, the request still reaches Complete: each phase is
// activated by the one before.
func TestExpungedRegionSnapshotIsReplacedEverywhere(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clones := []string{r.Clone(t, snap), r.Clone(t, snap)}
	for i, c := range clones {
		r.Construct(t, c, i)
	}
	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	start := time.Now()
	r.Expunge(t, r.DiskOf(t, old.DatasetId))

	reqs := r.WaitRequests(t, 60*time.Second)
	t.Logf("expunge to Complete: %s", time.Since(start))
	var req *orchestratorv1.Replacement
	for _, q := range reqs {
		if q.OldTargetId == old.TargetId {
			req = q
		}
	}
	if req == nil || req.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
		t.Fatalf("request for %s: %+v", old.TargetId, req)
	}
	newRegion, err := r.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: req.NewRegionId})
	if err != nil {
		t.Fatal(err)
	}
	b := newRegion.Target.Address
	// The snapshot and both clones name B and no longer A.
	for _, v := range append([]string{snap}, clones...) {
		resp, err := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: v})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, tg := range resp.Volume.Targets {
			ids = append(ids, tg.TargetId)
		}
		if slices.Contains(ids, old.TargetId) || !slices.Contains(ids, req.NewRegionId) {
			t.Errorf("volume %s targets %v: want %s instead of %s", v, ids, req.NewRegionId, old.TargetId)
		}
	}
	// Both running Upstairs switched to B.
	for i, c := range clones {
		st, err := r.Sims[i].GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: c})
		if err != nil {
			t.Fatal(err)
		}
		var addrs []string
		for _, d := range st.Status.Downstairs {
			addrs = append(addrs, d.Address)
		}
		if !slices.Contains(addrs, b) || slices.Contains(addrs, old.Address) {
			t.Errorf("sim-upstairs-%d runs %s with %v: want %s instead of %s", i, c, addrs, b, old.Address)
		}
	}
	// The old region snapshot is gone from the registry and the allocator.
	if _, err := r.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: old.TargetId}); err == nil {
		t.Errorf("old target %s still registered", old.TargetId)
	}
	rs, err := r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{SnapshotId: snap})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rs.RegionSnapshots {
		if s.TargetId == old.TargetId {
			t.Errorf("old region snapshot still in the allocator: %+v", s)
		}
	}
	locks, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(locks.Locks) != 0 {
		t.Errorf("locks left: %v", locks.Locks)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
}

// With every copy of a snapshot's data on expunged disks and no read-only
// region backing it, the requests end DataLost — once — and the task says so.
func TestAllCopiesExpungedIsDataLost(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	for _, tg := range r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT) {
		if _, err := r.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: r.DiskOf(t, tg.DatasetId)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: "ro_replacement_detector"}); err != nil {
		t.Fatal(err)
	}
	// The snapshot volume's lock serialises the three requests; each ends
	// DataLost and releases it for the next, without any period passing.
	harness.Eventually(t, 60*time.Second, "three DataLost requests", func() error {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{
			PageSize: 100, Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT,
		})
		if err != nil {
			return err
		}
		n := 0
		for _, q := range resp.Replacements {
			if q.ReadOnlyState == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
				n++
			}
		}
		if n != 3 || len(resp.Replacements) != 3 {
			return fmt.Errorf("%d requests, %d DataLost", len(resp.Replacements), n)
		}
		return nil
	})
	// The start task reports them as a standing alert.
	harness.Eventually(t, 10*time.Second, "start task status names the DataLost requests", func() error {
		_, _ = r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: "ro_replacement_start"})
		tasks, err := r.Admin.ListBackgroundTasks(ctx, &orchestratorv1.ListBackgroundTasksRequest{})
		if err != nil {
			return err
		}
		for _, tk := range tasks.Tasks {
			if tk.Name == "ro_replacement_start" && strings.Count(tk.LastStatusJson, "snapshot "+snap) == 3 {
				return nil
			}
		}
		return fmt.Errorf("no DataLost alert yet")
	})
	r.Invariants(t)
	r.Validate(t)
}

// Snapshotting a disk whose volume a replacement holds answers ABORTED
// "volume repair lock" (retry later), and changes nothing.
func TestSnapshotOfARepairedVolumeIsAborted(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	// A slow snapshot of the disk holds the disk's repair lock (as a rw
	// replacement of one of its regions would).
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	if _, err := faults.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT, Count: 3, Delay: durationpb.New(2 * time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	first, err := r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk})
	if err != nil {
		t.Fatal(err)
	}
	harness.Eventually(t, 10*time.Second, "first snapshot holds the lock", func() error {
		locks, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{})
		if err != nil || len(locks.Locks) != 1 {
			return fmt.Errorf("locks %v %v", locks, err)
		}
		return nil
	})
	_, err = r.Lifecycle.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: true})
	if status.Code(err) != codes.Aborted || status.Convert(err).Message() != "volume repair lock" {
		t.Fatalf("second snapshot while locked: %v", err)
	}
	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	s, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: first.Saga.SagaId})
	if err != nil || s.Saga.Outcome != "succeeded" {
		t.Fatalf("first snapshot: %v %v", s.GetSaga(), err)
	}
	r.Invariants(t)
	r.Validate(t)
}
