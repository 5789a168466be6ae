package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"storagecp.dev/orchestrator/internal/saga/sagalog"
)

// Node statuses: each node's own state machine, advanced by its log events.
type nodeStatus int

const (
	neverStarted nodeStatus = iota
	started
	succeeded
	failed
	undoStarted
	undoFinished
	undoFailed
	// undoSkipped: the undo failed for good and an operator, having dealt
	// with its effect by hand, told the engine to go on without it. The
	// node counts as undone.
	undoSkipped
)

func (s nodeStatus) String() string {
	return [...]string{"never_started", "started", "succeeded", "failed", "undo_started", "undo_finished", "undo_failed", "undo_skipped"}[s]
}

// Event labels as persisted, in replay rank order (replay sorts a node's
// events by this rank, never by time).
const (
	evStarted      = "started"
	evSucceeded    = "succeeded"
	evFailed       = "failed"
	evUndoStarted  = "undo_started"
	evUndoFinished = "undo_finished"
	evUndoFailed   = "undo_failed"
	// evUndoSkipped answers an undo_failed (so it ranks after it): an
	// operator dealt with the failed undo's effect (SEC.Unwind).
	evUndoSkipped = "undo_skipped"
)

var eventRank = map[string]int{evStarted: 0, evSucceeded: 1, evFailed: 2, evUndoStarted: 3, evUndoFinished: 4, evUndoFailed: 5, evUndoSkipped: 6}

// ErrNotOwner means the saga stopped being driven here because another SEC
// adopted it (or an operator abandoned it) and this SEC's writes were
// refused.
var ErrNotOwner = errors.New("saga no longer owned by this SEC")

// ErrShutdown means the SEC shut down before the saga finished; it resumes
// at the next recovery.
var ErrShutdown = errors.New("saga executor shut down")

type nodeState struct {
	status nodeStatus
	// undone: while unwinding, nothing of this node remains (undo finished,
	// or it never ran or failed).
	undone  bool
	running bool // an action or undo task is in flight
	output  json.RawMessage
	err     *ActionError
	// actionErr is the action's error when the node failed (err then
	// moves on to its undo's, if the undo of an unknown outcome fails).
	actionErr *ActionError
	// skipComment is the operator's comment of an undo_skipped node.
	skipComment string
}

type completion struct {
	node   int
	undo   bool
	output json.RawMessage
	err    *ActionError
	// attempts: runs of the task (the last one, with Hooks.InjectRepeat).
	attempts int
}

// shortcutSpan is a node the engine completed itself, at a time.
type shortcutSpan struct {
	node int
	at   time.Time
}

type launch struct {
	node int
	undo bool
	// unknown: an undo of a node whose action failed with its outcome
	// unknown (ActionContext.OutcomeUnknown).
	unknown bool
}

// batch is what one iteration of the driver writes and then starts.
type batch struct {
	events   []sagalog.Event
	state    string
	launches []launch
	finished bool
}

func (b *batch) add(node int, typ string, data []byte) {
	b.events = append(b.events, sagalog.Event{NodeID: node, Type: typ, Data: data})
}

// execution drives one saga. Only the driver goroutine mutates nodes and
// the fields below mu; action tasks read outputs under mu.
type execution struct {
	sec      *SEC
	id       uuid.UUID
	dag      *DAG
	byName   map[string]int
	children [][]int
	anc      [][]uint64 // ancestor bitsets
	actions  []*Action  // per node, nil for internal nodes
	// final marks the action nodes with no action after them: the saga's
	// commit points, retried without a budget (retryTask).
	final  []bool
	owner  sagalog.Owner
	hooks  *Hooks
	logger *slog.Logger

	parentCtx context.Context // carries the saga's trace parent
	links     []trace.Link
	// spanCtx carries the saga's own span once drive has started it;
	// shortcut nodes completed before that (at creation or recovery) wait
	// in shortcutSpans to become its children too.
	spanCtx       context.Context
	shortcutSpans []shortcutSpan

	mu    sync.RWMutex
	nodes []nodeState
	// live holds the tasks waiting to retry after a retryable error, by
	// node; tasks write it, Get reads it.
	live map[int]liveRetry

	unwinding  bool
	stuck      bool
	failedNode int
	undoNode   int

	completions chan completion
	inFlight    int

	// opErr is set once an operator asked for the saga to be unwound
	// (SEC.Unwind; durable in the saga row, so a recovered execution has it
	// from the start): the error of the actions that unwind cancels, and of
	// the outcome when no node failed. opComment is the operator's comment.
	opErr     *ActionError
	opComment string
	// unwindCh carries an operator's unwind (their comment) to the driver,
	// which owns the node state (one pending request is enough: it is
	// durable already).
	unwindCh chan string
	// cancelActions cancels the context of the saga's action tasks only:
	// an operator's unwind stops the actions in flight, while its undos and
	// its driver go on (set by drive). graceTimer calls it once the unwind
	// grace has passed.
	cancelActions context.CancelCauseFunc
	graceTimer    *time.Timer

	// ctx is the execution's own context (cancelled by Abandon or
	// Shutdown); set by the SEC before drive starts.
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	outcome Outcome
	err     error
}

