// Package background runs the orchestrator's background tasks the way Nexus does:
// each task has a period (the safety net) and can be activated at once by
// whatever advanced the records it waits on; an activation returns a status
// struct that operators read through AdminService. Activations of one task
// never overlap, and activations requested while one runs are coalesced into
// a single follow-up run.
package background

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// Task is one background task.
type Task interface {
	Name() string
	Description() string
	// Activate does one pass and returns its status (JSON-serialisable).
	Activate(ctx context.Context) any
}

// Why a pass runs, as Trigger reports it and the pass metric counts it.
const (
	// TriggerPeriod is the task's period: the safety net.
	TriggerPeriod = "period"
	// TriggerRetry is the shorter wait after a pass that reported errors.
	TriggerRetry = "retry"
	// TriggerActivation is Activate: whatever advanced the records the
	// task waits on (a finished saga, a released lock).
	TriggerActivation = "activation"
	// TriggerOperator is ActivateByOperator: AdminService.
	TriggerOperator = "operator"
)

type triggerKey struct{}

// WithTrigger returns ctx for a pass run for trigger: what the driver
// gives each pass, and how a task's test runs a pass as the driver would.
func WithTrigger(ctx context.Context, trigger string) context.Context {
	return context.WithValue(ctx, triggerKey{}, trigger)
}

// Trigger says why the pass running under ctx runs (one of the Trigger
// constants; "" outside a pass). A task may pace expensive work across
// activations, which can come after every finished saga, but should not
// pace it on the period, a retry or an operator's request.
func Trigger(ctx context.Context) string {
	t, _ := ctx.Value(triggerKey{}).(string)
	return t
}

// ErrUnknownTask is returned by Activate for an unregistered name.
var ErrUnknownTask = errors.New("unknown background task")

// Status is what operators see of a task.
type Status struct {
	Name          string
	Description   string
	Period        time.Duration
	LastStarted   time.Time
	LastFinished  time.Time
	LastStatus    json.RawMessage
	Activations   int64
	SagasInFlight int64
}

type entry struct {
	task    Task
	period  time.Duration
	kick    chan struct{}
	limiter *Limiter
	// operator is set by ActivateByOperator until the pass it asked for
	// starts.
	operator atomic.Bool

	mu     sync.Mutex
	status Status
}

// Driver runs registered tasks.
type Driver struct {
	logger  *slog.Logger
	tracer  trace.Tracer
	metrics driverMetrics

	mu      sync.Mutex
	entries map[string]*entry
	order   []string
}

// NewDriver returns an empty driver.
func NewDriver(logger *slog.Logger) *Driver {
	return &Driver{logger: logger, tracer: otel.Tracer("storagecp/tasks"), metrics: newDriverMetrics(), entries: map[string]*entry{}}
}

// Register adds a task with its period and the limiter bounding the sagas it
// keeps in flight (nil for tasks that start none).
func (d *Driver) Register(t Task, period time.Duration, limiter *Limiter) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := &entry{task: t, period: period, kick: make(chan struct{}, 1), limiter: limiter}
	if limiter != nil {
		// Work skipped because the task was at its bound (or a key was busy)
		// waits for a slot: when one frees, look again at once. Only then —
		// re-activating on every release would retry a failing saga in a
		// hot loop instead of on the task's schedule.
		name := t.Name()
		limiter.onSkippedRelease = func() { _ = d.Activate(name) }
	}
	e.status = Status{Name: t.Name(), Description: t.Description(), Period: period}
	d.entries[t.Name()] = e
	d.order = append(d.order, t.Name())
}

// Run runs every task until ctx ends; each activates once at start.
func (d *Driver) Run(ctx context.Context) {
	d.mu.Lock()
	entries := make([]*entry, 0, len(d.order))
	for _, n := range d.order {
		entries = append(entries, d.entries[n])
	}
	d.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range entries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d.loop(ctx, e)
		}()
	}
	wg.Wait()
}

// A pass that reports errors (its status's "errors", the tasks'
// convention) may have met something transient: a broken connection, a
// service restarting, a COMMIT whose answer was lost. Whatever it left
// undone would otherwise wait for the next activation from elsewhere, or
// a whole period, and after a lost answer nothing else may come: the write
// happened, so nobody fails again, and nobody wakes the task. So the driver
// runs the task again after errorRetryFirst, doubling the wait with each
// pass that errs again, never waiting longer than the period; a clean pass
// returns the task to its period. Activations still run at once.
const errorRetryFirst = time.Second

// nextErrorRetry is the wait before the pass after one that erred, given
// the wait before that one (0: the pass before did not err).
func nextErrorRetry(last, period time.Duration) time.Duration {
	return min(max(2*last, errorRetryFirst), period)
}

