// Package tasks holds the orchestrator's background tasks, one per file,
// each returning a status struct per activation (the style of Nexus's
// background tasks). Tasks only start sagas; they never wait for them. Each
// runs on its period (the safety net) and is activated at once by the saga
// or task that advanced the records it waits on, so a replacement flows
// through its phases without waiting for a period.
package tasks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/pause"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// Starter creates a saga on the leader's SEC and returns its id and a
// channel that receives its outcome.
type Starter func(ctx context.Context, t *saga.Template, params any, opts ...saga.CreateOption) (uuid.UUID, <-chan saga.Outcome, error)

// Env is what every task gets.
type Env struct {
	Deps     *sagadef.Deps
	Start    Starter
	Period   time.Duration
	MaxSagas int
	Logger   *slog.Logger
	// RWBounds bound rw replacements' drives (zero: the defaults).
	RWBounds RWBounds
	// Retry is the backoff before a record whose saga unwound is tried
	// again (zero: the defaults).
	Retry RetryBackoff
	// Admission is the rebuild budgets' planning state, shared by the
	// tasks that start rebuilds and steps (nil: Register makes one).
	Admission *Admission
	// Pauses is the leader's gate for operators' holds: no saga starts and
	// no lock is taken for a held request (nil: nothing is ever held, for
	// tests of a task alone).
	Pauses *pause.Gate
	// StepBatch, when positive, sends the steps whose volume has no
	// Upstairs attached (and no failed attempt) through
	// ro-replacement-step-batch, at most this many per saga
	// (docs/replacement.md, "The batch swap"); zero runs every step on
	// its own ro-replacement-step.
	StepBatch int

	// activate wakes a task by name (set by Register).
	activate func(name string)
	// retryWakes brings a task back when a record it skipped for a
	// backoff is due (set by Register).
	retryWakes *retryWakes
}

// Register adds every background task to the driver, and sets
// env.Deps.Wake to wake them there: each task declares its own name, and
// sagas and handlers wake a task by what it does.
func Register(d *background.Driver, env Env) {
	if env.MaxSagas <= 0 {
		env.MaxSagas = 64
	}
	if env.Admission == nil {
		env.Admission = NewAdmission()
	}
	env.activate = func(name string) { _ = d.Activate(name) }
	env.retryWakes = &retryWakes{}
	by := func(name string) func() { return func() { env.activate(name) } }
	env.Deps.Wake = sagadef.Wake{
		ROStart: by(ROStartName), ROGarbageCollect: by(ROGarbageCollectName), ROStep: by(ROStepName),
		ROFinish: by(ROFinishName), RODetector: by(RODetectorName),
		RWDetector: by(RWDetectorName), RWDrive: by(RWDriveName), RWFinish: by(RWFinishName),
		All: func() {
			for _, st := range d.Statuses() {
				env.activate(st.Name)
			}
		},
	}
	add := func(t background.Task, l *background.Limiter) { d.Register(t, env.Period, l) }
	add(&roDetector{env: env, listings: listingPacer{pacer: pacer{every: listingEvery}}}, nil)
	start := &roStart{env: env, limiter: background.NewLimiter(env.MaxSagas, 1)}
	add(start, start.limiter)
	gc := &roGC{env: env, limiter: background.NewLimiter(env.MaxSagas, 1)}
	add(gc, gc.limiter)
	step := &roStep{env: env, limiter: background.NewLimiter(env.MaxSagas, 1), scans: pacer{every: rescanEvery}}
	add(step, step.limiter)
	finish := &roFinish{env: env, limiter: background.NewLimiter(env.MaxSagas, 1)}
	add(finish, finish.limiter)
	registerRW(d, env)
}