func newExecution(sec *SEC, id uuid.UUID, d *DAG, owner sagalog.Owner, hooks *Hooks) (*execution, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	ex := &execution{
		sec: sec, id: id, dag: d, owner: owner, hooks: hooks,
		byName:      make(map[string]int, len(d.Nodes)),
		children:    make([][]int, len(d.Nodes)),
		anc:         make([][]uint64, len(d.Nodes)),
		actions:     make([]*Action, len(d.Nodes)),
		nodes:       make([]nodeState, len(d.Nodes)),
		live:        map[int]liveRetry{},
		completions: make(chan completion, len(d.Nodes)),
		unwindCh:    make(chan string, 1),
		failedNode:  -1,
		undoNode:    -1,
		done:        make(chan struct{}),
		logger:      sec.logger.With("saga_id", id.String(), "saga", d.Template),
		parentCtx:   context.Background(),
	}
	words := (len(d.Nodes) + 63) / 64
	for id, n := range d.Nodes {
		ex.byName[n.Name] = id
		ex.anc[id] = make([]uint64, words)
		for _, p := range n.Parents {
			ex.children[p] = append(ex.children[p], id)
			ex.anc[id][p/64] |= 1 << (p % 64)
			for w := range words {
				ex.anc[id][w] |= ex.anc[p][w]
			}
		}
		if n.Kind == KindAction {
			a, err := sec.registry.action(n.Action)
			if err != nil {
				return nil, fmt.Errorf("node %q: %w", n.Name, err)
			}
			ex.actions[id] = a
		}
	}
	ex.final = d.finalActions()
	return ex, nil
}

// shortcut completes an action node on the driver when its ShortcutFunc
// says there is nothing to do outside the saga. Any test hook, injected
// failure or crash point aimed at the node makes it run as an ordinary
// task instead, so every test of the node still reaches its action.
func (ex *execution) shortcut(id int, a *Action) (out json.RawMessage, ok bool) {
	if a.shortcut == nil {
		return nil, false
	}
	name := ex.dag.Nodes[id].Name
	if ex.hooks != nil || ex.sec.fail.fails(ex.dag.Template, name) || ex.sec.crash.targets(ex.dag.Template, name) {
		return nil, false
	}
	defer func() {
		if r := recover(); r != nil {
			out, ok = nil, false
		}
	}()
	v, done, err := a.shortcut(&ActionContext{sagaID: ex.id, node: id, ex: ex, logger: ex.logger})
	if err != nil || !done {
		return nil, false
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, false
	}
	ex.sec.metrics.nodeDone(ex.parentCtx, ex.dag.Template, name, "shortcut", 0, false)
	ex.shortcutSpans = append(ex.shortcutSpans, shortcutSpan{node: id, at: time.Now()})
	if ex.spanCtx != nil {
		ex.traceShortcuts()
	}
	return raw, true
}

