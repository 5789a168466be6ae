package saga

import (
	"context"
	"os"
	"strings"
	"sync"

	"github.com/google/uuid"
)

// Repeat asks for a node's action to run Action times (the last result is
// kept) and its undo Undo times. Zero means once.
type Repeat struct {
	Action int
	Undo   int
}

// Hooks are test hooks for one saga (docs/testing.md, "Failure hooks"). They
// live in memory only: a recovered saga runs without them. The zero value
// does nothing. Node names are full (scoped) names.
type Hooks struct {
	mu          sync.Mutex
	errorAt     map[string]bool
	undoErrorAt map[string]bool
	repeat      map[string]Repeat
	// transient faults still to inject, by node
	actionTransient map[string]int
	undoTransient   map[string]int
	lostAnswerAt    map[string]bool

	// BeforeNode, if set, runs right before each action node's action (and
	// before any injected error), with the node name. Use it to race user
	// operations against every node. It may inject errors, its own node's
	// included: they are read after it returns.
	BeforeNode func(ctx context.Context, node string)
}

// InjectError makes node's action fail (without running it), with a
// permanent error: the node fails at once, never retried.
func (h *Hooks) InjectError(node string) *Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.errorAt == nil {
		h.errorAt = map[string]bool{}
	}
	h.errorAt[node] = true
	return h
}

// InjectUndoError makes node's undo fail (without running it) with a
// permanent error: the saga becomes stuck if it unwinds through node.
func (h *Hooks) InjectUndoError(node string) *Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.undoErrorAt == nil {
		h.undoErrorAt = map[string]bool{}
	}
	h.undoErrorAt[node] = true
	return h
}

// InjectActionTransient makes node's action fail n times with a retryable
// error (UNAVAILABLE, as from a peer down for longer than the gRPC client's
// own retries) before it runs for real: the engine retries it in place
// within its action retry budget (WithActionRetry), so the node succeeds,
// or fails with that error when n is beyond the budget.
func (h *Hooks) InjectActionTransient(node string, n int) *Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.actionTransient == nil {
		h.actionTransient = map[string]int{}
	}
	h.actionTransient[node] = n
	return h
}

// InjectLostAnswer makes node's action land and its answer be lost: the
// action runs for real, twice (a run and the engine's retry of it), and
// each time reports UNAVAILABLE, as when a partition swallows the answer of
// a call the service applied; then the node fails as if its action retry
// budget had run out (at once: no backoff is waited), with its outcome
// unknown. The unwind must undo what the action did.
func (h *Hooks) InjectLostAnswer(node string) *Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.lostAnswerAt == nil {
		h.lostAnswerAt = map[string]bool{}
	}
	h.lostAnswerAt[node] = true
	return h
}

func (h *Hooks) lostAnswer(node string) bool {
	if h == nil {
		return false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lostAnswerAt[node]
}

// InjectUndoTransient makes node's undo fail n times with a retryable error
// (as InjectActionTransient) before it runs for real: the fault outlasts
// the client's retries and then clears, and the engine's retries of the
// undo must carry the unwind through it.
func (h *Hooks) InjectUndoTransient(node string, n int) *Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.undoTransient == nil {
		h.undoTransient = map[string]int{}
	}
	h.undoTransient[node] = n
	return h
}

// transient takes one injected transient fault of node's action (or undo),
// if any is left, returning how many remain after it.
func (h *Hooks) transient(node string, undo bool) (left int, ok bool) {
	if h == nil {
		return 0, false
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	m := h.actionTransient
	if undo {
		m = h.undoTransient
	}
	if m[node] <= 0 {
		return 0, false
	}
	m[node]--
	return m[node], true
}

// InjectRepeat runs node's action and undo several times.
func (h *Hooks) InjectRepeat(node string, r Repeat) *Hooks {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.repeat == nil {
		h.repeat = map[string]Repeat{}
	}
	h.repeat[node] = r
	return h
}

func (h *Hooks) get(node string) (errAction, errUndo bool, r Repeat) {
	if h == nil {
		return false, false, Repeat{}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.errorAt[node], h.undoErrorAt[node], h.repeat[node]
}

func (h *Hooks) before(ctx context.Context, id uuid.UUID, node string) {
	if h != nil && h.BeforeNode != nil {
		h.BeforeNode(context.WithValue(ctx, hookSagaKey{}, id), node)
	}
}

type hookSagaKey struct{}

// HookSagaID is the id of the saga whose BeforeNode hook runs with ctx
// (for a test that acts on that saga, as an operator would).
func HookSagaID(ctx context.Context) (uuid.UUID, bool) {
	id, ok := ctx.Value(hookSagaKey{}).(uuid.UUID)
	return id, ok
}

// CrashEnv names the environment variable of the process-level crash hook:
// "<template>/<node>/<point>" makes the process exit at once (status 137,
// like SIGKILL, nothing flushed) at that point of that node of any saga of
// that template. Points: after_started (the `started` event is committed,
// the action has not run), after_action (the action ran, `succeeded` is
// not written), after_undo (the undo ran, `undo_finished` is not written).
//
// This package never reads the environment: a process that honours the
// variable (the replacement-orchestrator, only with --dev) reads it and
// passes the value to its SEC with WithCrashAt.
const CrashEnv = "STORAGECP_CRASH_AT"

// Crash points.
const (
	CrashAfterStarted = "after_started"
	CrashAfterAction  = "after_action"
	CrashAfterUndo    = "after_undo"
)

// crashPoint is the parsed CrashEnv; the zero value never fires.
type crashPoint struct {
	template, node, point string
}

// WithCrashAt arms the process-level crash hook: spec is a CrashEnv value
// ("" or a malformed one arms nothing). For development and test processes
// only: the SEC exits the whole process when the point is reached.
func WithCrashAt(spec string) SECOption {
	return func(o *secOptions) { o.crash = parseCrashPoint(spec) }
}

// parseCrashPoint parses a CrashEnv value.
func parseCrashPoint(v string) crashPoint {
	parts := strings.Split(v, "/")
	if len(parts) != 3 {
		return crashPoint{}
	}
	return crashPoint{template: parts[0], node: parts[1], point: parts[2]}
}

// FailEnv names the environment variable of the process-level failure hook:
// "<template>/<node>" makes that node's action fail (without running it) in
// every saga of that template this process runs. With CrashEnv pointing at
// an after_undo point it reaches every undo of a saga in a real process; a
// restarted process without it finishes the unwind and retries. Like
// CrashEnv it is read by the process (only with --dev), never by this
// package, and passed with WithFailAt.
const FailEnv = "STORAGECP_FAIL_AT"

// failPoint is the parsed FailEnv; the zero value never fires.
type failPoint struct{ template, node string }

// WithFailAt arms the process-level failure hook: spec is a FailEnv value
// ("" or a malformed one arms nothing).
func WithFailAt(spec string) SECOption {
	return func(o *secOptions) { o.fail = parseFailPoint(spec) }
}

// parseFailPoint parses a FailEnv value.
func parseFailPoint(v string) failPoint {
	parts := strings.Split(v, "/")
	if len(parts) != 2 {
		return failPoint{}
	}
	return failPoint{template: parts[0], node: parts[1]}
}

func (f failPoint) fails(template, node string) bool {
	return f.node != "" && f.template == template && f.node == node
}

// targets reports whether the crash point is at one of the node's points.
func (c crashPoint) targets(template, node string) bool {
	return c.point != "" && c.template == template && c.node == node
}

func (c crashPoint) maybeCrash(template, node, point string) {
	if c.point != "" && c.template == template && c.node == node && c.point == point {
		os.Exit(137)
	}
}
