package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"storagecp.dev/orchestrator/internal/saga/sagalog"
)

// SEC is a saga execution coordinator.
type SEC struct {
	store    *sagalog.Store
	id       string
	registry *Registry
	deps     any
	logger   *slog.Logger
	tracer   trace.Tracer
	metrics  *secMetrics
	crash    crashPoint
	fail     failPoint
	// actionRetry bounds the in-place retries of an action (undos are
	// retried until they succeed or the saga's context ends).
	actionRetry RetryPolicy
	// unwindGrace is how long an operator's unwind lets the actions in
	// flight finish by themselves before cancelling them (WithUnwindGrace).
	unwindGrace time.Duration

	ctx    context.Context // cancelled by Shutdown
	cancel context.CancelFunc
	wg     sync.WaitGroup // drivers

	appendCh chan *appendReq // to the log writers (group commit)
	writerWG sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	running  map[uuid.UUID]*execution
	finished map[uuid.UUID]Outcome // recent outcomes, for Wait

	writes  atomic.Int64
	appends atomic.Int64
	events  atomic.Int64
}

// SECOption tunes NewSEC.
type SECOption func(*secOptions)

type secOptions struct {
	base        context.Context
	actionRetry RetryPolicy
	unwindGrace time.Duration
	crash       crashPoint
	fail        failPoint
}

// DefaultUnwindGrace is how long an operator's unwind waits, by default,
// for the actions in flight to finish by themselves.
const DefaultUnwindGrace = 10 * time.Second

// WithUnwindGrace sets how long an operator's unwind (Unwind) lets the
// actions in flight finish by themselves before it cancels them. An
// action cancelled mid-call may still land at the service it called, and
// the engine, recording it failed, never undoes it; an action that
// finishes is undone like any other. So the unwind waits first, and
// cancels only what is still running after d: an action that hangs, which
// is what an operator unwinds for.
func WithUnwindGrace(d time.Duration) SECOption {
	return func(o *secOptions) { o.unwindGrace = d }
}

// WithBaseContext makes every action and undo run under a context derived
// from base: its values (the leader term's fencing epoch, say) reach every
// call an action makes, and cancelling base stops the SEC as Shutdown does.
func WithBaseContext(base context.Context) SECOption {
	return func(o *secOptions) { o.base = base }
}

// NewSEC returns a SEC with id secID over pool. registry holds every
// template; deps is handed to actions (ActionContext.Deps). It does not
// recover anything: call Recover.
func NewSEC(pool *pgxpool.Pool, secID string, registry *Registry, deps any, logger *slog.Logger, opts ...SECOption) *SEC {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	o := secOptions{base: context.Background(), actionRetry: DefaultActionRetry(), unwindGrace: DefaultUnwindGrace}
	for _, opt := range opts {
		opt(&o)
	}
	ctx, cancel := context.WithCancel(o.base)
	s := &SEC{
		store: sagalog.New(pool), id: secID, registry: registry, deps: deps,
		logger: logger.With("sec", secID), tracer: otel.Tracer("storagecp/saga"),
		crash: o.crash, fail: o.fail, actionRetry: o.actionRetry, unwindGrace: o.unwindGrace, ctx: ctx, cancel: cancel,
		running: map[uuid.UUID]*execution{}, finished: map[uuid.UUID]Outcome{},
		appendCh: make(chan *appendReq, 1024),
	}
	s.metrics = newSECMetrics(s)
	s.startLogWriters()
	return s
}

// ID is the SEC id.
func (s *SEC) ID() string { return s.id }

// CreateOption tunes Create.
type CreateOption func(*createOptions)

type createOptions struct {
	id          uuid.UUID
	hooks       *Hooks
	traceParent string
	links       []trace.Link
	subject     *string
	parent      *string
}

// WithID uses a caller-chosen saga id (for example one announced before
// persisting). Creating the same id twice is an error.
func WithID(id uuid.UUID) CreateOption { return func(o *createOptions) { o.id = id } }

// WithHooks attaches test hooks to the saga.
func WithHooks(h *Hooks) CreateOption { return func(o *createOptions) { o.hooks = h } }