// traceShortcuts gives each shortcut node its (instant) span under the
// saga's, like every other action node: Jaeger shows the whole DAG, with
// saga.task telling that the engine completed the node itself.
func (ex *execution) traceShortcuts() {
	for _, s := range ex.shortcutSpans {
		name := ex.dag.Nodes[s.node].Name
		_, span := ex.sec.tracer.Start(ex.spanCtx, name, trace.WithTimestamp(s.at), trace.WithAttributes(
			attribute.String("saga.id", ex.id.String()),
			attribute.String("saga.node", name),
			attribute.String("saga.task", "shortcut")))
		span.End(trace.WithTimestamp(s.at))
	}
	ex.shortcutSpans = ex.shortcutSpans[:0]
}

func (ex *execution) isAncestor(a, b int) bool { return ex.anc[b][a/64]&(1<<(a%64)) != 0 }

func (ex *execution) output(id int) (json.RawMessage, bool) {
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	n := ex.nodes[id]
	if n.output == nil {
		return nil, false
	}
	return n.output, true
}

func (ex *execution) setOutput(id int, out json.RawMessage) {
	ex.mu.Lock()
	ex.nodes[id].output = out
	ex.mu.Unlock()
}

// internalOutput computes the output of a node the engine runs itself.
func (ex *execution) internalOutput(id int) json.RawMessage {
	n := ex.dag.Nodes[id]
	switch n.Kind {
	case KindStart:
		return ex.dag.Params
	case KindConstant:
		return n.Constant
	default: // subsaga start/end, end: pass a node's output through
		out, _ := ex.output(n.From)
		return out
	}
}

func (ex *execution) parentsSucceeded(id int) bool {
	for _, p := range ex.dag.Nodes[id].Parents {
		if ex.nodes[p].status != succeeded {
			return false
		}
	}
	return true
}

// outcomeUnknown: node id failed, but its action may have taken effect
// (its last run ended in a retryable error: a lost answer, a call that
// timed out after it landed), and it has an undo to run for it. A parent
// already undoing (a log written before the engine undid such nodes) means
// the unwind went past it: it is left as it was.
func (ex *execution) outcomeUnknown(id int) bool {
	n := &ex.nodes[id]
	if n.status != failed || n.actionErr == nil || !n.actionErr.Retryable {
		return false
	}
	if a := ex.actions[id]; a == nil || a.undo == nil {
		return false
	}
	for _, p := range ex.dag.Nodes[id].Parents {
		if ex.nodes[p].status != succeeded {
			return false
		}
	}
	return true
}

func (ex *execution) childrenUndone(id int) bool {
	for _, c := range ex.children[id] {
		if !ex.nodes[c].undone {
			return false
		}
	}
	return true
}

// everyActionSucceeded: every node with an action has succeeded (and none
// is undoing).
func (ex *execution) everyActionSucceeded() bool {
	for id, a := range ex.actions {
		if a != nil && ex.nodes[id].status != succeeded {
			return false
		}
	}
	return true
}