// job is a saga a task starts for one record (request or step).
type job struct {
	// key bounds the task to one saga in flight per key (the record id,
	// or a derived key when two sagas of one record may overlap).
	key string
	// record is the request or step the saga works on: an unwound saga
	// counts as an attempt on it, and task is woken to try again once the
	// backoff for that many attempts has passed.
	record uuid.UUID
	// also are more records the saga works on (a batch's other steps):
	// an unwind counts as an attempt on each of them too.
	also []uuid.UUID
	// request is the replacement request the record belongs to (the record
	// itself, or a step's request): its hold, or the rack's, keeps the saga
	// from starting.
	request uuid.UUID
	task    string
	// attempts is the record's, as the task read it: a record whose last
	// attempt failed too recently is skipped until its backoff has passed.
	attempts store.Attempts
	// skipped, when set, receives why the saga was not started.
	skipped *Skips
	// ended, when set, runs once the saga has ended (after its attempt
	// is counted).
	ended func()
	// then, when set, is a task activated once the saga has ended and
	// its key is free again (work the key held back may be waiting).
	then string
}

// startSaga starts a saga for the job unless the record is backing off
// after a failed attempt or the limiter has no room for the job's key,
// releasing the slot when the saga ends. It reports whether it started one
// (and in j.skipped why not).
func startSaga(ctx context.Context, env Env, l *background.Limiter, j job, t *saga.Template, params any, opts ...saga.CreateOption) (bool, error) {
	if due, ok := env.backoffEnds(j.attempts); ok {
		j.skipped.Add("%s %s: retry in %v, after %d failed attempts (last: %s)", t.Name(), j.record, time.Until(due).Round(time.Millisecond), j.attempts.Attempts, j.attempts.LastError)
		env.retryWakes.at(due, j.task, env.activate)
		return false, nil
	}
	started := false
	held, err := env.unlessHeld(ctx, j.request, func() error {
		release, ok := l.TryAcquire(j.key)
		if !ok {
			if l.InFlight() >= l.Max() {
				j.skipped.Add("%s %s: the task is at its bound of %d sagas in flight", t.Name(), j.record, l.Max())
			} else {
				j.skipped.Add("%s %s: a saga for it is still in flight", t.Name(), j.record)
			}
			return nil
		}
		if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
			opts = append(opts, saga.WithLinks(trace.Link{SpanContext: sc}))
		}
		_, done, err := env.Start(ctx, t, params, opts...)
		if err != nil {
			release()
			return err
		}
		started = true
		go func() {
			o := <-done
			// Count the attempt before the slot frees: a pass that takes the
			// slot next then reads the record with its backoff.
			env.afterUnwind(j, o)
			if j.ended != nil {
				j.ended()
			}
			release()
			if j.then != "" && env.activate != nil {
				env.activate(j.then)
			}
			env.sagaEnded(t, o)
		}()
		return nil
	})
	if held != nil {
		j.skipped.Add("%s %s: %s", t.Name(), j.record, heldText(held))
	}
	if !started && j.ended != nil {
		// No saga will end: whoever planned the job (a budget's
		// reservation, a step counted in flight) forgets it now, whatever
		// kept it from starting.
		j.ended()
	}
	return started, err
}

// unlessHeld runs start unless request (uuid.Nil: the rack) is held by an
// operator, with no pause able to begin meanwhile (package pause), and
// returns the hold that kept it from running. A gate not loaded yet (a new
// term, or a pause whose outcome was lost) is loaded first; while it cannot
// be, nothing starts.
func (env Env) unlessHeld(ctx context.Context, request uuid.UUID, start func() error) (*store.Pause, error) {
	if env.Pauses == nil {
		return nil, start()
	}
	held, err := env.Pauses.Do(request, start)
	if errors.Is(err, pause.ErrNotLoaded) {
		if err := env.Pauses.Load(ctx); err != nil {
			return nil, fmt.Errorf("reading operators' holds: %w", err)
		}
		held, err = env.Pauses.Do(request, start)
	}
	return held, err
}

