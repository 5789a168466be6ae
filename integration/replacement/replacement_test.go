package replacement

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// The canonical case: a disk, its snapshot, two clones running on
// sim-upstairs; the disk of one region snapshot is expunged. With every task
// period at one hour, the request still reaches Complete: each phase is
// activated by the one before.
func TestExpungedRegionSnapshotIsReplacedEverywhere(t *testing.T) {
	r := startRack(t, 4, 2)
	ctx := context.Background()
	disk := r.createDisk(t)
	snap := r.snapshot(t, disk)
	clones := []string{r.clone(t, snap), r.clone(t, snap)}
	for i, c := range clones {
		r.construct(t, c, i)
	}
	old := r.targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	start := time.Now()
	r.expunge(t, r.diskOf(t, old.DatasetId))

	reqs := r.waitRequests(t, 60*time.Second)
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
	newRegion, err := r.volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: req.NewRegionId})
	if err != nil {
		t.Fatal(err)
	}
	b := newRegion.Target.Address
	// The snapshot and both clones name B and no longer A.
	for _, v := range append([]string{snap}, clones...) {
		resp, err := r.volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: v})
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
		st, err := r.sims[i].GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: c})
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
	if _, err := r.volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: old.TargetId}); err == nil {
		t.Errorf("old target %s still registered", old.TargetId)
	}
	rs, err := r.allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{SnapshotId: snap})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range rs.RegionSnapshots {
		if s.TargetId == old.TargetId {
			t.Errorf("old region snapshot still in the allocator: %+v", s)
		}
	}
	locks, err := r.replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(locks.Locks) != 0 {
		t.Errorf("locks left: %v", locks.Locks)
	}
	r.invariants(t)
	r.validate(t)
	r.noDataLoss(t)
}

// With every copy of a snapshot's data on expunged disks and no read-only
// region backing it, the requests end DataLost — once — and the task says so.
func TestAllCopiesExpungedIsDataLost(t *testing.T) {
	r := startRack(t, 4, 1)
	ctx := context.Background()
	disk := r.createDisk(t)
	snap := r.snapshot(t, disk)
	for _, tg := range r.targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT) {
		if _, err := r.allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: r.diskOf(t, tg.DatasetId)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: "ro_replacement_detector"}); err != nil {
		t.Fatal(err)
	}
	// The snapshot volume's lock serialises the three requests; each ends
	// DataLost and releases it for the next, without any period passing.
	harness.Eventually(t, 60*time.Second, "three DataLost requests", func() error {
		resp, err := r.replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 100})
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
		_, _ = r.admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: "ro_replacement_start"})
		tasks, err := r.admin.ListBackgroundTasks(ctx, &orchestratorv1.ListBackgroundTasksRequest{})
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
	r.invariants(t)
	r.validate(t)
}