// advance moves the saga as far as it can without waiting, adding the
// events to write and the tasks to start (after the write) to b. Because
// nodes are in topological order, one pass (forward, or reverse when
// unwinding) cascades through every node the engine runs itself, so the
// events of a whole chain of internal nodes and the `started` of the next
// actions share one commit with the completion that enabled them.
func (ex *execution) advance(b *batch) {
	if ex.stuck {
		if ex.inFlight == 0 && !b.finished {
			b.state = sagalog.StateDone
			b.finished = true
		}
		return
	}
	// Recovered tasks: started but unfinished actions and undos are run
	// again, in either direction (their `started` is already durable).
	for id := range ex.nodes {
		n := &ex.nodes[id]
		if n.running {
			continue
		}
		switch n.status {
		case started:
			n.running = true
			b.launches = append(b.launches, launch{node: id})
		case undoStarted:
			n.running = true
			b.launches = append(b.launches, launch{node: id, undo: true, unknown: n.actionErr != nil})
		}
	}
	if ex.unwinding && ex.failedNode < 0 && ex.opErr != nil && ex.everyActionSucceeded() {
		// An operator's unwind that only came to pass once every action
		// had succeeded (the last ones finished within the grace) is too
		// late: the saga's last actions publish its result, and nothing is
		// ever unwound past them, so no undo of theirs was ever run or
		// tested. The saga finishes instead, and its outcome says so.
		ex.unwinding = false
		b.state = sagalog.StateRunning
		ex.logger.Warn("an operator's unwind came after every action succeeded: the saga finishes", "comment", ex.opComment)
	}
	if !ex.unwinding {
		for id := range ex.nodes {
			n := &ex.nodes[id]
			if n.status != neverStarted || !ex.parentsSucceeded(id) {
				continue
			}
			if a := ex.actions[id]; a != nil {
				if out, ok := ex.shortcut(id, a); ok {
					ex.setOutput(id, out)
					n.status = succeeded
					b.add(id, evStarted, nil)
					b.add(id, evSucceeded, out)
					continue
				}
				n.status = started
				n.running = true
				b.add(id, evStarted, nil)
				b.launches = append(b.launches, launch{node: id})
				continue
			}
			out := ex.internalOutput(id)
			ex.setOutput(id, out)
			n.status = succeeded
			b.add(id, evStarted, nil)
			b.add(id, evSucceeded, out)
			if ex.dag.Nodes[id].Kind == KindEnd {
				b.state = sagalog.StateDone
				b.finished = true
				ex.outcome = Outcome{SagaID: ex.id, Kind: Succeeded, Output: out, UnwindComment: ex.opComment}
			}
		}
		return
	}
	for id := len(ex.nodes) - 1; id >= 0; id-- {
		n := &ex.nodes[id]
		if n.undone || n.running || !ex.childrenUndone(id) {
			continue
		}
		switch n.status {
		case failed:
			if ex.outcomeUnknown(id) {
				// It may have landed: undo it like a succeeded node.
				n.status = undoStarted
				n.running = true
				b.add(id, evUndoStarted, nil)
				b.launches = append(b.launches, launch{node: id, undo: true, unknown: true})
				continue
			}
			n.undone = true
		case neverStarted, undoFinished, undoSkipped:
			n.undone = true
		case succeeded:
			if a := ex.actions[id]; a != nil && a.undo != nil {
				n.status = undoStarted
				n.running = true
				b.add(id, evUndoStarted, nil)
				b.launches = append(b.launches, launch{node: id, undo: true})
				continue
			}
			// Nothing to undo: record it so the log stays consistent
			// for replay (parents may only be undone after children).
			n.status = undoFinished
			n.undone = true
			b.add(id, evUndoStarted, nil)
			b.add(id, evUndoFinished, nil)
		}
	}
	if ex.nodes[0].undone {
		b.state = sagalog.StateDone
		b.finished = true
		ex.outcome = ex.failedOutcome()
	}
}

// failedOutcome is the outcome of a saga that unwound to its start: the
// node that failed first, or — when an operator's unwind found every
// action in flight finishing anyway — the operator's error.
func (ex *execution) failedOutcome() Outcome {
	o := Outcome{SagaID: ex.id, Kind: Failed, UnwindComment: ex.opComment}
	if ex.failedNode >= 0 {
		o.FailedNode = ex.dag.Nodes[ex.failedNode].Name
		o.Err = ex.nodes[ex.failedNode].actionErr
	} else {
		o.Err = ex.opErr
	}
	return o
}

// apply records a task's completion in memory and in b.
func (ex *execution) apply(c completion, b *batch) {
	ex.inFlight--
	n := &ex.nodes[c.node]
	n.running = false
	switch {
	case !c.undo && c.err == nil:
		ex.setOutput(c.node, c.output)
		n.status = succeeded
		b.add(c.node, evSucceeded, c.output)
	case !c.undo:
		n.status = failed
		n.err, n.actionErr = c.err, c.err
		b.add(c.node, evFailed, mustJSON(c.err))
		if ex.failedNode < 0 {
			// The first failure, also when an operator's unwind (which
			// set unwinding already) is what failed it.
			ex.failedNode = c.node
		}
		if !ex.unwinding {
			ex.unwinding = true
			b.state = sagalog.StateUnwinding
			ex.logger.Info("saga unwinding", "node", ex.dag.Nodes[c.node].Name, "error", c.err.Message)
		}
	case c.err == nil:
		n.status = undoFinished
		n.undone = true
		// How many runs it took, when more than one: the log keeps one
		// undo_started and one undo_finished per node (replay needs no
		// more), so this is where an operator sees that it was retried.
		b.add(c.node, evUndoFinished, undoFinishedData(c.attempts))
	default:
		n.status = undoFailed
		n.err = c.err
		b.add(c.node, evUndoFailed, mustJSON(c.err))
		if !ex.stuck {
			ex.stuck = true
			ex.undoNode = c.node
		}
	}
}

