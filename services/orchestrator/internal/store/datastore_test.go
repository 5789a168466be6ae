package store_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "orchestrator", Migrations: migrations.FS})
}

func newStore(t *testing.T) *store.Store {
	return store.New(pgtest.NewPool(t, "orchestrator"))
}

func roRequest(lockVolume uuid.UUID) store.ROReplacement {
	ds := uuid.New()
	return store.ROReplacement{
		ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.New(), OldRegionID: uuid.New(),
		OldDatasetID: &ds, OldSnapshotID: lockVolume, LockVolumeID: lockVolume,
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got %v, want %v", err, target)
	}
}

// Scenario 1: one request per snapshot volume.
func TestOneRequestPerVolume(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	x := uuid.New()
	_, created, err := s.InsertROReplacement(ctx, roRequest(x))
	must(t, err)
	if !created {
		t.Fatal("first request not created")
	}
	_, _, err = s.InsertROReplacement(ctx, roRequest(x))
	wantErr(t, err, store.ErrLockHeld)
	if err.Error() != "volume repair lock" {
		t.Fatalf("lock error text %q", err)
	}
}

// Asking twice for the same target returns the existing request.
func TestRequestKeyedByTarget(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r := roRequest(uuid.New())
	first, _, err := s.InsertROReplacement(ctx, r)
	must(t, err)
	again := roRequest(r.LockVolumeID)
	again.OldTargetID = r.OldTargetID
	second, created, err := s.InsertROReplacement(ctx, again)
	must(t, err)
	if created || second.ID != first.ID {
		t.Fatalf("second request for the same target: created=%v id=%s, want existing %s", created, second.ID, first.ID)
	}
}

// Scenario 2: a read-only request's lock blocks a rw replacement on the volume.
func TestRequestBlocksRegionReplacement(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	x := uuid.New()
	_, _, err := s.InsertROReplacement(ctx, roRequest(x))
	must(t, err)
	_, _, err = s.InsertRWReplacement(ctx, store.RWReplacement{ID: uuid.New(), OldRegionID: uuid.New(), VolumeID: x})
	wantErr(t, err, store.ErrLockHeld)
}

// Scenario 3: in-progress step counting.
func TestStepCounting(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	insert := func() store.Step {
		st := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
		res, err := s.InsertStep(ctx, st)
		must(t, err)
		if !res.Inserted {
			t.Fatal("not inserted")
		}
		return st
	}
	count := func(want int64) {
		t.Helper()
		n, err := s.InProgressSteps(ctx, r.ID)
		must(t, err)
		if n != want {
			t.Fatalf("in progress %d, want %d", n, want)
		}
	}
	insert()
	count(1)
	running := insert()
	must(t, s.SetStepRunning(ctx, running.ID, uuid.New()))
	count(2)
	deleted := insert()
	must(t, s.SetStepVolumeDeletedFromRequested(ctx, deleted.ID))
	count(2)
	req, err := s.StepsIn(ctx, store.StepRequested, 100)
	must(t, err)
	if len(req) != 1 {
		t.Fatalf("requested steps %d, want 1", len(req))
	}
}

// Scenario 4: one active step per volume.
func TestOneActiveStepPerVolume(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	v := uuid.New()
	s1 := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: v}
	res, err := s.InsertStep(ctx, s1)
	must(t, err)
	if !res.Inserted {
		t.Fatal("s1 not inserted")
	}
	s2 := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: v}
	if res, err = s.InsertStep(ctx, s2); err != nil || res.Inserted || res.Existing != s1.ID {
		t.Fatalf("s2 while s1 requested: %+v %v", res, err)
	}
	saga := uuid.New()
	must(t, s.SetStepRunning(ctx, s1.ID, saga))
	if res, err = s.InsertStep(ctx, s2); err != nil || res.Inserted || res.Existing != s1.ID {
		t.Fatalf("s2 while s1 running: %+v %v", res, err)
	}
	must(t, s.SetStepComplete(ctx, s1.ID, saga, uuid.New()))
	if res, err = s.InsertStep(ctx, s2); err != nil || !res.Inserted {
		t.Fatalf("s2 after s1 complete: %+v %v", res, err)
	}
	gc := uuid.New()
	must(t, s.SetStepCollecting(ctx, s1.ID, gc))
	must(t, s.SetStepVolumeDeleted(ctx, s1.ID, gc))
	must(t, s.SetStepVolumeDeleted(ctx, s1.ID, gc)) // re-run
}

