package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
)

// The lock queue serves waiters in arrival order: a step refused while a
// user's snapshot held its volume keeps its place, so the next snapshot
// stands back when the lock comes free and the step's next try wins; the
// request says what it waits on meanwhile; a request that ends gives its
// place up. Without the queue, whoever retried first after each release
// won, and under continuous contention a step could wait forever.
func TestLockQueueServesWaitersInOrder(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	volume := uuid.New()
	snap1, snap2 := uuid.New(), uuid.New()
	must(t, s.LockVolume(ctx, volume, snap1, store.HolderSnapshotCreate))

	// The step is refused and queues under its request's id.
	step := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: volume}
	res, err := s.InsertSteps(ctx, r.ID, []store.Step{step})
	must(t, err)
	if !res[0].LockHeld {
		t.Fatalf("step inserted while a snapshot held the volume: %+v", res[0])
	}
	waits, err := s.LockWaitsOf(ctx, r.ID)
	must(t, err)
	if len(waits) != 1 || waits[0].VolumeID != volume || waits[0].Holder == nil || *waits[0].Holder != snap1 {
		t.Fatalf("lock waits %+v, want the volume, held by the first snapshot", waits)
	}
	if oldest, n, err := s.OldestLockWait(ctx); err != nil || n != 1 || oldest <= 0 {
		t.Fatalf("oldest lock wait %v of %d (%v)", oldest, n, err)
	}

	// Released: a newcomer finds the lock free but stands back, naming the
	// step's request it queues behind.
	must(t, s.UnlockVolume(ctx, volume, snap1))
	err = s.LockVolume(ctx, volume, snap2, store.HolderSnapshotCreate)
	var lh *store.LockHeldError
	if !errors.As(err, &lh) || lh.QueuedBehind != r.ID || lh.Holder != uuid.Nil {
		t.Fatalf("newcomer after the release: %v (%+v), want it queued behind request %s", err, lh, r.ID)
	}
	if err.Error() != store.ErrLockHeld.Error() {
		t.Fatalf("the refusal's text is %q, want exactly %q (callers match it)", err, store.ErrLockHeld)
	}

	// The step's next try wins, and leaves the queue.
	step.ID = uuid.New()
	res, err = s.InsertSteps(ctx, r.ID, []store.Step{step})
	must(t, err)
	if !res[0].Inserted {
		t.Fatalf("the step did not win the freed lock: %+v", res[0])
	}
	if waits, err := s.LockWaitsOf(ctx, r.ID); err != nil || len(waits) != 0 {
		t.Fatalf("lock waits after winning: %+v %v", waits, err)
	}
	must(t, s.SetStepVolumeDeletedFromRequested(ctx, step.ID))
	must(t, s.LockVolume(ctx, volume, snap2, store.HolderSnapshotCreate))

	// A waiter whose request ends gives its place up.
	other := uuid.New()
	res, err = s.InsertSteps(ctx, r.ID, []store.Step{{ID: uuid.New(), RequestID: r.ID, VolumeID: volume}})
	must(t, err)
	if !res[0].LockHeld {
		t.Fatalf("%+v", res[0])
	}
	must(t, s.SetROCompleteFromRequested(ctx, r.ID))
	must(t, s.UnlockVolume(ctx, volume, snap2))
	must(t, s.LockVolume(ctx, volume, other, store.HolderSnapshotCreate))
}