// WithTraceParent makes the saga's span a child of the W3C traceparent tp
// (persisted, so a recovered saga continues the same trace). Without it the
// span context of Create's ctx is used, if any.
func WithTraceParent(tp string) CreateOption { return func(o *createOptions) { o.traceParent = tp } }

// WithLinks adds span links to the saga's span (not persisted).
func WithLinks(links ...trace.Link) CreateOption {
	return func(o *createOptions) { o.links = append(o.links, links...) }
}

// WithSubject records what the saga acts on (saga.subject_id).
func WithSubject(subject string) CreateOption { return func(o *createOptions) { o.subject = &subject } }

// WithSubjectParent records the record the subject belongs to
// (saga.subject_parent_id; a step's request), so that listing the sagas of
// the parent finds the subject's sagas too (ListFilter.SubjectOrParent).
func WithSubjectParent(parent string) CreateOption {
	return func(o *createOptions) { o.parent = &parent }
}

// ErrClosed means the SEC is shut down.
var ErrClosed = errors.New("saga executor is shut down")

// Create builds the template's DAG for params, persists the saga with its
// first events in one commit and starts it. It returns once the saga is
// durable; cancelling ctx does not cancel the saga, nor, once the DAG is
// built, the write (it returns when the write is settled, or the SEC shuts
// down).
func (s *SEC) Create(ctx context.Context, t *Template, params any, opts ...CreateOption) (uuid.UUID, error) {
	var o createOptions
	for _, f := range opts {
		f(&o)
	}
	if o.id == uuid.Nil {
		o.id = newSagaID()
	}
	d, err := t.BuildDAG(params)
	if err != nil {
		return uuid.Nil, err
	}
	if err := s.registry.check(d); err != nil {
		return uuid.Nil, fmt.Errorf("saga %s: %w (register the template)", t.name, err)
	}
	dagJSON, err := json.Marshal(d)
	if err != nil {
		return uuid.Nil, err
	}
	owner := sagalog.Owner{SEC: s.id, Generation: 1}
	ex, err := newExecution(s, o.id, d, owner, o.hooks)
	if err != nil {
		return uuid.Nil, err
	}
	if o.traceParent == "" {
		carrier := propagation.MapCarrier{}
		propagation.TraceContext{}.Inject(ctx, carrier)
		o.traceParent = carrier["traceparent"]
	}
	var tp *string
	if o.traceParent != "" {
		tp = &o.traceParent
		ex.parentCtx = parentFromTraceParent(o.traceParent)
	}
	ex.links = o.links
	var first batch
	ex.advance(&first)

	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return uuid.Nil, ErrClosed
	}
	if _, dup := s.running[o.id]; dup {
		s.mu.Unlock()
		return uuid.Nil, fmt.Errorf("saga %s already running", o.id)
	}
	s.register(ex)
	s.mu.Unlock()

	// The write and its retries outlive the caller's cancellation (not its
	// values): a write cut off by it may commit all the same, and a saga
	// durable but not started would wait for the next leader's recovery.
	// CreateSaga is idempotent, so the retries settle what an ambiguous
	// attempt did; only the SEC's end stops them.
	wctx, wcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer wcancel()
	defer context.AfterFunc(s.ctx, wcancel)()
	err = retryWrite(wctx, s.logger, func() error {
		state := sagalog.StateRunning
		if first.state != "" {
			state = first.state // a DAG without actions is done at once
		}
		return s.store.CreateSaga(wctx, o.id, t.name, s.id, state, dagJSON, o.subject, o.parent, tp, first.events)
	})
	if err != nil {
		s.mu.Lock()
		delete(s.running, o.id)
		s.mu.Unlock()
		ex.cancel()
		s.wg.Done()
		return uuid.Nil, fmt.Errorf("persist saga: %w", err)
	}
	s.writes.Add(1)
	s.appends.Add(1)
	s.events.Add(int64(len(first.events)))
	s.metrics.sagaStarted(ctx, t.name)
	s.start(ex, first, true)
	return o.id, nil
}

// retryWrite retries fn with backoff until it succeeds, fails permanently
// or ctx ends.
func retryWrite(ctx context.Context, logger *slog.Logger, fn func() error) error {
	delay := 5 * time.Millisecond
	for {
		err := fn()
		if err == nil || ctx.Err() != nil || !Classify(ctx, err).Retryable {
			return err
		}
		logger.Warn("saga store write failed; retrying", "error", err, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return err
		}
		delay = min(delay*2, 5*time.Second)
	}
}

