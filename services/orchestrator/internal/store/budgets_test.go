package store_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

// placer stands in for the allocator's choice among sleds (the allocator's
// own exclusion is tested in its package): the first sled not excluded,
// after a pause that lets concurrent admissions overlap.
type placer struct {
	mu     sync.Mutex
	sleds  []uuid.UUID
	placed map[uuid.UUID]uuid.UUID // record → sled, so a replay lands where it did
}

func (p *placer) alloc(record uuid.UUID) store.AllocateFunc {
	return func(ctx context.Context, exclude []uuid.UUID) (uuid.UUID, error) {
		time.Sleep(5 * time.Millisecond) // widen the window two admissions could share
		p.mu.Lock()
		defer p.mu.Unlock()
		if s, ok := p.placed[record]; ok {
			return s, nil
		}
		for _, s := range p.sleds {
			if !slices.Contains(exclude, s) {
				p.placed[record] = s
				return s, nil
			}
		}
		return uuid.Nil, store.ErrDestinationsFull
	}
}

func sleds(n int) []uuid.UUID {
	out := make([]uuid.UUID, n)
	for i := range out {
		out[i] = uuid.New()
	}
	return out
}

// allocatingRO makes a read-only request in Allocating under a new saga.
func allocatingRO(t *testing.T, s *store.Store) (id, saga uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	saga = uuid.New()
	must(t, s.SetROAllocating(ctx, r.ID, saga))
	return r.ID, saga
}

func checkUse(t *testing.T, s *store.Store, l store.Limits) store.Use {
	t.Helper()
	slots, err := s.HeldSlots(context.Background())
	must(t, err)
	u := store.UseOf(slots, uuid.Nil)
	if l.RackRebuilds > 0 && u.Rack > l.RackRebuilds {
		t.Errorf("rack use %d over its limit %d", u.Rack, l.RackRebuilds)
	}
	if n := store.MaxOf(u.ByDest); l.DestSledRebuilds > 0 && n > l.DestSledRebuilds {
		t.Errorf("destination use %d over its limit %d: %v", n, l.DestSledRebuilds, u.ByDest)
	}
	if n := store.MaxOf(u.BySource); l.SourceSledRebuilds > 0 && n > l.SourceSledRebuilds {
		t.Errorf("source use %d over its limit %d: %v", n, l.SourceSledRebuilds, u.BySource)
	}
	return u
}

// Many admissions at once never take more than a budget allows: not the
// rack's, not a source sled's, not a destination sled's (two admissions
// cannot both take a sled's last slot).
func TestAdmitRebuildNeverOverLimit(t *testing.T) {
	ctx := context.Background()
	l := store.Limits{RackRebuilds: 5, SourceSledRebuilds: 3, DestSledRebuilds: 1}
	s := store.New(pgtest.NewPool(t, "orchestrator"), store.WithRebuildLimits(l))
	dests := sleds(4)
	sources := sleds(2)
	p := &placer{sleds: dests, placed: map[uuid.UUID]uuid.UUID{}}
	const n = 16
	var wg sync.WaitGroup
	var mu sync.Mutex
	admitted, refused := 0, map[string]int{}
	for i := range n {
		id, saga := allocatingRO(t, s)
		wg.Go(func() {
			_, err := s.AdmitRebuild(ctx, store.RebuildClaim{RecordID: id, Kind: store.RebuildClone, SagaID: saga, Sources: []uuid.UUID{sources[i%2]}}, p.alloc(id))
			mu.Lock()
			defer mu.Unlock()
			var be *store.BudgetError
			switch {
			case err == nil:
				admitted++
			case errors.As(err, &be):
				refused[be.Budget]++
			default:
				t.Errorf("admit: %v", err)
			}
		})
	}
	wg.Wait()
	u := checkUse(t, s, l)
	// 4 destinations at 1 each bound it below the rack's 5.
	if admitted != 4 || u.Rack != 4 {
		t.Fatalf("admitted %d (use %d), want 4: every destination full; refused %v", admitted, u.Rack, refused)
	}
	if refused[store.BudgetDestSledRebuilds]+refused[store.BudgetSourceSledRebuilds] != n-4 {
		t.Fatalf("refusals %v, want %d by the sled budgets", refused, n-4)
	}
}

