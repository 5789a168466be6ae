package tasks

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/background"
)

// pacer spaces out expensive per-request work of a task that runs far more
// often than that work is worth (after every finished saga), and schedules
// one follow-up activation so that work put off is not forgotten. The zero
// value is ready; every is set by its owner.
type pacer struct {
	every time.Duration

	mu       sync.Mutex
	last     map[uuid.UUID]time.Time // when each request's work last ran
	first    map[uuid.UUID]time.Time // when each request's work first ran here
	followUp bool                    // an activation is scheduled
}

// due reports whether id's work may run now, and if so records it. When it
// may not, it returns how long until it may.
func (p *pacer) due(id uuid.UUID) (bool, time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		p.last = map[uuid.UUID]time.Time{}
	}
	if wait := p.every - time.Since(p.last[id]); wait > 0 {
		return false, wait
	}
	now := time.Now()
	p.last[id] = now
	if p.first == nil {
		p.first = map[uuid.UUID]time.Time{}
	}
	if _, ok := p.first[id]; !ok {
		p.first[id] = now
	}
	return true, 0
}

// firstDue is when id's work was first due on this pacer (this process, this
// leader term); zero if never.
func (p *pacer) firstDue(id uuid.UUID) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.first[id]
}

// kickAfter calls kick after d, unless a call is already scheduled.
func (p *pacer) kickAfter(d time.Duration, kick func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.followUp {
		return
	}
	p.followUp = true
	time.AfterFunc(d, func() {
		p.mu.Lock()
		p.followUp = false
		p.mu.Unlock()
		kick()
	})
}

// keepOnly forgets every request but these.
func (p *pacer) keepOnly(ids []uuid.UUID) {
	keep := make(map[uuid.UUID]bool, len(ids))
	for _, id := range ids {
		keep[id] = true
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for id := range p.last {
		if !keep[id] {
			delete(p.last, id)
			delete(p.first, id)
		}
	}
}

// forget makes id's work due at once the next time it is asked (a request
// held by an operator is scanned afresh when it is resumed).
func (p *pacer) forget(id uuid.UUID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.last, id)
}

// listingPacer paces a detector's listing of every target on an expunged
// disk. The detectors are activated after every released lock and every
// finished rebuild, hundreds of times during a sled's replacement, and
// each pass listed every target of the sled again although nothing new
// can appear there but by an expunge, a snapshot or allocation racing
// one, or an operator. So a listing is repeated on an activation at most
// every `every`, and a put-off listing gets a follow-up pass; a listing
// that left work to retry (a target skipped for a held lock, an error),
// and every pass on the period, a retry or an operator's request, lists
// at once.
type listingPacer struct {
	pacer
	retry bool // the last listing left work to retry
}

// due reports whether this pass lists; when it does not, kick runs when
// it may.
func (p *listingPacer) due(ctx context.Context, kick func()) bool {
	p.mu.Lock()
	retry := p.retry
	p.mu.Unlock()
	ok, wait := p.pacer.due(uuid.Nil)
	if ok || retry || background.Trigger(ctx) != background.TriggerActivation {
		return true
	}
	p.kickAfter(wait, kick)
	return false
}

// listed records how the listing went: clean when it left nothing to
// retry.
func (p *listingPacer) listed(clean bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retry = !clean
}
