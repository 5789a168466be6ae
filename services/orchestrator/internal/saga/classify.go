package saga

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorClass is Classify's verdict on an error.
type ErrorClass struct {
	// Retryable: the same call may well succeed if made again in a moment,
	// so the engine retries it in place (see the package comment for how
	// long).
	Retryable bool
	// Reason names the rule that decided, in a few stable words
	// ("grpc:Unavailable", "pg:40001", "connection", "injected", …): it
	// labels metrics and is persisted with a failed node's error, so an
	// operator sees why a stuck saga's undo was not retried.
	Reason string
}

// Classify decides whether err, returned by an action or an undo of a saga
// whose context is ctx, is worth retrying. It is the one place that
// decides, for actions, undos and the saga log's own writes alike; the
// table is in the package comment. An error the saga's context caused (the
// SEC shutting down, the saga abandoned, or — for an action, whose context
// is its own — an operator's unwind) is never retryable: whoever drives the
// saga next runs the task again, or, after an operator's unwind, nobody.
func Classify(ctx context.Context, err error) ErrorClass {
	if err == nil {
		return ErrorClass{Reason: "ok"}
	}
	if ctx != nil && ctx.Err() != nil {
		return ErrorClass{Reason: "saga_context_done"}
	}
	// Marked by the action itself: it knows better than any table.
	var perm *permanentError
	if errors.As(err, &perm) {
		return ErrorClass{Reason: "marked_permanent"}
	}
	var pe *panicError
	if errors.As(err, &pe) {
		return ErrorClass{Reason: "panic"}
	}
	// Errors the engine made itself (a test hook, an output that does not
	// encode, parameters or a lookup that do not decode) come out the same
	// on every run.
	var ae *ActionError
	if errors.As(err, &ae) {
		switch ae.Kind {
		case ErrKindInjected, ErrKindSerialize, ErrKindDeserialize, ErrKindAbandoned:
			return ErrorClass{Reason: ae.Kind}
		}
		if ae.Code != codes.OK {
			return classifyCode(ae.Code)
		}
	}
	// A context error while the saga's own context is alive is a deadline
	// or cancellation of one call (the client's per-call deadline, or a
	// peer that cancelled): the next call gets a fresh one.
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return ErrorClass{Retryable: true, Reason: "deadline_exceeded"}
	case errors.Is(err, context.Canceled):
		return ErrorClass{Retryable: true, Reason: "canceled"}
	}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		return classifyCode(s.Code())
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return classifySQLState(pgErr.Code)
	}
	var connectErr *pgconn.ConnectError
	var errno syscall.Errno
	switch {
	case pgconn.SafeToRetry(err), errors.As(err, &connectErr), errors.Is(err, pgconn.ErrConnClosed),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return ErrorClass{Retryable: true, Reason: "connection"}
	case errors.As(err, &errno) && connectionErrno(errno):
		return ErrorClass{Retryable: true, Reason: "connection"}
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return ErrorClass{Retryable: true, Reason: "network"}
	}
	return ErrorClass{Reason: "error"}
}

// classifyCode is the gRPC half of the table.
func classifyCode(c codes.Code) ErrorClass {
	reason := "grpc:" + c.String()
	switch c {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Aborted, codes.Canceled:
		return ErrorClass{Retryable: true, Reason: reason}
	}
	// ResourceExhausted included: in storagecp it is the allocator saying
	// there is not enough storage (or no free port) for new regions, which
	// comes back only when an operator adds disks or users free space.
	return ErrorClass{Reason: reason}
}

// classifySQLState is the PostgreSQL half of the table.
func classifySQLState(code string) ErrorClass {
	reason := "pg:" + code
	switch code {
	case "40001", // serialization_failure
		"40P01", // deadlock_detected
		"40003", // statement_completion_unknown: our statements are idempotent
		"57P01", // admin_shutdown
		"57P02", // crash_shutdown
		"57P03", // cannot_connect_now (starting up, or in recovery)
		"57P05", // idle_session_timeout
		"25P03": // idle_in_transaction_session_timeout: our session, stopped, was ended
		return ErrorClass{Retryable: true, Reason: reason}
	case "57014": // query_canceled: a statement timeout, like a call's deadline
		return ErrorClass{Retryable: true, Reason: reason}
	}
	if len(code) == 5 {
		switch code[:2] {
		case "08", // connection exception
			"53", // insufficient resources (connections, memory, disk)
			"58": // system error (I/O) in the server
			return ErrorClass{Retryable: true, Reason: reason}
		}
	}
	return ErrorClass{Reason: reason}
}

// connectionErrno reports the socket errors of a connection that broke or
// could not be made: the peer restarting, or a proxy dropping it.
func connectionErrno(e syscall.Errno) bool {
	switch e {
	case syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED, syscall.EPIPE,
		syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH:
		return true
	}
	return false
}

// permanentError is an error an action or undo marked permanent.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent whatever Classify would say of it, so
// the node fails at once: for an error an action reports on purpose with a
// code that is otherwise retryable. snapshot-create's lock node, for one,
// reports repair-lock contention as ABORTED "volume repair lock" so that
// the RPC waiting for the saga can answer with it; retrying in place would
// only hold the saga while the other repair runs, instead of unwinding and
// letting the caller retry later. The gRPC status (and so the persisted
// code) is err's. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// panicError is a panic recovered from an action or undo: a bug, which
// running the same code again does not fix.
type panicError struct{ value any }

func (e *panicError) Error() string { return fmt.Sprintf("panic: %v", e.value) }