func parentFromTraceParent(tp string) context.Context {
	return propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": tp})
}

// register enters ex in the running table; s.mu must be held. The wait
// group is incremented here, under mu, so never after Shutdown's Wait
// began; the execution's context exists from here on, so Abandon can
// cancel it before it starts.
func (s *SEC) register(ex *execution) {
	s.running[ex.id] = ex
	s.wg.Add(1)
	ex.ctx, ex.cancel = context.WithCancel(s.ctx)
}

// start launches the driver of a registered execution.
func (s *SEC) start(ex *execution, first batch, written bool) {
	go func() {
		defer s.wg.Done()
		defer ex.cancel()
		ex.drive(ex.ctx, first, written)
	}()
}

// forget moves a finished execution out of the running table.
func (s *SEC) forget(ex *execution) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.running, ex.id)
	if ex.err == nil {
		if len(s.finished) > 10000 {
			clear(s.finished) // a cache only: Wait falls back to the log
		}
		s.finished[ex.id] = ex.outcome
	}
}

// Run creates a saga and waits for its outcome.
func (s *SEC) Run(ctx context.Context, t *Template, params any, opts ...CreateOption) (Outcome, error) {
	id, err := s.Create(ctx, t, params, opts...)
	if err != nil {
		return Outcome{}, err
	}
	return s.Wait(ctx, id)
}

// ErrAbandoned is returned by Wait for an abandoned saga.
var ErrAbandoned = errors.New("saga abandoned")

// Wait returns the outcome of saga id once it is done. For a saga driven
// elsewhere (already finished, or adopted by another SEC meanwhile) it
// reads the log, polling until done. The error is non-nil only when no
// outcome exists: ctx ended, the saga was abandoned, or this SEC shut down
// (ErrShutdown) before the saga finished.
func (s *SEC) Wait(ctx context.Context, id uuid.UUID) (Outcome, error) {
	s.mu.Lock()
	ex := s.running[id]
	o, done := s.finished[id]
	s.mu.Unlock()
	if done {
		return o, nil
	}
	if ex != nil {
		select {
		case <-ex.done:
			switch {
			case ex.err == nil:
				return ex.outcome, nil
			case !errors.Is(ex.err, ErrNotOwner):
				return Outcome{}, ex.err
			}
			// Adopted by another SEC: its outcome will be in the log.
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		}
	}
	delay := 10 * time.Millisecond
	for {
		row, err := s.store.Get(ctx, id)
		if err != nil {
			return Outcome{}, err
		}
		switch row.State {
		case sagalog.StateDone:
			return s.outcomeOf(ctx, row)
		case sagalog.StateAbandoned:
			return Outcome{}, fmt.Errorf("%w: %s", ErrAbandoned, id)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		}
		delay = min(delay*2, 500*time.Millisecond)
	}
}

// load parses a saga row and replays its log into an execution.
func (s *SEC) load(ctx context.Context, row sagalog.Saga) (*execution, []sagalog.Event, error) {
	var d DAG
	if err := json.Unmarshal(row.DAG, &d); err != nil {
		return nil, nil, unrecoverable(fmt.Errorf("decode DAG: %w", err))
	}
	gen := row.AdoptGeneration
	ex, err := newExecution(s, row.ID, &d, sagalog.Owner{SEC: s.id, Generation: gen}, nil)
	if err != nil {
		return nil, nil, unrecoverable(err)
	}
	events, err := s.store.Events(ctx, row.ID)
	if err != nil {
		return nil, nil, err
	}
	if err := ex.replay(events); err != nil {
		return nil, nil, unrecoverable(err)
	}
	if row.UnwindComment != nil {
		ex.opComment = *row.UnwindComment
		ex.opErr = operatorError(ex.opComment)
	}
	return ex, events, nil
}

func (s *SEC) outcomeOf(ctx context.Context, row sagalog.Saga) (Outcome, error) {
	ex, _, err := s.load(ctx, row)
	if err != nil {
		return Outcome{}, err
	}
	return ex.outcomeFromLog(), nil
}