// heldBy reports whether request (uuid.Nil: the rack) is held now, noting
// why in skipped: a task's pass leaves a held request alone (unlessHeld is
// what makes a start and a pause exclusive; this only spares the work of
// preparing one).
func (env Env) heldBy(request uuid.UUID, skipped *Skips, what string) bool {
	p := env.holdOn(request)
	if p == nil {
		return false
	}
	skipped.Add("%s: %s", what, heldText(p))
	return true
}

// holdOn is the hold on request now (its own or the rack's), or nil.
func (env Env) holdOn(request uuid.UUID) *store.Pause {
	if env.Pauses == nil {
		return nil
	}
	p, _ := env.Pauses.Of(request)
	return p
}

// heldText says who holds what, since when and why.
func heldText(p *store.Pause) string {
	whose := "its request is paused"
	if p.Rack() {
		whose = "the rack is paused"
	}
	return fmt.Sprintf("%s by %s since %s (%s)", whose, p.By, p.Time.UTC().Format(time.RFC3339), p.Reason)
}

// slotFreed wakes the tasks that admit work when a saga that may have
// given back a budget's slot ends while work waits for one: a rebuild's
// start (a clone's slot), a rw drive (a repair reaching ReplacementDone),
// a step.
func (env Env) slotFreed(t *saga.Template) {
	if env.Admission == nil || env.activate == nil || !env.Admission.anyWaiting() {
		return
	}
	switch t {
	case sagadef.ROStart, sagadef.RWStart, sagadef.RWDrive:
		// One plan covers both kinds: the rw detector's admits read-only
		// requests too, reserves their slots and wakes the start task
		// for them. Waking both made two full plans of the same waiting
		// requests per freed slot, a fifth of the orchestrator's CPU
		// during a sled's replacement, most of it with no read-only
		// request left to start. While some wait, the start task is
		// woken as well: its pass also completes those whose target is
		// gone, which no plan does.
		env.activate(RWDetectorName)
		if env.Admission.readOnlyWaits() {
			env.activate(ROStartName)
		}
	case sagadef.ROStep:
		env.activate(ROStepName)
	}
}

// sagaEnded wakes admission for the slot an ended saga gave back. A
// committed rw-replacement-start gave none back: its repair holds the
// slot until ReplacementDone, and the drive that sees that frees it.
func (env Env) sagaEnded(t *saga.Template, o saga.Outcome) {
	if t == sagadef.RWStart && o.Kind == saga.Succeeded {
		return
	}
	env.slotFreed(t)
}

// afterUnwind counts a saga that did not move its record on as an attempt
// (with its error, for operators) and wakes the record's task once the
// backoff for that many attempts has passed: an unwound step or request is
// retried within a second or so, not after the task's safety period. A saga
// that lost its claim (another saga holds the record) did nothing to the
// record and counts for nothing; a stuck one waits for an operator.
func (env Env) afterUnwind(j job, o saga.Outcome) {
	if o.Kind == saga.Succeeded || o.Kind == 0 || j.record == uuid.Nil {
		return // done, or never finished here (shut down, adopted elsewhere)
	}
	if o.Kind == saga.Failed && o.FailedNode == "set_saga_id" && o.Err != nil && strings.Contains(o.Err.Message, store.ErrConflict.Error()) {
		return
	}
	// Held back by a rebuild budget: not a failed attempt (no backoff);
	// the record waits for a slot, and the slot's release wakes its task.
	if o.Kind == saga.Failed && o.Err != nil {
		if refused, dest := budgetRefusal(o.Err.Message); refused {
			if dest && env.Admission != nil {
				env.Admission.refusedDest(j.record)
			}
			return
		}
	}
	cause := fmt.Sprintf("%v", o.Error())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	a, err := env.Deps.Store.RecordAttempt(ctx, j.record, cause)
	if err != nil {
		env.Logger.Warn("record a failed attempt", "record", j.record, "error", err)
		return
	}
	for _, id := range j.also {
		if _, err := env.Deps.Store.RecordAttempt(ctx, id, cause); err != nil {
			env.Logger.Warn("record a failed attempt", "record", id, "error", err)
		}
	}
	if o.Kind != saga.Failed {
		return
	}
	delay := env.Retry.After(a.Attempts)
	if env.activate != nil {
		time.AfterFunc(delay, func() { env.activate(j.task) })
	}
}

