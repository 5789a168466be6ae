package store_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
)

// Pausing a request withdraws what its waiting work holds — its Requested
// steps with their volume locks, and its places in lock queues — and leaves
// what a saga holds (a Running step) and the request's own lock. The hold
// is read back while the request is open, keeps its first author, is
// refused for an ended request, and resuming removes it.
func TestPauseWithdrawsWaitingStepsAndTheirLocks(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	waiting := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
	running := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
	for _, st := range []store.Step{waiting, running} {
		res, err := s.InsertStep(ctx, st)
		must(t, err)
		if !res.Inserted {
			t.Fatalf("step %s not inserted", st.ID)
		}
	}
	must(t, s.SetStepRunning(ctx, running.ID, uuid.New()))
	// A volume whose lock another repair holds: the request queues for it.
	busy := uuid.New()
	must(t, s.LockVolume(ctx, busy, uuid.New(), store.HolderSnapshotCreate))
	res, err := s.InsertSteps(ctx, r.ID, []store.Step{{ID: uuid.New(), RequestID: r.ID, VolumeID: busy}})
	must(t, err)
	if !res[0].LockHeld {
		t.Fatalf("step on a held volume: %+v", res)
	}
	if w, err := s.LockWaitsOf(ctx, r.ID); err != nil || len(w) != 1 {
		t.Fatalf("queue places before the pause: %v %v", w, err)
	}

	p, withdrawn, err := s.PauseRequest(ctx, r.ID, "spiffe://storagecp.local/operator/alice", "disk firmware update")
	must(t, err)
	if withdrawn != 1 || p.By != "spiffe://storagecp.local/operator/alice" || p.Reason != "disk firmware update" || p.Rack() {
		t.Fatalf("pause %+v withdrew %d steps, want 1", p, withdrawn)
	}
	if _, err := s.GetStep(ctx, waiting.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("requested step after the pause: %v", err)
	}
	if _, err := s.GetLock(ctx, waiting.VolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the withdrawn step's volume lock: %v", err)
	}
	if l, err := s.GetLock(ctx, running.VolumeID); err != nil || l.RepairID != running.ID {
		t.Fatalf("the running step's lock: %+v %v", l, err)
	}
	if l, err := s.GetLock(ctx, r.LockVolumeID); err != nil || l.RepairID != r.ID {
		t.Fatalf("the request's own lock: %+v %v", l, err)
	}
	if w, err := s.LockWaitsOf(ctx, r.ID); err != nil || len(w) != 0 {
		t.Fatalf("queue places after the pause: %v %v", w, err)
	}

	// Pausing again keeps the first hold.
	again, withdrawn, err := s.PauseRequest(ctx, r.ID, "spiffe://storagecp.local/operator/bob", "other")
	must(t, err)
	if withdrawn != 0 || again.By != p.By || !again.Time.Equal(p.Time) || again.Reason != p.Reason {
		t.Fatalf("second pause %+v (withdrew %d), want the first %+v", again, withdrawn, p)
	}
	holds, err := s.LoadPauses(ctx)
	must(t, err)
	if got := holds.Of(r.ID); got == nil || got.By != p.By || holds.Rack != nil {
		t.Fatalf("holds %+v", holds)
	}
	if got := holds.Of(uuid.New()); got != nil {
		t.Fatalf("an unpaused request is held: %+v", got)
	}

	must(t, s.ResumeRequest(ctx, r.ID))
	must(t, s.ResumeRequest(ctx, r.ID)) // idempotent
	holds, err = s.LoadPauses(ctx)
	must(t, err)
	if holds.Of(r.ID) != nil {
		t.Fatalf("still held after resume: %+v", holds)
	}

	wantErr(t, func() error { _, _, err := s.PauseRequest(ctx, uuid.New(), "x", "y"); return err }(), store.ErrNotFound)
	wantErr(t, s.ResumeRequest(ctx, uuid.New()), store.ErrNotFound)
	must(t, s.SetROCompleteFromRequested(ctx, mustRequested(t, s).ID))
}