// Scenario 5: Complete steps are listed for garbage collection.
func TestCompleteStepsListedForGC(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	var ids []uuid.UUID
	for i := 0; i < 2; i++ {
		st := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
		_, err := s.InsertStep(ctx, st)
		must(t, err)
		ids = append(ids, st.ID)
	}
	got, err := s.StepsIn(ctx, store.StepComplete, 100)
	must(t, err)
	if len(got) != 0 {
		t.Fatalf("complete before any completed: %d", len(got))
	}
	for _, id := range ids {
		saga := uuid.New()
		must(t, s.SetStepRunning(ctx, id, saga))
		must(t, s.SetStepComplete(ctx, id, saga, uuid.New()))
	}
	got, err = s.StepsIn(ctx, store.StepComplete, 100)
	must(t, err)
	if len(got) != 2 {
		t.Fatalf("complete steps %d, want 2", len(got))
	}
}

// Scenario 6: a step's stash is never a step target.
func TestStashIsNotAStepTarget(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	first := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
	_, err = s.InsertStep(ctx, first)
	must(t, err)
	saga, stash := uuid.New(), uuid.New()
	must(t, s.SetStepRunning(ctx, first.ID, saga))
	must(t, s.SetStepComplete(ctx, first.ID, saga, stash))
	res, err := s.InsertStep(ctx, store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: stash})
	must(t, err)
	if res.Inserted || res.Existing != first.ID {
		t.Fatalf("step for a stash: %+v", res)
	}
}

// Scenario 7: a rw replacement's lock blocks a step on its volume.
func TestRegionReplacementBlocksStep(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	v := uuid.New()
	_, _, err := s.InsertRWReplacement(ctx, store.RWReplacement{ID: uuid.New(), OldRegionID: uuid.New(), VolumeID: v})
	must(t, err)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	_, err = s.InsertStep(ctx, store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: v})
	wantErr(t, err, store.ErrLockHeld)
}

// Scenario 8: the repair lock.
func TestRepairLock(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	v, a, b := uuid.New(), uuid.New(), uuid.New()
	must(t, s.LockVolume(ctx, v, a, store.HolderSnapshotCreate))
	must(t, s.LockVolume(ctx, v, a, store.HolderSnapshotCreate)) // re-entrant
	wantErr(t, s.LockVolume(ctx, v, b, store.HolderSnapshotCreate), store.ErrLockHeld)
	// A volume that does not exist anywhere can be locked (no existence check
	// here at all: the orchestrator does not own volumes).
	must(t, s.LockVolume(ctx, uuid.New(), b, store.HolderSnapshotCreate))
	must(t, s.UnlockVolume(ctx, v, b)) // not the holder: silent no-op
	l, err := s.GetLock(ctx, v)
	must(t, err)
	if l.RepairID != a {
		t.Fatalf("lock released by a non-holder: %+v", l)
	}
	must(t, s.UnlockVolume(ctx, v, a))
	_, err = s.GetLock(ctx, v)
	wantErr(t, err, store.ErrNotFound)
	must(t, s.UnlockVolume(ctx, v, a)) // no lock: silent
}

