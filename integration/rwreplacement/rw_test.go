// Package rwreplacement tests read/write region replacement end to end over
// real processes: live repair through a running consumer, reconciliation on
// a Pantry-like sim-upstairs when none, and a consumer restarted mid-repair.
// It runs on the shared rack fixture and watches requests through the
// orchestrator's ReplacementService.
package rwreplacement

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }

// checkReplaced asserts the end state of a completed replacement: the
// volume names the new region instead of the old one with a higher
// generation, the old region and the stash are gone, no lock is held, the
// registry is consistent and no probe ever found a destroyed target.
func (r rwRack) checkReplaced(t *testing.T, volume string, old *commonv1.Target, req *orchestratorv1.Replacement, minGen uint64) {
	t.Helper()
	ctx := context.Background()
	regions, gen := r.regionSet(t, volume)
	var ids []string
	for _, tg := range regions {
		ids = append(ids, tg.TargetId)
	}
	if req.NewRegionId == "" || slices.Contains(ids, old.TargetId) || !slices.Contains(ids, req.NewRegionId) {
		t.Errorf("volume %s names %v: want new region %q instead of %s", volume, ids, req.NewRegionId, old.TargetId)
	}
	if gen < minGen {
		t.Errorf("region set generation %d, want at least %d", gen, minGen)
	}
	if _, err := r.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: old.TargetId}); status.Code(err) != codes.NotFound {
		t.Errorf("old region %s: %v, want NotFound (destroyed)", old.TargetId, err)
	}
	if _, err := r.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: old.TargetId}); status.Code(err) != codes.NotFound {
		t.Errorf("old target %s: %v, want NotFound (unregistered)", old.TargetId, err)
	}
	if stash := req.OldSnapshotVolumeId; stash != "" {
		if _, err := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: stash}); status.Code(err) != codes.NotFound {
			t.Errorf("stash volume %s: %v, want NotFound", stash, err)
		}
	}
	if n := r.locks(t); n != 0 {
		t.Errorf("%d locks left", n)
	}
	r.Invariants(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
}

// Live repair: a consumer runs the disk on sim-upstairs-0; one of its
// regions' disk is expunged. The running Upstairs is told ReplaceVolume,
// live-repairs the new region and reports it; the request completes.
func TestLiveRepairWithRunningConsumer(t *testing.T) {
	r := startRack(t, 4, 2)
	ctx := context.Background()
	disk := r.CreateDisk(t)
	att := r.Construct(t, disk, 0)
	start := time.Now()
	old, gen := r.expungeRegion(t, disk)
	repaired := r.activateDriveOnRepair(t, old.TargetId, 60*time.Second)
	req := r.waitRW(t, old.TargetId, rwComplete, 60*time.Second)
	t.Logf("TIMING live repair (running consumer): expunge → repair reported %s, → Complete %s",
		repaired.Sub(start).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	steps := r.driveSteps(t, req.ReplacementId)
	if len(steps) == 0 || steps[0].StepType != "propolis" || steps[0].AttachmentId != att.AttachmentId {
		t.Errorf("drive steps %+v: want a propolis step on attachment %s", steps, att.AttachmentId)
	}
	// ReplaceRegion bumped the generation once; nothing else checked out.
	r.checkReplaced(t, disk, old, req, gen+1)
	st, err := r.Sims[0].GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: disk})
	if err != nil {
		t.Fatal(err)
	}
	newT, err := r.Volumes.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: req.NewRegionId})
	if err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, d := range st.Status.Downstairs {
		addrs = append(addrs, d.Address)
		if d.State != upstairsv1.DownstairsState_DOWNSTAIRS_STATE_ACTIVE {
			t.Errorf("downstairs %s is %s", d.Address, d.State)
		}
	}
	if !slices.Contains(addrs, newT.Target.Address) || slices.Contains(addrs, old.Address) {
		t.Errorf("the running Upstairs uses %v: want %s instead of %s", addrs, newT.Target.Address, old.Address)
	}
}

// The same without the activation stand-in: the drive task notices the
// repair by itself (it looks again every 300 ms while a request waits on
// one, besides its own 10 s period).
func TestLiveRepairDrivenByPeriod(t *testing.T) {
	r := startRack(t, 4, 2)
	disk := r.CreateDisk(t)
	r.Construct(t, disk, 0)
	start := time.Now()
	old, gen := r.expungeRegion(t, disk)
	req := r.waitRW(t, old.TargetId, rwComplete, 60*time.Second)
	t.Logf("TIMING live repair (running consumer, drive task unaided): expunge → Complete %s",
		time.Since(start).Round(time.Millisecond))
	r.checkReplaced(t, disk, old, req, gen+1)
}

// No consumer: the drive saga constructs the volume on a Pantry-like
// sim-upstairs, whose activation reconciles the new region; the finish
// saga detaches it.
func TestReconciliationWithoutConsumer(t *testing.T) {
	r := startRack(t, 4, 2)
	ctx := context.Background()
	disk := r.CreateDisk(t)
	start := time.Now()
	old, gen := r.expungeRegion(t, disk)
	repaired := r.activateDriveOnRepair(t, old.TargetId, 60*time.Second)
	req := r.waitRW(t, old.TargetId, rwComplete, 60*time.Second)
	t.Logf("TIMING reconciliation (no consumer, Pantry): expunge → repair reported %s, → Complete %s",
		repaired.Sub(start).Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	steps := r.driveSteps(t, req.ReplacementId)
	if len(steps) == 0 || steps[0].StepType != "pantry" || steps[0].AttachmentId == "" {
		t.Fatalf("drive steps %+v: want a pantry step", steps)
	}
	// ReplaceRegion and the Pantry's checkout each bumped it.
	r.checkReplaced(t, disk, old, req, gen+2)
	atts, err := r.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{VolumeId: disk})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts.Attachments {
		if a.State != notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED && a.AttachmentId == steps[0].AttachmentId {
			t.Errorf("Pantry attachment %s is %s after Complete, want detached", a.AttachmentId, a.State)
		}
	}
	// The disk can be started by a consumer afterwards (no second rw
	// consumer left behind).
	r.Construct(t, disk, 1)
}

