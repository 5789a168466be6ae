package tasks

import (
	"context"
	"testing"
	"time"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

func (f *fixture) rwDetector() *rwDetector {
	return &rwDetector{env: f.env, limiter: background.NewLimiter(64, 1)}
}
func (f *fixture) rwDrive() *rwDrive {
	return &rwDrive{env: f.env, limiter: background.NewLimiter(64, 1), drives: pacer{every: redriveEvery}}
}
func (f *fixture) rwFinish() *rwFinish {
	return &rwFinish{env: f.env, limiter: background.NewLimiter(64, 1)}
}

// expungeRegionOf expunges the disk holding a volume's first rw region and
// returns that region's id.
func (f *fixture) expungeRegionOf(volume uuid.UUID) uuid.UUID {
	ctx := context.Background()
	resp, err := f.e.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: volume.String()})
	if err != nil {
		f.t.Fatal(err)
	}
	var region *commonv1.Target
	for _, tg := range resp.Volume.Targets {
		if tg.Kind == commonv1.TargetKind_TARGET_KIND_RW_REGION {
			region = tg
			break
		}
	}
	disks, err := f.e.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 100})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, d := range disks.Disks {
		if d.DatasetId == region.DatasetId {
			if _, err := f.e.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d.DiskId}); err != nil {
				f.t.Fatal(err)
			}
		}
	}
	return uuid.MustParse(region.TargetId)
}

func (f *fixture) rwRequestFor(region uuid.UUID) (store.RWReplacement, bool) {
	reqs, err := f.e.Store.ListRWReplacements(context.Background(), "", uuid.Nil, 1000)
	if err != nil {
		f.t.Fatal(err)
	}
	for _, r := range reqs {
		if r.OldRegionID == region {
			return r, true
		}
	}
	return store.RWReplacement{}, false
}

func allSucceeded(t testing.TB, os []saga.Outcome) {
	t.Helper()
	for _, o := range os {
		if o.Kind != saga.Succeeded {
			t.Fatalf("saga %s: %v", o.SagaID, o.Error())
		}
	}
}

// The three rw tasks move one request through its life: the detector
// creates it (once) and starts rw-replacement-start; the user deletes the disk; the
// drive task's saga finds the volume gone and concludes done without any
// notification; the finish task completes it, releasing the lock.
func TestRWTasksCarryARequestThrough(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 5)
	ctx := context.Background()
	disk := f.disk()
	region := f.expungeRegionOf(disk)

	ds := f.rwDetector().Activate(ctx).(*RWDetectorStatus)
	noErrors(t, ds.Errors)
	if len(ds.RequestsCreatedOK) != 1 || len(ds.StartInvokedOK) != 1 {
		t.Fatalf("detector %+v", ds)
	}
	allSucceeded(t, f.rec.settle(t))
	r, ok := f.rwRequestFor(region)
	if !ok || r.State != store.RWRunning || r.VolumeID != disk {
		t.Fatalf("request %+v", r)
	}
	// Again: one request per region, and nothing Requested to start.
	if again := f.rwDetector().Activate(ctx).(*RWDetectorStatus); len(again.RequestsCreatedOK)+len(again.StartInvokedOK) != 0 {
		t.Fatalf("second pass %+v", again)
	}

	f.delete(disk)
	dr := f.rwDrive().Activate(ctx).(*RWDriveStatus)
	noErrors(t, dr.Errors)
	if len(dr.DriveInvokedOK) != 1 {
		t.Fatalf("drive %+v", dr)
	}
	allSucceeded(t, f.rec.settle(t))
	if r, _ = f.rwRequestFor(region); r.State != store.RWReplacementDone {
		t.Fatalf("after drive: %s", r.State)
	}
	steps, err := f.e.Store.DriveSteps(ctx, r.ID)
	if err != nil || len(steps) != 0 {
		t.Fatalf("a deleted volume's drive recorded steps %+v (%v)", steps, err)
	}

	fs := f.rwFinish().Activate(ctx).(*FinishStatus)
	noErrors(t, fs.Errors)
	if len(fs.FinishInvokedOK) != 1 {
		t.Fatalf("finish %+v", fs)
	}
	allSucceeded(t, f.rec.settle(t))
	if r, _ = f.rwRequestFor(region); r.State != store.RWComplete {
		t.Fatalf("after finish: %s", r.State)
	}
	if _, err := f.e.Store.GetLock(ctx, disk); err == nil {
		t.Error("lock not released")
	}
	if _, err := f.e.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: region.String()}); err == nil {
		t.Error("old region not destroyed")
	}
	if f.rec.count(sagadef.RWStart.Name()) != 1 || f.rec.count(sagadef.RWDrive.Name()) != 1 || f.rec.count(sagadef.RWFinish.Name()) != 1 {
		t.Errorf("sagas started: %+v", f.rec.by)
	}
}

