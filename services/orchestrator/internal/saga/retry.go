package saga

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cenkalti/backoff/v5"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// RetryPolicy bounds how an action is retried in place after a retryable
// error (Classify) before its node fails and the saga unwinds.
type RetryPolicy struct {
	// MaxAttempts bounds the runs of the action in all; 1 never retries.
	MaxAttempts int
	// MaxElapsed: no new run starts once this long has passed since the
	// first run began. A call that waited out its whole deadline (30 s by
	// default) has used it up on its own.
	MaxElapsed time.Duration
	// Initial is the wait before the first retry; each next wait doubles
	// (±20% jitter), up to Max.
	Initial, Max time.Duration
}

// DefaultActionRetry is the action retry policy of a SEC made without
// WithActionRetry: four runs within ten seconds, waiting about 0.25, 0.5
// and 1 s between them. Each run is itself up to five calls by the gRPC
// client (which retries UNAVAILABLE for about a second), so a node rides
// out a peer or database restart of a few seconds; anything longer fails
// the node and unwinds the saga, releasing its locks, and the task that
// started it retries on a later pass rather than holding everything while
// a peer is down.
func DefaultActionRetry() RetryPolicy {
	return RetryPolicy{MaxAttempts: 4, MaxElapsed: 10 * time.Second, Initial: 250 * time.Millisecond, Max: 2 * time.Second}
}

// WithActionRetry sets the SEC's action retry policy; zero fields keep
// DefaultActionRetry's values.
func WithActionRetry(p RetryPolicy) SECOption {
	return func(o *secOptions) {
		d := DefaultActionRetry()
		if p.MaxAttempts <= 0 {
			p.MaxAttempts = d.MaxAttempts
		}
		if p.MaxElapsed <= 0 {
			p.MaxElapsed = d.MaxElapsed
		}
		if p.Initial <= 0 {
			p.Initial = d.Initial
		}
		if p.Max <= 0 {
			p.Max = max(d.Max, p.Initial)
		}
		o.actionRetry = p
	}
}

// Undos are retried until they succeed or the saga's context ends, never
// given up on: an unwind that stopped half way would leave the saga stuck,
// holding whatever it had not undone yet, for an operator to repair by
// hand. The waits start short (a blip clears at once) and grow to
// undoRetryMax, so a long outage costs one call per half minute.
const (
	undoRetryInitial = 100 * time.Millisecond
	undoRetryMax     = 30 * time.Second
)

// liveRetry is a task of a saga this SEC drives waiting to run again after
// a retryable error. It lives in memory only (the log records a task's
// start and end, not each try), so Get shows it beside the log.
type liveRetry struct {
	attempts int // runs so far
	err      string
	next     time.Time // when the next run starts
}

// undoRecord is the data of an undo_finished event written after the undo
// needed more than one run (nil otherwise, as it always was).
type undoRecord struct {
	Attempts int `json:"attempts"`
}

func exponential(initial, maxInterval time.Duration) *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initial
	b.MaxInterval = maxInterval
	b.Multiplier = 2
	b.RandomizationFactor = 0.2
	return b
}

