// Package pause is the leader's gate for operators' holds on replacements
// (ReplacementService/PauseReplacement and ResumeReplacement).
//
// The contract: once PauseReplacement has answered, no saga starts for the
// held request (or, for the rack, for any request) and no task takes a lock
// for it, until ResumeReplacement. Sagas already in flight finish. The holds
// live in the database (store.PauseRequest and friends), so a new leader
// inherits them; this package keeps the leader's copy and makes the check
// and the start one step: a task starts a saga or takes a lock for a
// request only inside Gate.Do, which holds the gate shared, and a pause or
// resume changes the database and the copy holding it exclusive. A start
// that checked before a pause therefore finished before the pause began,
// and one that comes after sees it. That is why pausing is served by the
// leader alone: a standby's change would not reach the copy the leader's
// tasks read.
package pause

import (
	"context"
	"errors"
	"sync"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
)

// ErrNotLoaded means the gate has not read the holds yet (a new leader
// before its first Load): nothing may start, since a hold may exist.
var ErrNotLoaded = errors.New("operators' holds not read yet")

// Gate is the leader's view of the holds. The zero value is not usable;
// use New.
type Gate struct {
	store *store.Store

	mu     sync.RWMutex
	loaded bool
	holds  store.Pauses
}

// New returns a gate over the store, not loaded.
func New(st *store.Store) *Gate { return &Gate{store: st} }

// Load reads the holds from the database. A leader calls it before its
// tasks run, and may call it again at any time.
func (g *Gate) Load(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	holds, err := g.store.LoadPauses(ctx)
	if err != nil {
		return err
	}
	g.holds, g.loaded = holds, true
	return nil
}

// Forget drops the copy (a term ended): the next leader term loads again.
func (g *Gate) Forget() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.loaded, g.holds = false, store.Pauses{}
}

// Do runs start unless request (uuid.Nil: the rack) is held, and returns the
// hold that kept it from running. No pause or resume can happen while start
// runs. Before Load it runs nothing and returns ErrNotLoaded.
func (g *Gate) Do(request uuid.UUID, start func() error) (*store.Pause, error) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if !g.loaded {
		return nil, ErrNotLoaded
	}
	if p := g.holds.Of(request); p != nil {
		return p, nil
	}
	return nil, start()
}

// Of is the hold on request (its own, else the rack's), or nil; ok is false
// before Load.
func (g *Gate) Of(request uuid.UUID) (p *store.Pause, ok bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	return g.holds.Of(request), g.loaded
}

// Pause holds request (uuid.Nil: the rack) and returns the hold in force and
// the steps withdrawn (store.PauseRequest, store.PauseRack).
func (g *Gate) Pause(ctx context.Context, request uuid.UUID, by, reason string) (store.Pause, int64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.loaded {
		return store.Pause{}, 0, ErrNotLoaded
	}
	if request == uuid.Nil {
		p, n, err := g.store.PauseRack(ctx, by, reason)
		if err != nil {
			g.reread(ctx)
			return p, n, err
		}
		g.holds.Rack = &p
		return p, n, nil
	}
	p, n, err := g.store.PauseRequest(ctx, request, by, reason)
	if err != nil {
		g.reread(ctx)
		return p, n, err
	}
	if g.holds.Requests == nil {
		g.holds.Requests = map[uuid.UUID]store.Pause{}
	}
	g.holds.Requests[request] = p
	return p, n, nil
}

// reread reloads the copy after a change whose outcome is unknown (the
// commit's answer was lost): the copy must not say "not held" when the
// database says held. If even that fails, the gate unloads and nothing
// starts until a Load succeeds (tasks try one on every pass). Called with
// mu held.
func (g *Gate) reread(ctx context.Context) {
	holds, err := g.store.LoadPauses(ctx)
	if err != nil {
		g.loaded, g.holds = false, store.Pauses{}
		return
	}
	g.holds = holds
}

// Resume lifts request's own hold (uuid.Nil: the rack's).
func (g *Gate) Resume(ctx context.Context, request uuid.UUID) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.loaded {
		return ErrNotLoaded
	}
	if request == uuid.Nil {
		if err := g.store.ResumeRack(ctx); err != nil {
			g.reread(ctx)
			return err
		}
		g.holds.Rack = nil
		return nil
	}
	if err := g.store.ResumeRequest(ctx, request); err != nil {
		g.reread(ctx)
		return err
	}
	delete(g.holds.Requests, request)
	return nil
}