// The full read-only request state machine, every transition run twice, with
// the lock released exactly at the terminal transition.
func TestROReplacementLifecycle(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	twice := func(f func() error) {
		t.Helper()
		must(t, f())
		must(t, f())
	}
	start, gc, finish := uuid.New(), uuid.New(), uuid.New()
	newRegion, newRegionVol, stash := uuid.New(), uuid.New(), uuid.New()
	twice(func() error { return s.SetROAllocating(ctx, r.ID, start) })
	twice(func() error { return s.UndoROAllocating(ctx, r.ID, start) })
	twice(func() error { return s.SetROAllocating(ctx, r.ID, start) })
	// Another saga cannot claim while it is owned.
	wantErr(t, s.SetROAllocating(ctx, r.ID, uuid.New()), store.ErrConflict)
	twice(func() error { return s.SetROReplacementDone(ctx, r.ID, start, newRegion, newRegionVol, stash) })
	wantErr(t, s.SetROReplacementDone(ctx, r.ID, start, uuid.New(), newRegionVol, stash), store.ErrConflict)
	twice(func() error { return s.SetRODeletingOldVolume(ctx, r.ID, gc) })
	twice(func() error { return s.SetRORunning(ctx, r.ID, gc) })
	twice(func() error { return s.SetROCompleting(ctx, r.ID, finish) })
	twice(func() error { return s.UndoROCompleting(ctx, r.ID, finish) })
	twice(func() error { return s.SetROCompleting(ctx, r.ID, finish) })
	if _, err := s.GetLock(ctx, r.LockVolumeID); err != nil {
		t.Fatalf("lock released before Complete: %v", err)
	}
	twice(func() error { return s.SetROComplete(ctx, r.ID, finish) })
	if _, err := s.GetLock(ctx, r.LockVolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lock not released at Complete: %v", err)
	}
	got, err := s.GetROReplacement(ctx, r.ID)
	must(t, err)
	if got.State != store.ROComplete || got.OperatingSagaID != nil || *got.NewRegionID != newRegion {
		t.Fatalf("final record %+v", got)
	}
}

// A commit re-run after the next saga already claimed the record succeeds
// (the crash window between a commit and its log record), while a claim by
// a stranger conflicts.
func TestCommitRerunAfterNextClaim(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	start, gc, finish := uuid.New(), uuid.New(), uuid.New()
	must(t, s.SetROAllocating(ctx, r.ID, start))
	must(t, s.SetROReplacementDone(ctx, r.ID, start, uuid.New(), uuid.New(), uuid.New()))
	must(t, s.SetRODeletingOldVolume(ctx, r.ID, gc))
	must(t, s.SetRORunning(ctx, r.ID, gc))
	must(t, s.SetROCompleting(ctx, r.ID, finish))
	must(t, s.SetRORunning(ctx, r.ID, gc)) // gc's commit replayed: already happened
	// An undo replayed after the next saga claimed is also harmless.
	must(t, s.UndoRODeletingOldVolume(ctx, r.ID, gc))
	got, err := s.GetROReplacement(ctx, r.ID)
	must(t, err)
	if got.State != store.ROCompleting || *got.OperatingSagaID != finish {
		t.Fatalf("replays changed the record: %+v", got)
	}
}

// R10: the Requested → Complete shortcut releases the lock; it refuses a
// request that has a new-region volume or is owned.
func TestCompleteFromRequested(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	must(t, s.SetROCompleteFromRequested(ctx, r.ID))
	must(t, s.SetROCompleteFromRequested(ctx, r.ID))
	if _, err := s.GetLock(ctx, r.LockVolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lock kept: %v", err)
	}
	owned, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	must(t, s.SetROAllocating(ctx, owned.ID, uuid.New()))
	wantErr(t, s.SetROCompleteFromRequested(ctx, owned.ID), store.ErrConflict)
	if _, err := s.GetLock(ctx, owned.LockVolumeID); err != nil {
		t.Fatalf("a refused shortcut released the lock: %v", err)
	}
}

// DataLost is terminal and releases the lock.
func TestDataLost(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	saga := uuid.New()
	must(t, s.SetROAllocating(ctx, r.ID, saga))
	must(t, s.SetRODataLost(ctx, r.ID, saga, "no clone source"))
	must(t, s.SetRODataLost(ctx, r.ID, saga, "no clone source"))
	got, err := s.GetROReplacement(ctx, r.ID)
	must(t, err)
	if got.State != store.RODataLost || got.EndReason == nil {
		t.Fatalf("%+v", got)
	}
	if _, err := s.GetLock(ctx, r.LockVolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lock kept: %v", err)
	}
}