// The consumer restarts mid-repair (its live repair dies with the old
// session): the drive saga sees the new incarnation, re-drives it, and the
// request still completes, through the restarted Upstairs' reconciliation.
func TestConsumerRestartMidRepair(t *testing.T) {
	r := startRack(t, 4, 2, "--repair-delay", "3s")
	disk := r.CreateDisk(t)
	first := r.Construct(t, disk, 0)
	start := time.Now()
	old, gen := r.expungeRegion(t, disk)
	var req *orchestratorv1.Replacement
	harness.Eventually(t, 60*time.Second, "a propolis step started the live repair", func() error {
		q, err := r.rwRequestFor(t, old.TargetId)
		if err != nil {
			return err
		}
		req = q
		if len(r.driveSteps(t, q.ReplacementId)) == 0 {
			return fmt.Errorf("no drive step yet")
		}
		return nil
	})
	second := r.Construct(t, disk, 0) // restart: next incarnation
	if second.Incarnation <= first.Incarnation || second.AttachmentId != first.AttachmentId {
		t.Fatalf("restart gave %+v after %+v", second, first)
	}
	r.activate(t, "rw_replacement_drive")
	harness.Eventually(t, 30*time.Second, "a second drive step for the restarted Upstairs", func() error {
		steps := r.driveSteps(t, req.ReplacementId)
		if len(steps) >= 2 {
			return nil
		}
		r.activate(t, "rw_replacement_drive")
		return fmt.Errorf("%d steps", len(steps))
	})
	r.activateDriveOnRepair(t, old.TargetId, 60*time.Second)
	req = r.waitRW(t, old.TargetId, rwComplete, 60*time.Second)
	t.Logf("TIMING consumer restarted mid-repair (3 s repair delay): expunge → Complete %s", time.Since(start).Round(time.Millisecond))
	steps := r.driveSteps(t, req.ReplacementId)
	for i, s := range steps {
		t.Logf("drive step %d: %s, incarnation %d", i, s.StepType, s.Incarnation)
	}
	last := steps[len(steps)-1]
	if steps[0].StepType != "propolis" || last.StepType != "propolis" || last.Incarnation != second.Incarnation {
		t.Errorf("drive steps %+v: want propolis steps, the last on incarnation %d", steps, second.Incarnation)
	}
	// ReplaceRegion and the restart's checkout.
	r.checkReplaced(t, disk, old, req, gen+2)
}

// Scenario 33 (the seed's issue #6353 race): the expunged disk holds a rw
// region of disk D and a region snapshot of its snapshot P, so a rw and a
// read-only replacement run at once while the user deletes D and then P.
// Every request ends terminal and nothing is left anywhere. Two orders: D
// deleted as soon as the rw request exists, and D deleted while the rw
// request is Running (a 3 s reconciliation keeps it there), so the drive
// saga finds the volume gone and skips every notification.
func TestScenario33RWAndReadOnlyWhileUserDeletes(t *testing.T) {
	t.Run("delete_at_once", func(t *testing.T) { scenario33(t, false) })
	t.Run("delete_while_running", func(t *testing.T) { scenario33(t, true) })
}

func scenario33(t *testing.T, whileRunning bool) {
	var simArgs []string
	if whileRunning {
		simArgs = []string{"--repair-delay", "3s"}
	}
	r := startRack(t, 4, 2, simArgs...)
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	rs := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, rs.DatasetId))
	want := rwRequested
	if whileRunning {
		want = rwRunning
	}
	harness.Eventually(t, 30*time.Second, fmt.Sprintf("rw request %v", want), func() error {
		for _, q := range r.rwRequests(t) {
			if !whileRunning || q.RegionState == rwRunning {
				return nil
			}
		}
		return fmt.Errorf("none yet")
	})
	r.DeleteVolume(t, disk)
	if whileRunning {
		r.activate(t, "rw_replacement_drive")
	}
	for _, q := range r.WaitRequests(t, 90*time.Second) {
		if q.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
			for i, s := range r.driveSteps(t, q.ReplacementId) {
				t.Logf("rw request %s, new region %q: drive step %d %s", q.ReplacementId, q.NewRegionId, i, s.StepType)
			}
		} else if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("read-only request %s is %v, want complete", q.ReplacementId, q.ReadOnlyState)
		}
	}
	r.DeleteVolume(t, snap)
	harness.Eventually(t, 30*time.Second, "nothing left", func() error {
		regions, err := r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		snaps, err := r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		targets, err := r.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		vols, err := r.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true})
		if err != nil {
			return err
		}
		if len(regions.Regions)+len(snaps.RegionSnapshots)+len(targets.Targets)+len(vols.Volumes) != 0 {
			return fmt.Errorf("%d regions, %d region snapshots, %d targets, %d volumes left",
				len(regions.Regions), len(snaps.RegionSnapshots), len(targets.Targets), len(vols.Volumes))
		}
		return nil
	})
	if n := r.locks(t); n != 0 {
		t.Errorf("%d locks left", n)
	}
	r.Invariants(t)
	// volume-delete detaches every Upstairs built from D (the replacement's
	// own Pantry included) before destroying its regions: no probe finds
	// a destroyed target.
	r.NoDataLoss(t)
}