// retryWakes schedules, per task, one activation for when the earliest
// backoff it skipped a record for ends. afterUnwind's timer wakes only the
// task whose saga failed; a record that has since moved to another task's
// phase carries its backoff there, and that task must look again when it
// ends rather than after its safety period.
type retryWakes struct {
	mu  sync.Mutex
	due map[string]time.Time // task → when its pending wake fires
}

func (w *retryWakes) at(at time.Time, task string, activate func(string)) {
	if w == nil || activate == nil || task == "" {
		return
	}
	w.mu.Lock()
	if pending, ok := w.due[task]; ok && !pending.After(at) {
		w.mu.Unlock()
		return // an earlier wake will look again
	}
	if w.due == nil {
		w.due = map[string]time.Time{}
	}
	w.due[task] = at
	w.mu.Unlock()
	time.AfterFunc(time.Until(at), func() {
		w.mu.Lock()
		if w.due[task].Equal(at) {
			delete(w.due, task)
		}
		w.mu.Unlock()
		activate(task)
	})
}

// RetryBackoff is the wait before a record whose saga unwound is tried
// again: Initial after the first attempt, doubling with every further one,
// never more than Max.
type RetryBackoff struct {
	Initial, Max time.Duration
}

// Default retry backoff: quick enough that a step unwound by a blip is
// retried at once, long enough that a record failing for a lasting reason
// (no capacity, say) costs a saga every half minute, like the task's
// safety period, not every pass.
const (
	DefaultRetryInitial = 250 * time.Millisecond
	DefaultRetryMax     = 30 * time.Second
)

// After is the wait after the given number of failed attempts.
func (b RetryBackoff) After(attempts int) time.Duration {
	if b.Initial <= 0 {
		b.Initial = DefaultRetryInitial
	}
	if b.Max <= 0 {
		b.Max = DefaultRetryMax
	}
	d := b.Initial
	for i := 1; i < attempts && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// backoffEnds reports whether a record's last failed attempt is too
// recent to try again, and when its backoff ends.
func (env Env) backoffEnds(a store.Attempts) (time.Time, bool) {
	if a.Attempts == 0 || a.LastErrorTime == nil {
		return time.Time{}, false
	}
	due := a.LastErrorTime.Add(env.Retry.After(a.Attempts))
	return due, time.Now().Before(due)
}

// newRequestTrace starts the root span of a new replacement request and
// returns its traceparent: every saga working on the request is created as
// its child (linked to the activation that started it), so one replacement
// is one trace.
func newRequestTrace(ctx context.Context, name string, attrs ...attribute.KeyValue) string {
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithAttributes(attrs...)}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	c, span := otel.Tracer("storagecp/replacement").Start(ctx, name, opts...)
	defer span.End()
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(c, carrier)
	return carrier["traceparent"]
}

// Skips lists what a task's pass left alone and why, so that operators see
// what a request waits on without reading the code: at most maxSkips
// entries, with the total.
type Skips struct {
	Items []string `json:"items"`
	Total int      `json:"total"`
}

const maxSkips = 100

// Add records one skipped item; a nil Skips records nothing.
func (s *Skips) Add(format string, args ...any) {
	if s == nil {
		return
	}
	s.Total++
	if len(s.Items) < maxSkips {
		s.Items = append(s.Items, fmt.Sprintf(format, args...))
	}
}

// errs collects per-item errors into a status list.
func errf(list *[]string, format string, args ...any) {
	*list = append(*list, fmt.Sprintf(format, args...))
}