// mustRequested makes a Requested request of its own.
func mustRequested(t *testing.T, s *store.Store) store.ROReplacement {
	t.Helper()
	r, _, err := s.InsertROReplacement(context.Background(), roRequest(uuid.New()))
	must(t, err)
	return r
}

// An ended request cannot be paused, and a hold left on a request that
// ended (a saga in flight finished it) no longer counts.
func TestPauseOfEndedRequest(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r := mustRequested(t, s)
	_, _, err := s.PauseRequest(ctx, r.ID, "x", "y")
	must(t, err)
	must(t, s.SetROCompleteFromRequested(ctx, r.ID))
	holds, err := s.LoadPauses(ctx)
	must(t, err)
	if holds.Of(r.ID) != nil {
		t.Fatalf("the hold of an ended request counts: %+v", holds)
	}
	if n, _, err := s.PausedRequests(ctx); err != nil || n != 0 {
		t.Fatalf("paused requests %d, %v", n, err)
	}
	_, _, err = s.PauseRequest(ctx, r.ID, "x", "y")
	wantErr(t, err, store.ErrRefused)
}

// The rack's hold covers every request, withdraws every Requested step and
// every lock-queue place, and a request's own hold outlives the rack's.
func TestRackPause(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	a, b := mustRequested(t, s), mustRequested(t, s)
	for _, r := range []store.ROReplacement{a, b} {
		_, err := s.InsertStep(ctx, store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()})
		must(t, err)
	}
	_, _, err := s.PauseRequest(ctx, a.ID, "alice", "mine")
	must(t, err)
	p, withdrawn, err := s.PauseRack(ctx, "bob", "rack maintenance")
	must(t, err)
	if !p.Rack() || withdrawn != 1 { // a's step went with a's own pause
		t.Fatalf("rack pause %+v withdrew %d, want 1", p, withdrawn)
	}
	holds, err := s.LoadPauses(ctx)
	must(t, err)
	if got := holds.Of(b.ID); got == nil || !got.Rack() || got.By != "bob" {
		t.Fatalf("b's hold %+v", got)
	}
	if got := holds.Of(a.ID); got == nil || got.Rack() || got.By != "alice" {
		t.Fatalf("a's hold %+v (its own shows first)", got)
	}
	if n, rack, err := s.PausedRequests(ctx); err != nil || n != 1 || !rack {
		t.Fatalf("paused %d rack %v %v", n, rack, err)
	}
	if d, err := s.Stalled(ctx); err != nil || d != 0 {
		t.Fatalf("stalled %v while the rack is held, %v", d, err)
	}
	must(t, s.ResumeRack(ctx))
	holds, err = s.LoadPauses(ctx)
	must(t, err)
	if holds.Of(b.ID) != nil || holds.Of(a.ID) == nil {
		t.Fatalf("after the rack's resume: %+v", holds)
	}
	if d, err := s.Stalled(ctx); err != nil || d <= 0 {
		t.Fatalf("stalled %v with b open and free, %v", d, err)
	}
}

// A Requested step is withdrawn with its lock; a Running one is not.
func TestWithdrawStep(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r := mustRequested(t, s)
	a := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
	b := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
	for _, st := range []store.Step{a, b} {
		_, err := s.InsertStep(ctx, st)
		must(t, err)
	}
	must(t, s.SetStepRunning(ctx, b.ID, uuid.New()))
	if ok, err := s.WithdrawStep(ctx, a.ID); err != nil || !ok {
		t.Fatalf("withdraw a requested step: %v %v", ok, err)
	}
	if _, err := s.GetLock(ctx, a.VolumeID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("its lock: %v", err)
	}
	if ok, err := s.WithdrawStep(ctx, b.ID); err != nil || ok {
		t.Fatalf("withdraw a running step: %v %v", ok, err)
	}
	if _, err := s.GetLock(ctx, b.VolumeID); err != nil {
		t.Fatalf("the running step's lock: %v", err)
	}
}