func (d *Driver) loop(ctx context.Context, e *entry) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	var retry time.Duration // the wait since the last pass erred; 0 after a clean one
	for {
		trigger := TriggerPeriod
		if retry > 0 {
			trigger = TriggerRetry
		}
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-e.kick:
			trigger = TriggerActivation
			if e.operator.Swap(false) {
				trigger = TriggerOperator
			}
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
		wait := e.period
		if d.activate(ctx, e, trigger) {
			retry = nextErrorRetry(retry, e.period)
			wait = retry
		} else {
			retry = 0
		}
		timer.Reset(wait)
	}
}

// activate runs one pass and records its status; it reports whether the
// pass reported errors.
func (d *Driver) activate(ctx context.Context, e *entry, trigger string) (erred bool) {
	ctx, span := d.tracer.Start(ctx, "task "+e.task.Name(), trace.WithNewRoot(),
		trace.WithAttributes(attribute.String("task.name", e.task.Name())))
	defer span.End()
	began := time.Now()
	e.mu.Lock()
	e.status.LastStarted = began
	e.mu.Unlock()
	st := e.task.Activate(WithTrigger(ctx, trigger))
	raw, err := json.Marshal(st)
	if err != nil {
		raw, _ = json.Marshal(map[string]string{"error": "status not serialisable: " + err.Error()})
	}
	e.mu.Lock()
	e.status.LastFinished = time.Now()
	e.status.LastStatus = raw
	e.status.Activations++
	e.mu.Unlock()
	outcome := outcomeOf(raw)
	d.metrics.passDone(ctx, e.task.Name(), trigger, outcome, time.Since(began))
	return outcome == outcomeError
}

// Activate asks a task to run as soon as possible. Requests while it runs
// coalesce into one more run.
func (d *Driver) Activate(name string) error {
	e, err := d.lookup(name)
	if err != nil {
		return err
	}
	e.wake()
	return nil
}

// ActivateByOperator is Activate for an operator's request: the pass it
// runs has TriggerOperator, which a task may not pace (see Trigger).
func (d *Driver) ActivateByOperator(name string) error {
	e, err := d.lookup(name)
	if err != nil {
		return err
	}
	e.operator.Store(true)
	e.wake()
	return nil
}

func (d *Driver) lookup(name string) (*entry, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.entries[name]
	if !ok {
		return nil, ErrUnknownTask
	}
	return e, nil
}

// wake asks for one more pass; it coalesces with one already asked for.
func (e *entry) wake() {
	select {
	case e.kick <- struct{}{}:
	default:
	}
}

// Statuses lists every task's status, by name.
func (d *Driver) Statuses() []Status {
	d.mu.Lock()
	entries := make([]*entry, 0, len(d.entries))
	for _, e := range d.entries {
		entries = append(entries, e)
	}
	d.mu.Unlock()
	out := make([]Status, 0, len(entries))
	for _, e := range entries {
		e.mu.Lock()
		s := e.status
		e.mu.Unlock()
		if e.limiter != nil {
			s.SagasInFlight = int64(e.limiter.InFlight())
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Limiter bounds the sagas a task keeps in flight. Fairness across requests
// comes from the tasks' round-robin over requests; the limiter also keeps a
// per-key count so one key cannot take more than PerKey slots.
type Limiter struct {
	max, perKey      int
	onSkippedRelease func() // set by Driver.Register
	skipped          bool   // a TryAcquire failed since the last release

	mu    sync.Mutex
	total int
	byKey map[string]int
}

// NewLimiter allows max sagas in flight, at most perKey per key (0: no
// per-key bound).
func NewLimiter(max, perKey int) *Limiter {
	return &Limiter{max: max, perKey: perKey, byKey: map[string]int{}}
}

// TryAcquire takes a slot for key, returning its release, or false when the
// task or the key is at its bound.
func (l *Limiter) TryAcquire(key string) (release func(), ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max || (l.perKey > 0 && l.byKey[key] >= l.perKey) {
		l.skipped = true
		return nil, false
	}
	l.total++
	l.byKey[key]++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			l.total--
			if l.byKey[key]--; l.byKey[key] == 0 {
				delete(l.byKey, key)
			}
			var again func()
			if l.skipped {
				l.skipped, again = false, l.onSkippedRelease
			}
			l.mu.Unlock()
			if again != nil {
				again()
			}
		})
	}, true
}

// InFlight is the number of slots taken.
func (l *Limiter) InFlight() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Max is the bound on sagas in flight.
func (l *Limiter) Max() int { return l.max }