// A re-run of the admitting node (a crash after it recorded its slot)
// keeps its slot; one that finds its region on a sled that filled up in
// the meantime is refused, never over the limit.
func TestAdmitRebuildRerun(t *testing.T) {
	ctx := context.Background()
	l := store.Limits{DestSledRebuilds: 1}
	s := store.New(pgtest.NewPool(t, "orchestrator"), store.WithRebuildLimits(l))
	one := sleds(1)
	p := &placer{sleds: one, placed: map[uuid.UUID]uuid.UUID{}}
	id, saga := allocatingRO(t, s)
	c := store.RebuildClaim{RecordID: id, Kind: store.RebuildClone, SagaID: saga}
	first, err := s.AdmitRebuild(ctx, c, p.alloc(id))
	must(t, err)
	again, err := s.AdmitRebuild(ctx, c, p.alloc(id))
	must(t, err)
	if again != first {
		t.Fatalf("re-run placed on %s, first on %s", again, first)
	}
	// Another record whose region already sits on the full sled (its first
	// run allocated, then crashed before recording).
	other, otherSaga := allocatingRO(t, s)
	p.placed[other] = one[0]
	_, err = s.AdmitRebuild(ctx, store.RebuildClaim{RecordID: other, Kind: store.RebuildClone, SagaID: otherSaga}, p.alloc(other))
	var be *store.BudgetError
	if !errors.As(err, &be) || be.Budget != store.BudgetDestSledRebuilds {
		t.Fatalf("replay onto a full sled: %v, want the destination budget", err)
	}
	checkUse(t, s, l)
}

// Use is derived from the records' states, not from a process's memory: a
// new leader (a new Store on the same database) sees the rebuilds its
// predecessor admitted, and a record leaving its holding state gives its
// slot back whatever path it took.
func TestRebuildUseSurvivesLeaderChange(t *testing.T) {
	ctx := context.Background()
	l := store.Limits{RackRebuilds: 2}
	pool := pgtest.NewPool(t, "orchestrator")
	old := store.New(pool, store.WithRebuildLimits(l))
	p := &placer{sleds: sleds(3), placed: map[uuid.UUID]uuid.UUID{}}
	roID, roSaga := allocatingRO(t, old)
	_, err := old.AdmitRebuild(ctx, store.RebuildClaim{RecordID: roID, Kind: store.RebuildClone, SagaID: roSaga}, p.alloc(roID))
	must(t, err)
	rw, _, err := old.InsertRWReplacement(ctx, store.RWReplacement{ID: uuid.New(), OldRegionID: uuid.New(), VolumeID: uuid.New()})
	must(t, err)
	rwSaga := uuid.New()
	must(t, old.SetRWAllocating(ctx, rw.ID, rwSaga))
	_, err = old.AdmitRebuild(ctx, store.RebuildClaim{RecordID: rw.ID, Kind: store.RebuildRepair, SagaID: rwSaga}, p.alloc(rw.ID))
	must(t, err)
	// The repair's start commits: it still holds its slot while Running.
	must(t, old.SetRWRunning(ctx, rw.ID, rwSaga, uuid.New(), uuid.New()))

	next := store.New(pool, store.WithRebuildLimits(l))
	if u := checkUse(t, next, l); u.Rack != 2 {
		t.Fatalf("new leader sees %d rebuilds, want 2", u.Rack)
	}
	third, thirdSaga := allocatingRO(t, next)
	_, err = next.AdmitRebuild(ctx, store.RebuildClaim{RecordID: third, Kind: store.RebuildClone, SagaID: thirdSaga}, p.alloc(third))
	var be *store.BudgetError
	if !errors.As(err, &be) || be.Budget != store.BudgetRackRebuilds {
		t.Fatalf("third rebuild under the new leader: %v, want the rack budget", err)
	}
	// The clone's saga unwinds: its slot is free at once.
	must(t, next.UndoROAllocating(ctx, roID, roSaga))
	_, err = next.AdmitRebuild(ctx, store.RebuildClaim{RecordID: third, Kind: store.RebuildClone, SagaID: thirdSaga}, p.alloc(third))
	must(t, err)
	// The repair finishes: ReplacementDone frees its slot.
	must(t, next.SetRWReplacementDoneFromRunning(ctx, rw.ID))
	if u := checkUse(t, next, l); u.Rack != 1 {
		t.Fatalf("use %d after a clone unwound and a repair finished, want 1", u.Rack)
	}
}

