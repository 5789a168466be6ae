package pause_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/pause"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "orchestrator", Migrations: migrations.FS})
}

func request(t *testing.T, s *store.Store) uuid.UUID {
	t.Helper()
	ds, snap := uuid.New(), uuid.New()
	r, _, err := s.InsertROReplacement(context.Background(), store.ROReplacement{
		ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.New(), OldRegionID: uuid.New(),
		OldDatasetID: &ds, OldSnapshotID: snap, LockVolumeID: snap,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r.ID
}

// Nothing starts before the holds are read; a held request's start does
// not run (the rack's hold covers every request), and runs again once
// resumed; a second gate over the same database (a new leader) reads the
// holds back.
func TestGate(t *testing.T) {
	ctx := context.Background()
	s := store.New(pgtest.NewPool(t, "orchestrator"))
	g := pause.New(s)
	id, other := request(t, s), request(t, s)
	ran := 0
	start := func() error { ran++; return nil }
	if _, err := g.Do(id, start); !errors.Is(err, pause.ErrNotLoaded) || ran != 0 {
		t.Fatalf("before Load: %v, ran %d", err, ran)
	}
	if err := g.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if held, err := g.Do(id, start); held != nil || err != nil || ran != 1 {
		t.Fatalf("not held: %v %v, ran %d", held, err, ran)
	}
	if _, _, err := g.Pause(ctx, id, "alice", "firmware"); err != nil {
		t.Fatal(err)
	}
	if held, err := g.Do(id, start); held == nil || held.By != "alice" || err != nil || ran != 1 {
		t.Fatalf("held: %+v %v, ran %d", held, err, ran)
	}
	if held, _ := g.Do(other, start); held != nil || ran != 2 {
		t.Fatalf("another request is held: %+v", held)
	}
	if _, _, err := g.Pause(ctx, uuid.Nil, "bob", "rack maintenance"); err != nil {
		t.Fatal(err)
	}
	if held, _ := g.Do(other, start); held == nil || !held.Rack() || ran != 2 {
		t.Fatalf("rack hold on another request: %+v, ran %d", held, ran)
	}

	next := pause.New(s)
	if err := next.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if p, ok := next.Of(id); !ok || p == nil || p.By != "alice" {
		t.Fatalf("a new leader's gate: %+v %v", p, ok)
	}
	if p, _ := next.Of(uuid.Nil); p == nil || p.By != "bob" {
		t.Fatalf("a new leader's gate, rack: %+v", p)
	}

	if err := g.Resume(ctx, uuid.Nil); err != nil {
		t.Fatal(err)
	}
	if held, _ := g.Do(id, start); held == nil || held.Rack() {
		t.Fatalf("its own hold outlives the rack's: %+v", held)
	}
	if err := g.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	if held, err := g.Do(id, start); held != nil || err != nil || ran != 3 {
		t.Fatalf("after resume: %+v %v, ran %d", held, err, ran)
	}
}

// A pause waits for a start already under way, and no start runs after the
// pause answered: the check and the start are one step.
func TestPauseExcludesStarts(t *testing.T) {
	ctx := context.Background()
	s := store.New(pgtest.NewPool(t, "orchestrator"))
	g := pause.New(s)
	id := request(t, s)
	if err := g.Load(ctx); err != nil {
		t.Fatal(err)
	}
	var startDone, pauseDone atomic.Int64
	inStart, release := make(chan struct{}), make(chan struct{})
	go func() {
		_, _ = g.Do(id, func() error {
			close(inStart)
			<-release
			startDone.Store(time.Now().UnixNano())
			return nil
		})
	}()
	<-inStart
	paused := make(chan error)
	go func() {
		_, _, err := g.Pause(ctx, id, "alice", "now")
		pauseDone.Store(time.Now().UnixNano())
		paused <- err
	}()
	time.Sleep(50 * time.Millisecond) // let the pause reach the gate
	close(release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if startDone.Load() == 0 || pauseDone.Load() < startDone.Load() {
		t.Fatalf("the pause answered (%d) before the start under way finished (%d)", pauseDone.Load(), startDone.Load())
	}
	if held, _ := g.Do(id, func() error { t.Error("a start ran after the pause answered"); return nil }); held == nil {
		t.Fatal("not held after the pause answered")
	}
}