// The rw request machine with its Running ⇄ Driving loop.
func TestRWReplacementLifecycle(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertRWReplacement(ctx, store.RWReplacement{ID: uuid.New(), OldRegionID: uuid.New(), VolumeID: uuid.New()})
	must(t, err)
	start := uuid.New()
	must(t, s.SetRWAllocating(ctx, r.ID, start))
	must(t, s.SetRWRunning(ctx, r.ID, start, uuid.New(), uuid.New()))
	must(t, s.SetRWRunning(ctx, r.ID, start, uuid.New(), uuid.New()))
	for i := 0; i < 2; i++ {
		d := uuid.New()
		must(t, s.SetRWDriving(ctx, r.ID, d))
		must(t, s.FinishRWDriving(ctx, r.ID, d, false))
		must(t, s.FinishRWDriving(ctx, r.ID, d, false))
	}
	must(t, s.SetRWReplacementDoneFromRunning(ctx, r.ID))
	must(t, s.SetRWReplacementDoneFromRunning(ctx, r.ID))
	fin := uuid.New()
	must(t, s.SetRWCompleting(ctx, r.ID, fin))
	must(t, s.SetRWComplete(ctx, r.ID, fin))
	must(t, s.SetRWComplete(ctx, r.ID, fin))
	if _, err := s.GetLock(ctx, r.VolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lock kept: %v", err)
	}
}

// Concurrent inserts of steps for one volume create exactly one.
func TestConcurrentStepInsert(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	v := uuid.New()
	var wg sync.WaitGroup
	var mu sync.Mutex
	inserted := 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := s.InsertStep(ctx, store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: v})
			if err != nil && !errors.Is(err, store.ErrLockHeld) {
				t.Error(err)
			}
			if res.Inserted {
				mu.Lock()
				inserted++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if inserted != 1 {
		t.Fatalf("%d steps inserted for one volume", inserted)
	}
}

// A stale leader epoch cannot change a record.
func TestStaleEpochRejected(t *testing.T) {
	s := newStore(t)
	r, _, err := s.InsertROReplacement(fence.NewContext(context.Background(), 5), roRequest(uuid.New()))
	must(t, err)
	err = s.SetROAllocating(fence.NewContext(context.Background(), 4), r.ID, uuid.New())
	if err == nil {
		t.Fatal("stale epoch accepted")
	}
	got, err := s.GetROReplacement(context.Background(), r.ID)
	must(t, err)
	if got.State != store.RORequested {
		t.Fatalf("stale epoch changed the record: %s", got.State)
	}
}

// The start saga completes a request whose target it finds gone (the
// Allocating-state counterpart of R10), releasing the lock.
func TestCompleteFromAllocating(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	saga := uuid.New()
	must(t, s.SetROAllocating(ctx, r.ID, saga))
	must(t, s.SetROCompleteFromAllocating(ctx, r.ID, saga))
	must(t, s.SetROCompleteFromAllocating(ctx, r.ID, saga))
	got, err := s.GetROReplacement(ctx, r.ID)
	must(t, err)
	if got.State != store.ROComplete || got.OperatingSagaID != nil {
		t.Fatalf("%+v", got)
	}
	if _, err := s.GetLock(ctx, r.LockVolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("lock kept: %v", err)
	}
}

// A released lock wakes the waiters (the tasks that retry a lost lock
// contention) only when a contention was lost since the last wake-up: a
// fan-out releases a lock per volume and nobody waits on those.
func TestLockReleasedOnlyAfterContention(t *testing.T) {
	ctx := context.Background()
	var wakeups atomic.Int32
	s := store.New(pgtest.NewPool(t, "orchestrator"), store.WithLockReleased(func() { wakeups.Add(1) }))
	v, a, b := uuid.New(), uuid.New(), uuid.New()
	must(t, s.LockVolume(ctx, v, a, store.HolderSnapshotCreate))
	must(t, s.UnlockVolume(ctx, v, a))
	if n := wakeups.Load(); n != 0 {
		t.Fatalf("%d wake-ups without a contention", n)
	}
	must(t, s.LockVolume(ctx, v, a, store.HolderSnapshotCreate))
	wantErr(t, s.LockVolume(ctx, v, b, store.HolderSnapshotCreate), store.ErrLockHeld)
	must(t, s.UnlockVolume(ctx, v, a))
	if n := wakeups.Load(); n != 1 {
		t.Fatalf("%d wake-ups after one lost contention, want 1", n)
	}
	// Reported once: the next release has no waiter to wake.
	must(t, s.LockVolume(ctx, v, b, store.HolderSnapshotCreate))
	must(t, s.UnlockVolume(ctx, v, b))
	if n := wakeups.Load(); n != 1 {
		t.Fatalf("%d wake-ups, want still 1", n)
	}
}
