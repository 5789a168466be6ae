package tasks

import (
	"context"
	"io"
	"log/slog"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// Every test starts a deployment of its own (newFixture), so they run in
// parallel: most of a test is waiting on the processes.
func TestMain(m *testing.M) { testenv.Main(m) }

const gib = 1 << 30

// recorder is the tasks' saga starter: it runs the real saga on the test's
// SEC and records what was started.
type recorder struct {
	e  *testenv.Env
	mu sync.Mutex
	by map[string][]uuid.UUID // template → saga ids
	ch []<-chan saga.Outcome
}

func (r *recorder) start(ctx context.Context, t *saga.Template, params any, opts ...saga.CreateOption) (uuid.UUID, <-chan saga.Outcome, error) {
	id, err := r.e.SEC.Create(ctx, t, params, opts...)
	if err != nil {
		return uuid.Nil, nil, err
	}
	done := make(chan saga.Outcome, 1)
	mine := make(chan saga.Outcome, 1)
	go func() {
		o, _ := r.e.SEC.Wait(context.Background(), id)
		done <- o
		mine <- o
	}()
	r.mu.Lock()
	r.by[t.Name()] = append(r.by[t.Name()], id)
	r.ch = append(r.ch, mine)
	r.mu.Unlock()
	return id, done, nil
}

func (r *recorder) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.by[name])
}

// settle waits for every saga started so far.
func (r *recorder) settle(t testing.TB) []saga.Outcome {
	t.Helper()
	r.mu.Lock()
	chs := r.ch
	r.ch = nil
	r.mu.Unlock()
	var out []saga.Outcome
	for _, c := range chs {
		select {
		case o := <-c:
			out = append(out, o)
		case <-time.After(60 * time.Second):
			t.Fatal("saga did not finish")
		}
	}
	return out
}

type fixture struct {
	t   *testing.T
	e   *testenv.Env
	rec *recorder
	env Env
}

func newFixture(t *testing.T, sleds int) *fixture {
	e := testenv.Start(t, testenv.Options{})
	e.SeedRack(t, sleds, 1, 100*gib)
	rec := &recorder{e: e, by: map[string][]uuid.UUID{}}
	return &fixture{t: t, e: e, rec: rec, env: Env{
		Deps: e.Deps, Start: rec.start, Period: time.Hour, MaxSagas: 64,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}}
}

func (f *fixture) detector() *roDetector { return &roDetector{env: f.env} }
func (f *fixture) start() *roStart {
	return &roStart{env: f.env, limiter: background.NewLimiter(64, 1)}
}
func (f *fixture) gc() *roGC { return &roGC{env: f.env, limiter: background.NewLimiter(64, 1)} }
func (f *fixture) step() *roStep {
	return &roStep{env: f.env, limiter: background.NewLimiter(64, 1), scans: pacer{every: rescanEvery}}
}
func (f *fixture) finish() *roFinish {
	return &roFinish{env: f.env, limiter: background.NewLimiter(64, 1)}
}

func (f *fixture) disk() uuid.UUID {
	g, _ := sagadef.GeometryFor(gib, 512)
	p := sagadef.RegionSetParams{VolumeID: uuid.New(), Geometry: &g}
	f.e.MustSucceed(f.t, sagadef.VolumeCreate, p)
	return p.VolumeID
}

func (f *fixture) snapshot(disk uuid.UUID) uuid.UUID {
	p := sagadef.SnapshotParams{DiskVolumeID: disk, SnapshotID: uuid.New()}
	f.e.MustSucceed(f.t, sagadef.SnapshotCreate, p)
	return p.SnapshotID
}

func (f *fixture) clone(snap uuid.UUID) uuid.UUID {
	p := sagadef.RegionSetParams{VolumeID: uuid.New(), SnapshotID: &snap}
	f.e.MustSucceed(f.t, sagadef.VolumeClone, p)
	return p.VolumeID
}

func (f *fixture) delete(v uuid.UUID) {
	f.e.MustSucceed(f.t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: v})
}

