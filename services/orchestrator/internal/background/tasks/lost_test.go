package tasks

import (
	"context"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/db"
	"storagecp.dev/testsupport/pgproxy"
	"storagecp.dev/testsupport/stack"
)

// losingEnv is f.env with a store whose database connection loses the
// answer to the first COMMIT whose statements contain statement (the
// transaction is applied; the caller sees a broken connection), and wake
// functions that count.
func (f *fixture) losingEnv(statement string) (Env, map[string]*atomic.Int32) {
	f.t.Helper()
	dsn, proxies, err := pgproxy.WrapDSN(f.e.Stack.DSN(stack.DatabaseOf(stack.Orchestrator)))
	if err != nil {
		f.t.Fatal(err)
	}
	var lost atomic.Int32
	for _, p := range proxies {
		f.t.Cleanup(p.Close)
		p.SetPolicy(func(c pgproxy.Commit) bool { return c.Touches(statement) && lost.Add(1) == 1 })
	}
	pool, err := db.Open(context.Background(), dsn)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(pool.Close)
	deps := *f.e.Deps
	deps.Store = store.New(pool)
	woken := map[string]*atomic.Int32{"ro_start": {}, "ro_detector": {}}
	deps.Wake = sagadef.Wake{
		ROStart:    func() { woken["ro_start"].Add(1) },
		RODetector: func() { woken["ro_detector"].Add(1) },
	}
	env := f.env
	env.Deps = &deps
	return env, woken
}

func (f *fixture) expungeDataset(dataset string) {
	f.t.Helper()
	ctx := context.Background()
	disks, err := f.e.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 100})
	if err != nil {
		f.t.Fatal(err)
	}
	for _, d := range disks.Disks {
		if d.DatasetId == dataset {
			if _, err := f.e.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d.DiskId}); err != nil {
				f.t.Fatal(err)
			}
		}
	}
}

// A detector pass whose request insert loses its COMMIT answer sees an
// error, yet the request exists. The pass cannot wake the start task (it
// does not know it created anything); the next pass, finding the request,
// must. Before, it found the request, took it for an older one and woke
// nobody: the request waited for the start task's period (an hour under
// tests, TestAmbiguousCommits' stuck region-snapshot request).
func TestDetectorWakesStartAfterItsInsertLostItsAnswer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	snap := f.snapshot(f.disk())
	rs := f.regionSnapshots(snap)[1]
	f.expungeDataset(rs.DatasetId)
	env, woken := f.losingEnv("INSERT INTO ro_replacement ")
	det := &roDetector{env: env}
	ctx := context.Background()

	first := det.Activate(ctx).(*DetectorStatus)
	if len(first.Errors) != 1 || len(first.RequestsCreatedOK) != 0 || woken["ro_start"].Load() != 0 {
		t.Fatalf("the pass that lost its answer: %+v, start woken %d times", first, woken["ro_start"].Load())
	}
	r, err := f.e.Store.GetROReplacementByTarget(ctx, uuid.MustParse(rs.TargetId))
	if err != nil {
		t.Fatalf("the insert whose answer was lost did not commit: %v", err)
	}
	second := det.Activate(ctx).(*DetectorStatus)
	noErrors(t, second.Errors)
	if woken["ro_start"].Load() != 1 || len(second.RequestsCreatedOK) != 1 {
		t.Fatalf("the pass that found request %s: %+v, start woken %d times, want once", r.ID, second, woken["ro_start"].Load())
	}
	// Owed once: a third pass wakes nobody.
	if third := det.Activate(ctx).(*DetectorStatus); len(third.RequestsCreatedOK) != 0 || woken["ro_start"].Load() != 1 {
		t.Fatalf("third pass: %+v, start woken %d times", third, woken["ro_start"].Load())
	}
}

// The start task completing a request whose target is gone wakes the
// detector (the snapshot's lock is free for its next target). When the
// completion loses its COMMIT answer, the next pass, no longer finding the
// request Requested, sends that wakeup.
func TestStartWakesDetectorAfterACompletionLostItsAnswer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 4)
	r, _ := f.requestOfGoneTarget()
	env, woken := f.losingEnv("UPDATE ro_replacement SET state")
	start := &roStart{env: env, limiter: f.start().limiter}
	ctx := context.Background()

	first := start.Activate(ctx).(*StartStatus)
	if len(first.Errors) == 0 || woken["ro_detector"].Load() != 0 {
		t.Fatalf("the pass that lost its answer: %+v, detector woken %d times", first, woken["ro_detector"].Load())
	}
	if got := f.get(r.ID); got.State != store.ROComplete {
		t.Fatalf("the completion whose answer was lost did not commit: %s", got.State)
	}
	second := start.Activate(ctx).(*StartStatus)
	noErrors(t, second.Errors)
	if woken["ro_detector"].Load() != 1 {
		t.Fatalf("second pass: %+v, detector woken %d times, want once", second, woken["ro_detector"].Load())
	}
	start.Activate(ctx)
	if n := woken["ro_detector"].Load(); n != 1 {
		t.Fatalf("detector woken %d times after a third pass, want once", n)
	}
}