func mustJSON(v any) []byte {
	raw, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called on our own plain structs
	}
	return raw
}

// finishStuck fills the stuck outcome.
func (ex *execution) stuckOutcome() Outcome {
	o := Outcome{SagaID: ex.id, Kind: Stuck, UnwindComment: ex.opComment}
	if ex.failedNode >= 0 {
		o.FailedNode = ex.dag.Nodes[ex.failedNode].Name
		o.Err = ex.nodes[ex.failedNode].actionErr
	}
	if ex.undoNode >= 0 {
		o.UndoNode = ex.dag.Nodes[ex.undoNode].Name
		o.UndoErr = ex.nodes[ex.undoNode].err
	}
	return o
}

// drive runs the saga to completion. first is the batch to write (unless
// already written, as at creation) before anything starts.
func (ex *execution) drive(ctx context.Context, first batch, written bool) {
	defer close(ex.done)
	defer ex.sec.forget(ex)
	ctx, span := ex.sec.tracer.Start(ex.parentCtx, "saga "+ex.dag.Template,
		trace.WithLinks(ex.links...),
		trace.WithAttributes(attribute.String("saga.id", ex.id.String()), attribute.String("saga.name", ex.dag.Template)))
	defer span.End()
	// Tasks see the saga's span, but their lifetime is the execution's
	// (cancelled at shutdown or abandonment), not the creating request's.
	ctx = trace.ContextWithSpan(ex.ctx, span)
	ex.spanCtx = ctx
	ex.traceShortcuts()
	// Actions run under a context of their own, which an operator's unwind
	// cancels without touching the undos or the driver.
	actCtx, cancelActions := context.WithCancelCause(ctx)
	defer cancelActions(nil)
	ex.cancelActions = cancelActions
	defer func() {
		if ex.graceTimer != nil {
			ex.graceTimer.Stop()
		}
	}()
	if ex.opErr != nil {
		// Recovered after an operator asked for the unwind: the actions
		// that were in flight run again (they are idempotent, and one that
		// landed must be undone), under the same grace.
		ex.cancelActionsAfterGrace()
	}

	b := first
	for {
		if !written && (len(b.events) > 0 || b.state != "") {
			if err := ex.write(ctx, b.events, b.state); err != nil {
				ex.err = err
				span.SetStatus(codes.Error, err.Error())
				ex.logger.Warn("saga stopped", "error", err)
				ex.stopTasks()
				return
			}
		}
		if !written {
			ex.reportStuckNodes(ctx, b.events)
		}
		written = false
		for _, l := range b.launches {
			ex.inFlight++
			if l.undo {
				go ex.run(ctx, l)
			} else {
				go ex.run(actCtx, l)
			}
		}
		if b.finished {
			if ex.stuck {
				ex.outcome = ex.stuckOutcome()
				ex.logger.Error("saga stuck", "failed_node", ex.outcome.FailedNode, "undo_node", ex.outcome.UndoNode, "undo_error", ex.outcome.UndoErr)
				span.SetStatus(codes.Error, "stuck")
			} else if ex.outcome.Kind == Failed {
				span.SetStatus(codes.Error, "failed at "+ex.outcome.FailedNode)
			}
			ex.logger.Info("saga done", "outcome", ex.outcome.Kind.String())
			ex.sec.metrics.sagaFinished(ctx, ex.dag.Template, ex.outcome.Kind)
			return
		}
		if ex.inFlight == 0 {
			// Nothing can happen any more: the log was consistent but
			// no rule applies. Never expected; leave it for an operator.
			ex.err = errors.New("saga stalled: no runnable node")
			ex.logger.Error("saga stalled")
			return
		}
		b = batch{}
		select {
		case c := <-ex.completions:
			ex.apply(c, &b)
		case comment := <-ex.unwindCh:
			ex.operatorUnwind(comment, &b)
		case <-ctx.Done():
			ex.err = ErrShutdown
			if ex.sec.ctx.Err() == nil {
				ex.err = ErrAbandoned
			}
			ex.stopTasks()
			return
		}
		// Take every completion already waiting: one write for all.
	drain:
		for {
			select {
			case c := <-ex.completions:
				ex.apply(c, &b)
			default:
				break drain
			}
		}
		ex.advance(&b)
	}
}