// unrecoverableError is a saga recovery can never resume (its DAG or log
// does not load): recovery abandons it.
type unrecoverableError struct{ err error }

func (e unrecoverableError) Error() string { return e.err.Error() }
func (e unrecoverableError) Unwrap() error { return e.err }

func unrecoverable(err error) error { return unrecoverableError{err} }

// RecoveryReport summarises a recovery pass.
type RecoveryReport struct {
	// Recovered sagas now run here.
	Recovered []uuid.UUID
	// Skipped were already running here.
	Skipped int
	// Abandoned could never be recovered (unknown action, corrupt log) and
	// were marked abandoned/unrecoverable.
	Abandoned []uuid.UUID
	// Failed hit a transient error; the next pass retries them.
	Failed []error
}

// Recover resumes every unfinished saga owned by this SEC that is not
// already running here (docs/architecture.md, "One leader, fenced", step 3):
// the log is replayed, started but unfinished actions and undos run again, a
// saga with an undo_failed event no operator skipped goes straight to stuck,
// and a saga an operator asked to unwind (SEC.Unwind) records its started
// actions failed with the operator's error instead of running them again, and
// unwinds. Each resumed saga is claimed first (its adopt generation bumped),
// so at most one driver can append to it even if an earlier SEC instance with
// the same id is still running. Run it at start-up, after Adopt, and
// periodically.
func (s *SEC) Recover(ctx context.Context) (RecoveryReport, error) {
	var rep RecoveryReport
	rows, err := s.store.RecoveryCandidates(ctx, s.id)
	if err != nil {
		return rep, fmt.Errorf("list recovery candidates: %w", err)
	}
	for _, row := range rows {
		res, err := s.recoverRow(ctx, row)
		switch {
		case errors.Is(err, ErrClosed):
			return rep, err
		case err != nil:
			rep.Failed = append(rep.Failed, err)
		case res == recoverAbandoned:
			rep.Abandoned = append(rep.Abandoned, row.ID)
		case res == recoverSkipped:
			rep.Skipped++
		default:
			rep.Recovered = append(rep.Recovered, row.ID)
		}
	}
	return rep, nil
}

// recoverResult is what recoverRow did with a saga.
type recoverResult int

const (
	recoverStarted   recoverResult = iota // now driven here
	recoverSkipped                        // already running here, finished, or claimed by someone else
	recoverAbandoned                      // unrecoverable: marked abandoned
)

// recoverRow resumes one unfinished saga this SEC owns, as listed in row
// (see Recover). The error is ErrClosed once the SEC shut down, or a
// transient failure (the next pass retries the saga).
func (s *SEC) recoverRow(ctx context.Context, row sagalog.Saga) (recoverResult, error) {
	// A saga that finished here after the listing is in finished: its
	// listed state is stale.
	s.mu.Lock()
	_, known := s.running[row.ID]
	_, done := s.finished[row.ID]
	known = known || done
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	if known {
		return recoverSkipped, nil
	}
	ex, _, err := s.load(ctx, row)
	var unrec unrecoverableError
	switch {
	case errors.As(err, &unrec):
		s.logger.Error("saga unrecoverable; abandoning", "saga_id", row.ID, "error", err)
		sec := s.id
		if _, aerr := s.store.Abandon(ctx, row.ID, sagalog.AbandonUnrecoverable, err.Error(), &sec); aerr != nil {
			return 0, fmt.Errorf("saga %s: abandon: %w", row.ID, aerr)
		}
		return recoverAbandoned, nil
	case err != nil:
		return 0, fmt.Errorf("saga %s: %w", row.ID, err)
	}
	// Claim it: a stale driver of an earlier incarnation of this SEC id
	// (one whose shutdown timed out) must not keep appending.
	gen, ok, err := s.store.Claim(ctx, row.ID, s.id, row.AdoptGeneration)
	if err != nil {
		return 0, fmt.Errorf("saga %s: claim: %w", row.ID, err)
	}
	if !ok {
		return recoverSkipped, nil
	}
	ex.owner.Generation = gen
	if row.TraceParent != nil {
		ex.parentCtx = parentFromTraceParent(*row.TraceParent)
	}
	first := ex.resumeBatch(row.State)
	s.mu.Lock()
	_, known = s.running[row.ID]
	_, done = s.finished[row.ID]
	if known || done || s.closed {
		s.mu.Unlock()
		return recoverSkipped, nil
	}
	s.register(ex)
	s.mu.Unlock()
	s.logger.Info("recovering saga", "saga_id", row.ID, "saga", row.Name, "unwinding", ex.unwinding, "stuck", ex.stuck,
		"unwind_requested", ex.opErr != nil)
	s.start(ex, first, false)
	return recoverStarted, nil
}