// A rw region of an already deleted volume (kept alive by a snapshot of
// it) gets a request that completes at once, without a saga, releasing
// the lock it took (docs/replacement.md, "rw request": Requested → Complete).
func TestRWDetectorCompletesDeletedVolume(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 5)
	ctx := context.Background()
	disk, region := f.deletedDiskOnAnExpungedDisk()
	ds := f.rwDetector().Activate(ctx).(*RWDetectorStatus)
	noErrors(t, ds.Errors)
	if len(ds.RequestsCreatedOK) != 1 || len(ds.RequestsCompletedOK) != 1 || len(ds.StartInvokedOK) != 0 {
		t.Fatalf("detector %+v", ds)
	}
	f.wantCompleteUnlocked(region, disk)
}

// deletedDiskOnAnExpungedDisk makes a disk, snapshots it and deletes it
// (soft-deleted: its regions are pinned by the snapshot), then expunges the
// physical disk under its first rw region, which it returns.
func (f *fixture) deletedDiskOnAnExpungedDisk() (disk, region uuid.UUID) {
	f.t.Helper()
	disk = f.disk()
	f.snapshot(disk)
	f.delete(disk)
	return disk, f.expungeRegionOf(disk)
}

// wantCompleteUnlocked fails the test unless region's request is Complete
// and volume's lock released.
func (f *fixture) wantCompleteUnlocked(region, volume uuid.UUID) {
	f.t.Helper()
	if r, _ := f.rwRequestFor(region); r.State != store.RWComplete {
		f.t.Fatalf("request is %s", r.State)
	}
	if _, err := f.e.Store.GetLock(context.Background(), volume); err == nil {
		f.t.Error("lock not released")
	}
}

// Another repair holding the volume's lock: no request, no error; the next
// pass after the lock is free creates it, at once, although listings are
// paced: the last one left work to retry.
func TestRWDetectorRetriesContendedLock(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 5)
	ctx := background.WithTrigger(context.Background(), background.TriggerActivation)
	det := f.rwDetector()
	det.listings.every = time.Hour
	disk := f.disk()
	region := f.expungeRegionOf(disk)
	// Scenario 2's other side: a read-only request holding the volume.
	holder, _, err := f.e.Store.InsertROReplacement(ctx, store.ROReplacement{
		ID: uuid.New(), Kind: store.KindReadOnlyRegion, OldTargetID: uuid.New(), OldRegionID: uuid.New(),
		OldSnapshotID: disk, LockVolumeID: disk,
	})
	if err != nil {
		t.Fatal(err)
	}
	ds := det.Activate(ctx).(*RWDetectorStatus)
	noErrors(t, ds.Errors)
	if len(ds.RequestsCreatedOK) != 0 {
		t.Fatalf("created %v while the lock was held", ds.RequestsCreatedOK)
	}
	if _, ok := f.rwRequestFor(region); ok {
		t.Fatal("request created under contention")
	}
	// The holder completes, releasing the lock.
	if err := f.e.Store.SetROCompleteFromRequested(ctx, holder.ID); err != nil {
		t.Fatal(err)
	}
	ds = det.Activate(ctx).(*RWDetectorStatus)
	noErrors(t, ds.Errors)
	if len(ds.RequestsCreatedOK) != 1 {
		t.Fatalf("after release: %+v", ds)
	}
	allSucceeded(t, f.rec.settle(t))
}