// reportStuckNodes logs and counts each undo_failed event of a batch the
// log has just accepted: only then is the saga stuck for good (an undo
// failure whose write was refused, at shutdown or after losing the saga,
// runs again wherever the saga resumes).
func (ex *execution) reportStuckNodes(ctx context.Context, events []sagalog.Event) {
	for _, e := range events {
		if e.Type != evUndoFailed {
			continue
		}
		name := ex.dag.Nodes[e.NodeID].Name
		ae := ex.nodes[e.NodeID].err
		reason, msg, attempts := "", "", 0
		if ae != nil {
			reason, msg, attempts = ae.Reason, ae.Message, ae.Attempts
		}
		ex.logger.Error("saga undo failed with a permanent error; the saga is stuck until an operator deals with what the undo left and abandons it, which unwinds the rest",
			"node", name, "error", msg, "reason", reason, "attempts", attempts)
		ex.sec.metrics.stuckNode(ctx, ex.dag.Template, name, reason)
	}
}

// stopTasks cancels the in-flight tasks and waits for them to return, so
// nothing of this saga runs here once its driver has exited (Shutdown
// waits for drivers). Their results are dropped: whoever drives the saga
// next runs them again.
func (ex *execution) stopTasks() {
	ex.cancel()
	for ; ex.inFlight > 0; ex.inFlight-- {
		<-ex.completions
	}
}