// The rack_steps budget holds at the step's claim, exactly, under
// concurrent claims; a runtime value overrides the configured one; a
// re-run claim keeps its step.
func TestStepBudgetAtClaim(t *testing.T) {
	ctx := context.Background()
	s := store.New(pgtest.NewPool(t, "orchestrator"), store.WithRebuildLimits(store.Limits{RackSteps: 100}))
	must(t, s.SetRebuildLimits(ctx, map[string]int{store.BudgetRackSteps: 3}, false))
	if l, rt, err := s.RebuildLimits(ctx); err != nil || l.RackSteps != 3 || !rt[store.BudgetRackSteps] {
		t.Fatalf("limits %+v runtime %v err %v, want rack_steps 3 set at runtime", l, rt, err)
	}
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	const n = 10
	type claim struct{ step, saga uuid.UUID }
	var claims []claim
	for range n {
		st := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: uuid.New()}
		_, err := s.InsertStep(ctx, st)
		must(t, err)
		claims = append(claims, claim{st.ID, uuid.New()})
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var won []claim
	for _, c := range claims {
		wg.Go(func() {
			err := s.SetStepRunning(ctx, c.step, c.saga)
			var be *store.BudgetError
			switch {
			case err == nil:
				mu.Lock()
				won = append(won, c)
				mu.Unlock()
			case errors.As(err, &be) && be.Budget == store.BudgetRackSteps:
			default:
				t.Errorf("claim: %v", err)
			}
		})
	}
	wg.Wait()
	if running, err := s.RunningSteps(ctx); err != nil || running != 3 || len(won) != 3 {
		t.Fatalf("running %d (err %v), claims won %d; want 3", running, err, len(won))
	}
	must(t, s.SetStepRunning(ctx, won[0].step, won[0].saga)) // a re-run
	// Reset drops the runtime value: the configured 100 applies again.
	must(t, s.SetRebuildLimits(ctx, nil, true))
	if l, rt, _ := s.RebuildLimits(ctx); l.RackSteps != 100 || rt[store.BudgetRackSteps] {
		t.Fatalf("after reset: %+v %v, want the configured 100", l, rt)
	}
}

// Priority is set on either kind of request; an unknown id is NotFound.
func TestSetPriority(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	r, _, err := s.InsertROReplacement(ctx, roRequest(uuid.New()))
	must(t, err)
	must(t, s.SetPriority(ctx, r.ID, 7))
	got, err := s.GetROReplacement(ctx, r.ID)
	must(t, err)
	if got.Priority != 7 || got.LiveCopies != -1 {
		t.Fatalf("priority %d live copies %d, want 7 and -1 (not counted)", got.Priority, got.LiveCopies)
	}
	wantErr(t, s.SetPriority(ctx, uuid.New(), 1), store.ErrNotFound)
}

// A leader stopped inside an admission (its allocation call never
// returns while it is stopped) holds the admission lock in a session
// idling outside any transaction. Its successor's admissions go on once
// the server has ended that session, after db.IdleInTransactionTimeout;
// the stopped one, resumed, records nothing, since its lock is gone.
func TestAdmissionLockFreedFromAStoppedLeader(t *testing.T) {
	ctx := context.Background()
	l := store.Limits{RackRebuilds: 4}
	pool := pgtest.NewPool(t, "orchestrator")
	old := store.New(pool, store.WithRebuildLimits(l))
	next := store.New(pool, store.WithRebuildLimits(l))
	p := &placer{sleds: sleds(3), placed: map[uuid.UUID]uuid.UUID{}}

	stoppedID, stoppedSaga := allocatingRO(t, old)
	entered, resume := make(chan struct{}), make(chan struct{})
	stoppedErr := make(chan error, 1)
	go func() {
		_, err := old.AdmitRebuild(ctx, store.RebuildClaim{RecordID: stoppedID, Kind: store.RebuildClone, SagaID: stoppedSaga},
			func(ctx context.Context, exclude []uuid.UUID) (uuid.UUID, error) {
				close(entered)
				<-resume
				return p.alloc(stoppedID)(ctx, exclude)
			})
		stoppedErr <- err
	}()
	<-entered
	defer func() {
		select {
		case <-resume:
		default:
			close(resume)
		}
	}()

	id, saga := allocatingRO(t, next)
	admitted := make(chan error, 1)
	began := time.Now()
	go func() {
		_, err := next.AdmitRebuild(ctx, store.RebuildClaim{RecordID: id, Kind: store.RebuildClone, SagaID: saga}, p.alloc(id))
		admitted <- err
	}()
	select {
	case err := <-admitted:
		must(t, err)
		t.Logf("admitted %s after the other admission stopped", time.Since(began).Round(time.Millisecond))
	case <-time.After(db.IdleInTransactionTimeout + 20*time.Second):
		t.Fatalf("no admission %s after a leader stopped inside one: its session still holds the lock", time.Since(began).Round(time.Millisecond))
	}

	close(resume)
	if err := <-stoppedErr; err == nil {
		t.Fatal("the stopped admission recorded its slot after its lock was freed")
	}
	if u := checkUse(t, next, l); u.Rack != 1 {
		t.Fatalf("rack use %d, want 1: only the successor's admission holds a slot", u.Rack)
	}
}