// retryTask runs attempt (one run of node's action or undo) until it
// succeeds, fails with an error Classify calls permanent, or — for an
// action only — the SEC's action retry policy runs out; and until ctx (the
// saga's) ends in any case. It returns how many runs it made and the last
// error.
func (ex *execution) retryTask(ctx context.Context, span trace.Span, node int, undo bool, attempt func() error) (int, error) {
	var opts []backoff.RetryOption
	p := ex.sec.actionRetry
	switch {
	case undo:
		opts = []backoff.RetryOption{
			backoff.WithBackOff(exponential(undoRetryInitial, undoRetryMax)),
			backoff.WithMaxElapsedTime(0), // no bound: see undoRetryMax
		}
	case ex.final[node]:
		// A commit point is retried without a bound, like an undo (once it
		// may have landed, unwinding past it would undo what it
		// published), but at the action's pace: it holds the saga's locks
		// meanwhile, and must go on within seconds once its peer is back.
		opts = []backoff.RetryOption{
			backoff.WithBackOff(exponential(p.Initial, p.Max)),
			backoff.WithMaxElapsedTime(0),
		}
	default:
		opts = []backoff.RetryOption{
			backoff.WithBackOff(exponential(p.Initial, p.Max)),
			backoff.WithMaxTries(uint(max(p.MaxAttempts, 1))),
			backoff.WithMaxElapsedTime(p.MaxElapsed),
		}
	}
	attempts := 0
	opts = append(opts, backoff.WithNotify(func(err error, next time.Duration) {
		ex.retrying(ctx, span, node, undo, attempts, err, next)
	}))
	defer ex.retryDone(node)
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempts++
		err := attempt()
		if err != nil && !Classify(ctx, err).Retryable {
			return struct{}{}, backoff.Permanent(err)
		}
		return struct{}{}, err
	}, opts...)
	// Retry unwraps a permanent error, except on the last allowed run.
	if p, ok := err.(*backoff.PermanentError); ok {
		err = p.Err
	}
	return attempts, err
}

// retrying reports a failed run about to be retried: a warning, a metric,
// a span event, and the live state Get shows.
func (ex *execution) retrying(ctx context.Context, span trace.Span, node int, undo bool, attempts int, err error, next time.Duration) {
	name := ex.dag.Nodes[node].Name
	task := "action"
	if undo {
		task = "undo"
	}
	reason := Classify(ctx, err).Reason
	ex.logger.Warn("saga "+task+" failed with a retryable error; retrying",
		"node", name, "attempt", attempts, "error", err, "reason", reason, "retry_in", next)
	ex.sec.metrics.retried(ctx, ex.dag.Template, name, undo)
	span.AddEvent("retry", trace.WithAttributes(
		attribute.Int("saga.attempt", attempts),
		attribute.String("saga.error", err.Error()),
		attribute.String("saga.error_reason", reason),
		attribute.Int64("saga.retry_in_ms", next.Milliseconds())))
	ex.mu.Lock()
	ex.live[node] = liveRetry{attempts: attempts, err: err.Error(), next: time.Now().Add(next)}
	ex.mu.Unlock()
}

func (ex *execution) retryDone(node int) {
	ex.mu.Lock()
	delete(ex.live, node)
	ex.mu.Unlock()
}

// liveRetries copies the tasks now waiting to retry, by node.
func (ex *execution) liveRetries() map[int]liveRetry {
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	out := make(map[int]liveRetry, len(ex.live))
	for k, v := range ex.live {
		out[k] = v
	}
	return out
}

// taskError is the persisted form of a task's last error, with its class
// and how many runs it took.
func taskError(ctx context.Context, kind string, err error, attempts int) *ActionError {
	ae := newActionError(kind, err)
	cl := Classify(ctx, err)
	ae.Reason, ae.Retryable, ae.Attempts = cl.Reason, cl.Retryable, attempts
	return ae
}

// injectedTransient is the error of Hooks.InjectActionTransient and
// InjectUndoTransient: UNAVAILABLE, as a peer that is down for longer than
// the gRPC client's own retries returns it, so it takes the same path
// through Classify as the real thing.
func injectedTransient(node string, left int) error {
	return status.Error(codes.Unavailable, fmt.Sprintf("injected transient fault at %s (%d more)", node, left))
}

// injectedLostAnswer is the error of Hooks.InjectLostAnswer after the
// action ran: UNAVAILABLE, what a caller whose answer was lost sees.
func injectedLostAnswer(node string) error {
	return status.Error(codes.Unavailable, "injected lost answer at "+node)
}

// undoFinishedData is the data of an undo_finished event.
func undoFinishedData(attempts int) []byte {
	if attempts <= 1 {
		return nil
	}
	raw, _ := json.Marshal(undoRecord{Attempts: attempts})
	return raw
}