// appendLog queues one write for the log writers and waits for its result.
func (s *SEC) appendLog(ctx context.Context, id uuid.UUID, gen int64, events []sagalog.Event, state string) (bool, error) {
	r := &appendReq{id: id, gen: gen, events: events, newState: state, done: make(chan appendRes, 1)}
	select {
	case s.appendCh <- r:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	select {
	case res := <-r.done:
		return res.owned, res.err
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// write appends events (and a state change), retrying transient failures
// forever with backoff; it gives up only when ctx ends or ownership is lost.
func (ex *execution) write(ctx context.Context, events []sagalog.Event, state string) error {
	delay := 5 * time.Millisecond
	for {
		if ctx.Err() != nil {
			return ErrShutdown
		}
		owned, err := ex.sec.appendLog(ctx, ex.id, ex.owner.Generation, events, state)
		if err == nil {
			if !owned {
				return ErrNotOwner
			}
			return nil
		}
		if ctx.Err() != nil {
			return ErrShutdown
		}
		// Never surfaced as a saga failure: a database outage
		// stalls the saga, it does not fail it. A permanent error is a bug
		// and is logged loudly, but retrying is still the only safe move.
		level := slog.LevelWarn
		if !Classify(ctx, err).Retryable {
			level = slog.LevelError
		}
		ex.logger.Log(ctx, level, "saga log write failed; retrying", "error", err, "retry_in", delay)
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ErrShutdown
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// run executes one action or undo task and reports its completion.
func (ex *execution) run(ctx context.Context, l launch) {
	node := ex.dag.Nodes[l.node]
	c := completion{node: l.node, undo: l.undo}
	defer func() { ex.completions <- c }()
	kind := "action"
	if l.undo {
		kind = "undo"
	}
	ctx, span := ex.sec.tracer.Start(ctx, node.Name, trace.WithAttributes(
		attribute.String("saga.id", ex.id.String()),
		attribute.String("saga.node", node.Name),
		attribute.String("saga.task", kind)))
	defer span.End()
	began := time.Now()
	defer func() {
		ex.sec.metrics.nodeDone(ctx, ex.dag.Template, node.Name, kind, time.Since(began), c.err != nil)
	}()
	ac := &ActionContext{sagaID: ex.id, node: l.node, ex: ex, logger: ex.logger.With("node", node.Name), unknown: l.unknown}
	errAction, errUndo, rep := ex.hooks.get(node.Name)
	a := ex.actions[l.node]
	switch {
	case a == nil && !l.undo:
		// Only a corrupt or hand-written log leaves an internal node
		// started but not finished: compute it again.
		c.output = ex.internalOutput(l.node)
	case l.undo && (a == nil || a.undo == nil):
		// Nothing to undo.
	case !l.undo:
		ex.sec.crash.maybeCrash(ex.dag.Template, node.Name, CrashAfterStarted)
		ex.hooks.before(ctx, ex.id, node.Name)
		// Read again: a BeforeNode hook may inject an error at its own node
		// (a user operation, then a failure that unwinds through it).
		errAction, _, rep = ex.hooks.get(node.Name)
		if ae := unwoundBy(ctx); ae != nil {
			// An operator's unwind came first: the action never runs.
			c.err = ae
		} else if errAction || ex.sec.fail.fails(ex.dag.Template, node.Name) {
			// Permanent on purpose: every test that injects a failure
			// means the node to fail, at once.
			c.err = &ActionError{Kind: ErrKindInjected, Message: "injected error at " + node.Name, Reason: ErrKindInjected, Attempts: 1}
		} else if ex.hooks.lostAnswer(node.Name) && !ex.final[l.node] {
			const runs = 2
			for i := 0; i < runs && c.err == nil; i++ {
				if _, err := callAction(ctx, a, ac); err != nil {
					c.err = taskError(ctx, ErrKindAction, err, i+1)
				}
			}
			if c.err == nil {
				c.err = taskError(ctx, ErrKindAction, injectedLostAnswer(node.Name), runs)
			}
		} else {
			// A commit point's lost answers are retried until one comes
			// back (retryTask): they land, and the next run runs for real.
			lost := 0
			if ex.hooks.lostAnswer(node.Name) {
				lost = 2
			}
			for i := 0; i < max(rep.Action, 1); i++ {
				attempts, err := ex.retryTask(ctx, span, l.node, false, func() error {
					if left, ok := ex.hooks.transient(node.Name, false); ok {
						return injectedTransient(node.Name, left)
					}
					var err error
					c.output, err = callAction(ctx, a, ac)
					if err == nil && lost > 0 {
						lost--
						c.output = nil
						return injectedLostAnswer(node.Name)
					}
					return err
				})
				c.attempts = attempts
				if err != nil {
					c.output, c.err = nil, taskError(ctx, ErrKindAction, err, attempts)
					if ae := unwoundBy(ctx); ae != nil {
						// Stopped by an operator's unwind (whatever error
						// the cancelled call made of it): say so, and never
						// retry it (Classify: the context is done).
						c.err = ae
						c.err.Attempts = attempts
					}
					break
				}
			}
		}
		ex.sec.crash.maybeCrash(ex.dag.Template, node.Name, CrashAfterAction)
	default:
		if errUndo {
			c.err = &ActionError{Kind: ErrKindInjected, Message: "injected undo error at " + node.Name, Reason: ErrKindInjected, Attempts: 1}
		} else {
			for i := 0; i < max(rep.Undo, 1); i++ {
				attempts, err := ex.retryTask(ctx, span, l.node, true, func() error {
					if left, ok := ex.hooks.transient(node.Name, true); ok {
						return injectedTransient(node.Name, left)
					}
					return callUndo(ctx, a, ac)
				})
				c.attempts = attempts
				if err != nil {
					c.err = taskError(ctx, ErrKindUndo, err, attempts)
					break
				}
			}
		}
		ex.sec.crash.maybeCrash(ex.dag.Template, node.Name, CrashAfterUndo)
	}
	if c.err != nil {
		span.SetStatus(codes.Error, c.err.Error())
	}
}

// callAction runs an action once. A panic is a permanent error (a bug,
// which running the same code again does not fix), as is an output that
// does not encode.
func callAction(ctx context.Context, a *Action, ac *ActionContext) (out json.RawMessage, err error) {
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, &panicError{value: r}
		}
	}()
	v, err := a.do(ctx, ac)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, &ActionError{Kind: ErrKindSerialize, Message: err.Error()}
	}
	return raw, nil
}

func callUndo(ctx context.Context, a *Action, ac *ActionContext) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &panicError{value: r}
		}
	}()
	return a.undo(ctx, ac)
}