// After a clean listing, an activation within listingEvery does not list
// the expunged disks again but schedules a pass that does; once it is due
// an activation lists, and the period, a retry and an operator's request
// always list. Both detectors.
func TestDetectorsPaceListingsOnActivations(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 7) // three expunged, three left for a new disk
	activation := background.WithTrigger(context.Background(), background.TriggerActivation)
	operator := background.WithTrigger(context.Background(), background.TriggerOperator)
	deps := *f.env.Deps
	deps.Wake.RWDetector, deps.Wake.RODetector = func() {}, func() {}
	rw := f.rwDetector()
	rw.env.Deps = &deps
	ro := f.detector()
	ro.env.Deps = &deps
	// every sets both detectors' pacing: an hour, so that a listing stays
	// recent however slow the machine, or 0, so that it is due.
	every := func(d time.Duration) {
		for _, p := range []*listingPacer{&rw.listings, &ro.listings} {
			p.mu.Lock()
			p.every = d
			p.mu.Unlock()
		}
	}
	scheduled := func() bool {
		ok := true
		for _, p := range []*listingPacer{&rw.listings, &ro.listings} {
			p.mu.Lock()
			ok = ok && p.followUp
			p.mu.Unlock()
		}
		return ok
	}
	pass := func(ctx context.Context) (*RWDetectorStatus, *DetectorStatus) {
		t.Helper()
		rs := rw.Activate(ctx).(*RWDetectorStatus)
		noErrors(t, rs.Errors)
		os := ro.Activate(ctx).(*DetectorStatus)
		noErrors(t, os.Errors)
		return rs, os
	}
	hasRequests := func(step string, region uuid.UUID, snap uuid.UUID, want bool) {
		t.Helper()
		if _, ok := f.rwRequestFor(region); ok != want {
			t.Errorf("%s: rw request for region %s: %v, want %v", step, region, ok, want)
		}
		reqs, err := f.e.Store.ListROReplacements(context.Background(), "", uuid.Nil, 1000)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, r := range reqs {
			found = found || r.OldSnapshotID == snap
		}
		if found != want {
			t.Errorf("%s: read-only request for snapshot %s: %v, want %v", step, snap, found, want)
		}
	}
	// expunge expunges a new disk's first region, under a snapshot of
	// the disk: one rw and one read-only target to detect.
	expunge := func() (region, snap uuid.UUID) {
		disk := f.disk()
		snap = f.snapshot(disk)
		return f.expungeRegionOf(disk), snap
	}

	every(time.Hour)
	r1, s1 := expunge()
	rs, os := pass(activation)
	if rs.ListingPaced || os.ListingPaced {
		t.Fatalf("first pass paced: %+v %+v", rs, os)
	}
	hasRequests("first pass", r1, s1, true)

	r2, s2 := expunge()
	rs, os = pass(activation)
	if !rs.ListingPaced || !os.ListingPaced {
		t.Fatalf("an activation right after a clean listing listed: %+v %+v", rs, os)
	}
	hasRequests("paced pass", r2, s2, false)
	if !scheduled() {
		t.Fatal("no pass scheduled for the put-off listing")
	}
	every(0)
	rs, os = pass(activation)
	if rs.ListingPaced || os.ListingPaced {
		t.Fatalf("a pass once the listing was due was paced: %+v %+v", rs, os)
	}
	hasRequests("pass when due", r2, s2, true)

	every(time.Hour)
	r3, s3 := expunge()
	rs, os = pass(operator)
	if rs.ListingPaced || os.ListingPaced {
		t.Fatalf("an operator's pass was paced: %+v %+v", rs, os)
	}
	hasRequests("operator's pass", r3, s3, true)
	allSucceeded(t, f.rec.settle(t))
}

// One pass requests every rw region of an expunged disk, several at once,
// each exactly once, and reports each once; the next pass creates none.
func TestRWDetectorRequestsEveryRegionOfADisk(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	ctx := context.Background()
	var disks []uuid.UUID
	for range 3 * requestWorkers {
		disks = append(disks, f.disk())
	}
	f.expungeRegionOf(disks[0])
	// The regions on the expunged disk, read before the pass: its sagas
	// go on to replace them in their volumes.
	expunged := map[string]bool{}
	disksResp, err := f.e.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disksResp.Disks {
		if d.Policy == allocatorv1.Policy_POLICY_EXPUNGED {
			expunged[d.DatasetId] = true
		}
	}
	var onDisk []uuid.UUID
	for _, v := range disks {
		resp, err := f.e.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: v.String()})
		if err != nil {
			t.Fatal(err)
		}
		for _, tg := range resp.Volume.Targets {
			if tg.Kind == commonv1.TargetKind_TARGET_KIND_RW_REGION && expunged[tg.DatasetId] {
				onDisk = append(onDisk, uuid.MustParse(tg.TargetId))
			}
		}
	}
	want := len(onDisk)
	det := f.rwDetector()
	ds := det.Activate(ctx).(*RWDetectorStatus)
	noErrors(t, ds.Errors)
	for _, region := range onDisk {
		if _, ok := f.rwRequestFor(region); !ok {
			t.Errorf("region %s: no request", region)
		}
	}
	if want < requestWorkers || len(ds.RequestsCreatedOK) != want {
		t.Fatalf("%d requests reported for %d regions on the disk (want at least %d regions): %v", len(ds.RequestsCreatedOK), want, requestWorkers, ds.RequestsCreatedOK)
	}
	reqs, err := f.e.Store.ListRWReplacements(ctx, "", uuid.Nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if len(reqs) != want {
		t.Errorf("%d requests stored, want %d", len(reqs), want)
	}
	if again := det.Activate(ctx).(*RWDetectorStatus); len(again.RequestsCreatedOK) != 0 {
		t.Errorf("second pass created %v", again.RequestsCreatedOK)
	}
	allSucceeded(t, f.rec.settle(t))
}