// Adopt makes this SEC the owner of every unfinished saga of fromSEC
// (adopt_generation+1, so fromSEC's writes are refused from then on). It
// returns how many it took; call Recover to run them. Only call it when
// fromSEC can no longer run (the leadership code guarantees that).
func (s *SEC) Adopt(ctx context.Context, fromSEC string) (int64, error) {
	if fromSEC == s.id {
		return 0, errors.New("a SEC cannot adopt its own sagas")
	}
	return s.store.Reassign(ctx, fromSEC, s.id)
}

// Abandon reasons.
const (
	AbandonOperator      = sagalog.AbandonOperator
	AbandonUnrecoverable = sagalog.AbandonUnrecoverable
	AbandonOrphaned      = sagalog.AbandonOrphaned
)

// Abandon marks an unfinished or stuck saga abandoned: it is never driven
// again and NOT unwound, so every effect of the nodes it completed (and of
// any action it had in flight) remains, for an operator to repair. Recovery
// uses it for a saga it cannot load (AbandonUnrecoverable); an operator
// who wants the saga's effects undone uses Unwind instead. If this SEC is
// driving it, it stops at once; any other owner stops at its next log
// write. It returns ErrNotFound-wrapped errors for an unknown id and an
// error for a saga that finished and is not stuck.
func (s *SEC) Abandon(ctx context.Context, id uuid.UUID, reason, comment string) error {
	switch reason {
	case AbandonOperator, AbandonUnrecoverable, AbandonOrphaned:
	default:
		return fmt.Errorf("abandon reason %q: want operator, unrecoverable or orphaned", reason)
	}
	ok, err := s.store.Abandon(ctx, id, reason, comment, nil)
	if err != nil {
		return err
	}
	if !ok {
		if _, err := s.store.Get(ctx, id); err != nil {
			return err
		}
		return fmt.Errorf("saga %s is done; only unfinished or stuck sagas can be abandoned", id)
	}
	s.mu.Lock()
	ex := s.running[id]
	s.mu.Unlock()
	if ex != nil {
		ex.cancel()
	}
	return nil
}

// ErrNotFound means no saga has the id.
var ErrNotFound = sagalog.ErrNotFound

// InFlight is the number of sagas this SEC is driving.
func (s *SEC) InFlight() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.running)
}

// Stats counts what this SEC has written to the log.
type Stats struct {
	// Writes are statements, each one commit: a saga's creation, or one
	// group commit carrying several sagas' appends.
	Writes int64
	// Appends are the sagas' own durable writes (a creation, or one
	// saga's share of a group commit): what an engine without group
	// commit would commit one by one.
	Appends int64
	// Events are node events (rows) written.
	Events int64
}

// Stats returns the SEC's counters.
func (s *SEC) Stats() Stats {
	return Stats{Writes: s.writes.Load(), Appends: s.appends.Load(), Events: s.events.Load()}
}

// Shutdown stops driving sagas (in-flight actions see their context
// cancelled; nothing more is written) and waits for the drivers to exit,
// or for ctx. Unfinished sagas resume at the next Recover.
func (s *SEC) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.metrics.close()
	s.cancel()
	done := make(chan struct{})
	go func() { s.wg.Wait(); s.writerWG.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// newSagaID returns a time-ordered (version 7) UUID: a saga's log rows are
// keyed by its id, and ids that grow with time keep a busy SEC's inserts on
// the few rightmost pages of the log's indexes instead of all over them.
func newSagaID() uuid.UUID {
	if id, err := uuid.NewV7(); err == nil {
		return id
	}
	return uuid.New()
}