func (f *fixture) regionSnapshots(snap uuid.UUID) []*commonv1.Target {
	resp, err := f.e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: snap.String()})
	if err != nil {
		f.t.Fatal(err)
	}
	var out []*commonv1.Target
	for _, tg := range resp.Volume.Targets {
		if tg.Kind == commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT {
			out = append(out, tg)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

func (f *fixture) request(snap uuid.UUID, tg *commonv1.Target) store.ROReplacement {
	ds := uuid.MustParse(tg.DatasetId)
	r, _, err := f.e.Store.InsertROReplacement(context.Background(), store.ROReplacement{
		ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.MustParse(tg.TargetId),
		OldRegionID: uuid.MustParse(tg.RegionId), OldDatasetID: &ds, OldSnapshotID: snap, LockVolumeID: snap,
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// requestOfGoneTarget makes a Requested request for a region snapshot,
// then deletes the snapshot and its disk, so its target is gone.
func (f *fixture) requestOfGoneTarget() (store.ROReplacement, uuid.UUID) {
	disk := f.disk()
	snap := f.snapshot(disk)
	r := f.request(snap, f.regionSnapshots(snap)[0])
	f.delete(snap)
	f.delete(disk)
	return r, snap
}

func (f *fixture) get(id uuid.UUID) store.ROReplacement {
	r, err := f.e.Store.GetROReplacement(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return r
}

// toRunning drives a request through start and garbage collect.
func (f *fixture) toRunning(r store.ROReplacement) store.ROReplacement {
	f.e.MustSucceed(f.t, sagadef.ROStart, sagadef.StartParams{
		RequestID: r.ID, Kind: string(r.Kind), OldTargetID: r.OldTargetID, OldRegionID: r.OldRegionID,
		OldSnapshotID: r.OldSnapshotID, OldDatasetID: r.OldDatasetID,
	})
	r = f.get(r.ID)
	f.e.MustSucceed(f.t, sagadef.ROGarbageCollect, sagadef.GCParams{RequestID: r.ID, StashID: *r.OldSnapshotVolumeID})
	return f.get(r.ID)
}

func noErrors(t testing.TB, errs []string) {
	t.Helper()
	if len(errs) != 0 {
		t.Fatalf("task errors: %v", errs)
	}
}

// Scenario 18: the start task with nothing to do, then with one request.
func TestStartTaskStartsRequestedRequests(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	st := f.start().Activate(context.Background()).(*StartStatus)
	if len(st.StartInvokedOK)+len(st.RequestsCompletedOK)+len(st.Errors) != 0 || f.rec.count("ro-replacement-start") != 0 {
		t.Fatalf("idle start task did something: %+v", st)
	}
	snap := f.snapshot(f.disk())
	r := f.request(snap, f.regionSnapshots(snap)[0])
	st = f.start().Activate(context.Background()).(*StartStatus)
	noErrors(t, st.Errors)
	if len(st.StartInvokedOK) != 1 || st.StartInvokedOK[0] != "request "+r.ID.String() || f.rec.count("ro-replacement-start") != 1 {
		t.Fatalf("status %+v, %d sagas", st, f.rec.count("ro-replacement-start"))
	}
	f.rec.settle(t)
	if got := f.get(r.ID); got.State != store.ROReplacementDone {
		t.Fatalf("request %s", got.State)
	}
}

// Scenario 19: expunging a disk that holds one region snapshot creates one
// request for exactly that region snapshot, and the start task starts it.
func TestDetectorCreatesRequestForExpungedDisk(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	rs := f.regionSnapshots(snap)[1]
	ctx := context.Background()
	disks, err := f.e.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks.Disks {
		if d.DatasetId == rs.DatasetId {
			if _, err := f.e.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d.DiskId}); err != nil {
				t.Fatal(err)
			}
		}
	}
	ds := f.detector().Activate(ctx).(*DetectorStatus)
	noErrors(t, ds.Errors)
	if len(ds.RequestsCreatedOK) != 1 {
		t.Fatalf("created %v", ds.RequestsCreatedOK)
	}
	r, err := f.e.Store.GetROReplacementByTarget(ctx, uuid.MustParse(rs.TargetId))
	if err != nil {
		t.Fatal(err)
	}
	if r.OldDatasetID == nil || r.OldDatasetID.String() != rs.DatasetId || ds.RequestsCreatedOK[0] != "created request "+r.ID.String() {
		t.Fatalf("request %+v, status %v", r, ds.RequestsCreatedOK)
	}
	// Running it again creates nothing new.
	if again := f.detector().Activate(ctx).(*DetectorStatus); len(again.RequestsCreatedOK) != 0 {
		t.Fatalf("second pass created %v", again.RequestsCreatedOK)
	}
	st := f.start().Activate(ctx).(*StartStatus)
	noErrors(t, st.Errors)
	if len(st.StartInvokedOK) != 1 || st.StartInvokedOK[0] != "request "+r.ID.String() {
		t.Fatalf("start %+v", st)
	}
	f.rec.settle(t)
}

// Scenario 20: a Requested request whose target is gone completes without a
// saga, releasing the snapshot volume's lock.
func TestStartTaskCompletesGoneTarget(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	r, snap := f.requestOfGoneTarget()
	st := f.start().Activate(context.Background()).(*StartStatus)
	noErrors(t, st.Errors)
	if len(st.StartInvokedOK) != 0 || len(st.RequestsCompletedOK) != 1 || f.rec.count("ro-replacement-start") != 0 {
		t.Fatalf("status %+v", st)
	}
	if got := f.get(r.ID); got.State != store.ROComplete {
		t.Fatalf("request %s", got.State)
	}
	if _, err := f.e.Store.GetLock(context.Background(), snap); err == nil {
		t.Fatal("lock kept")
	}
}

// Scenario 21: the step task creates steps for exactly the volumes that
// still name the old target, and starts them; nothing else.
func TestStepTaskFansOut(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	other := f.snapshot(f.disk())
	c1, c2 := f.clone(snap), f.clone(snap)
	f.clone(other)
	f.clone(other)
	r := f.toRunning(f.request(snap, f.regionSnapshots(snap)[0]))
	st := f.step().Activate(context.Background()).(*StepStatus)
	noErrors(t, st.Errors)
	if len(st.StepRecordsCreatedOK) != 2 || len(st.StepInvokedOK) != 2 || len(st.StepGarbageCollectInvokedOK) != 0 {
		t.Fatalf("status %+v", st)
	}
	steps, err := f.e.Store.StepsOfRequest(context.Background(), r.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	vols := map[uuid.UUID]bool{}
	for _, s := range steps {
		vols[s.VolumeID] = true
	}
	if len(vols) != 2 || !vols[c1] || !vols[c2] {
		t.Fatalf("steps for %v, want %s and %s", vols, c1, c2)
	}
	f.rec.settle(t)
}

// Scenario 22: Complete steps are collected first, and only that.
func TestStepTaskCollectsCompleteSteps(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	f.clone(snap)
	f.clone(snap)
	r := f.toRunning(f.request(snap, f.regionSnapshots(snap)[0]))
	f.step().Activate(context.Background())
	f.rec.settle(t) // both steps Complete
	steps, _ := f.e.Store.StepsOfRequest(context.Background(), r.ID, store.StepComplete)
	if len(steps) != 2 {
		t.Fatalf("%d complete steps", len(steps))
	}
	st := f.step().Activate(context.Background()).(*StepStatus)
	noErrors(t, st.Errors)
	if len(st.StepGarbageCollectInvokedOK) != 2 || len(st.StepRecordsCreatedOK) != 0 || len(st.StepInvokedOK) != 0 {
		t.Fatalf("status %+v", st)
	}
	f.rec.settle(t)
}

// Scenarios 23 and 40: finish waits for every step to be collected and for
// the old target to be gone — not before any step exists, not while a step
// is Complete.
func TestFinishWaitsForStepsAndTarget(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	f.clone(snap)
	f.clone(snap)
	r := f.toRunning(f.request(snap, f.regionSnapshots(snap)[0]))
	finish := func() *FinishStatus {
		st := f.finish().Activate(context.Background()).(*FinishStatus)
		noErrors(t, st.Errors)
		return st
	}
	if st := finish(); len(st.FinishInvokedOK) != 0 {
		t.Fatalf("finished before any step (clones still name the target): %+v", st)
	}
	f.step().Activate(context.Background())
	f.rec.settle(t)
	if st := finish(); len(st.FinishInvokedOK) != 0 {
		t.Fatalf("finished with Complete steps: %+v", st)
	}
	// Collect one step, then the other.
	steps, _ := f.e.Store.StepsOfRequest(context.Background(), r.ID, store.StepComplete)
	f.e.MustSucceed(t, sagadef.ROStepGarbageCollect, sagadef.StepGCParams{StepID: steps[0].ID, StashID: *steps[0].OldSnapshotVolumeID})
	if st := finish(); len(st.FinishInvokedOK) != 0 {
		t.Fatalf("finished with a Complete step left: %+v", st)
	}
	f.e.MustSucceed(t, sagadef.ROStepGarbageCollect, sagadef.StepGCParams{StepID: steps[1].ID, StashID: *steps[1].OldSnapshotVolumeID})
	st := finish()
	if len(st.FinishInvokedOK) != 1 || st.FinishInvokedOK[0] != "request "+r.ID.String() {
		t.Fatalf("status %+v", st)
	}
	f.rec.settle(t)
	if got := f.get(r.ID); got.State != store.ROComplete {
		t.Fatalf("request %s", got.State)
	}
}

// Scenario 24: ReplacementDone requests get a garbage collect each.
func TestGCTaskStartsGarbageCollect(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	var ids []uuid.UUID
	for i := 0; i < 2; i++ {
		snap := f.snapshot(f.disk())
		r := f.request(snap, f.regionSnapshots(snap)[0])
		f.e.MustSucceed(t, sagadef.ROStart, sagadef.StartParams{
			RequestID: r.ID, Kind: string(r.Kind), OldTargetID: r.OldTargetID, OldRegionID: r.OldRegionID,
			OldSnapshotID: r.OldSnapshotID, OldDatasetID: r.OldDatasetID,
		})
		ids = append(ids, r.ID)
	}
	st := f.gc().Activate(context.Background()).(*GCStatus)
	noErrors(t, st.Errors)
	if len(st.GarbageCollectRequested) != 2 || f.rec.count("ro-replacement-garbage-collect") != 2 {
		t.Fatalf("status %+v", st)
	}
	f.rec.settle(t)
	for _, id := range ids {
		if got := f.get(id); got.State != store.RORunning {
			t.Fatalf("request %s", got.State)
		}
	}
}

// Scenario 41: a volume held by another repair gets no step and no error;
// once released, the next pass creates it.
func TestContendedStepIsRetried(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	c := f.clone(snap)
	f.toRunning(f.request(snap, f.regionSnapshots(snap)[0]))
	foreign := uuid.New()
	if err := f.e.Store.LockVolume(context.Background(), c, foreign, store.HolderSnapshotCreate); err != nil {
		t.Fatal(err)
	}
	st := f.step().Activate(context.Background()).(*StepStatus)
	noErrors(t, st.Errors)
	if len(st.StepRecordsCreatedOK) != 0 {
		t.Fatalf("step created on a locked volume: %+v", st)
	}
	if err := f.e.Store.UnlockVolume(context.Background(), c, foreign); err != nil {
		t.Fatal(err)
	}
	st = f.step().Activate(context.Background()).(*StepStatus)
	noErrors(t, st.Errors)
	if len(st.StepRecordsCreatedOK) != 1 {
		t.Fatalf("no step after the lock was released: %+v", st)
	}
	f.rec.settle(t)
}

// Scenario 42: two start sagas for one request; exactly one reaches
// ReplacementDone, the other unwinds at its claim, and one region exists.
func TestDuplicateStartSagas(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	r := f.request(snap, f.regionSnapshots(snap)[0])
	p := sagadef.StartParams{
		RequestID: r.ID, Kind: string(r.Kind), OldTargetID: r.OldTargetID, OldRegionID: r.OldRegionID,
		OldSnapshotID: r.OldSnapshotID, OldDatasetID: r.OldDatasetID,
	}
	var wg sync.WaitGroup
	outcomes := make([]saga.Outcome, 2)
	for i := range outcomes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i] = f.e.Run(t, sagadef.ROStart, p)
		}()
	}
	wg.Wait()
	won := 0
	for _, o := range outcomes {
		switch {
		case o.Kind == saga.Succeeded:
			won++
		case o.Kind == saga.Failed && o.FailedNode == "set_saga_id":
		default:
			t.Fatalf("outcome %v at %s: %v", o.Kind, o.FailedNode, o.Error())
		}
	}
	if won != 1 {
		t.Fatalf("%d sagas succeeded", won)
	}
	if got := f.get(r.ID); got.State != store.ROReplacementDone {
		t.Fatalf("request %s", got.State)
	}
	regions, err := f.e.Allocator.ListRegions(context.Background(), &allocatorv1.ListRegionsRequest{AllocatedFor: snap.String()})
	if err != nil || len(regions.Regions) != 1 {
		t.Fatalf("%d regions for the snapshot volume: %v", len(regions.GetRegions()), err)
	}
	sagatest.NoUndoFailed(t, f.e.Pool)
}
