// Package apierr holds the one rule by which every service turns the errors
// of its handlers into the gRPC status its callers see.
//
// An error says what went wrong for the caller by its kind: a store
// declares each sentinel with New (or builds an error with Errorf) from one
// of the kinds below, and an error type with fields returns its kind from
// Unwrap. errors.Is(err, store.ErrNotFound) works as before, and so does
// errors.Is(err, apierr.NotFound).
//
// The rule, in the order Status applies it:
//
//   - a gRPC status error (a validation failure, the fence's stale epoch, a
//     downstream service's answer) passes through unchanged;
//   - an error of a kind gets the kind's code (the table in Kind) and its
//     own text as the message: store messages name ids and addresses, never
//     secrets. The Internal kind is the exception: it is a bug, so it is
//     treated as an unknown error;
//   - a serialization failure or deadlock that db.InTx stopped retrying is
//     contention, not a bug: Unavailable "database contention, retry";
//   - a context error is DeadlineExceeded or Canceled;
//   - a database that cannot be reached (down, restarting, failing over,
//     db.IsUnreachable) is Unavailable "database unreachable, retry": the
//     caller's retry reaches the new primary;
//   - anything else is Internal "internal error": the detail goes to the
//     log only, never to the caller.
package apierr

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/platform/db"
)

// Kind is what went wrong, as the caller needs to know it. A Kind is also
// an error, so that errors.Is(err, apierr.NotFound) asks for it and an
// error type can carry one by returning it from Unwrap.
type Kind uint8

// The kinds. Each has one gRPC code.
const (
	// Invalid: the request is wrong whatever the state (InvalidArgument).
	Invalid Kind = iota + 1
	// NotFound: the thing named does not exist (NotFound).
	NotFound
	// AlreadyExists: a create collided with what exists (AlreadyExists).
	AlreadyExists
	// Precondition: the state does not allow it now (FailedPrecondition).
	Precondition
	// Aborted: another operation holds what this one needs; retry later
	// (Aborted).
	Aborted
	// Exhausted: not enough of something, such as storage or ports
	// (ResourceExhausted).
	Exhausted
	// Unavailable: a dependency is out of reach for now (Unavailable).
	Unavailable
	// Internal: a broken invariant, a bug (Internal; the message is logged,
	// not returned).
	Internal
)

// kinds is the one table from kind to code.
var kinds = [...]struct {
	name string
	code codes.Code
}{
	Invalid:       {"invalid argument", codes.InvalidArgument},
	NotFound:      {"not found", codes.NotFound},
	AlreadyExists: {"already exists", codes.AlreadyExists},
	Precondition:  {"failed precondition", codes.FailedPrecondition},
	Aborted:       {"aborted", codes.Aborted},
	Exhausted:     {"resource exhausted", codes.ResourceExhausted},
	Unavailable:   {"unavailable", codes.Unavailable},
	Internal:      {"internal error", codes.Internal},
}

func (k Kind) valid() bool { return k >= Invalid && int(k) < len(kinds) }

// Code is the kind's gRPC code; codes.Internal for a value that is not one
// of the kinds.
func (k Kind) Code() codes.Code {
	if !k.valid() {
		return codes.Internal
	}
	return kinds[k].code
}

// Error is the kind's name.
func (k Kind) Error() string {
	if !k.valid() {
		return fmt.Sprintf("apierr.Kind(%d)", uint8(k))
	}
	return kinds[k].name
}

// kindError is an error of a kind with its own message.
type kindError struct {
	kind Kind
	msg  string
}

func (e *kindError) Error() string { return e.msg }
func (e *kindError) Unwrap() error { return e.kind }

// New returns an error of kind k whose text is msg: how a store declares a
// sentinel. Each call returns a distinct error.
func New(k Kind, msg string) error { return &kindError{kind: k, msg: msg} }

// Errorf returns an error of kind k with a formatted text (fmt.Sprintf:
// %w does not wrap).
func Errorf(k Kind, format string, args ...any) error {
	return &kindError{kind: k, msg: fmt.Sprintf(format, args...)}
}

// KindOf returns the kind err carries (the first in its tree), or 0.
func KindOf(err error) Kind {
	var k Kind
	if errors.As(err, &k) {
		return k
	}
	return 0
}

// Contention is the message of a transaction that kept failing on
// serialization failures or deadlocks.
const Contention = "database contention, retry"

// Unreachable is the message of the Unavailable status for a database that
// cannot be used for the moment (db.IsUnreachable).
const Unreachable = "database unreachable, retry"

// Status returns the gRPC status error for err by the rule of the package
// comment; nil for nil. An unknown error is logged on logger
// (slog.Default() if nil) as "internal error" with logArgs (for instance
// "method", name) and the error.
func Status(ctx context.Context, logger *slog.Logger, err error, logArgs ...any) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	if k := KindOf(err); k.valid() && k != Internal {
		return status.Error(k.Code(), err.Error())
	}
	switch {
	case db.IsRetryable(err):
		return status.Error(codes.Unavailable, Contention)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return status.FromContextError(err).Err()
	}
	if logger == nil {
		logger = slog.Default()
	}
	if db.IsUnreachable(err) {
		args := append(append(make([]any, 0, len(logArgs)+2), logArgs...), "err", err)
		logger.WarnContext(ctx, "database unreachable", args...)
		return status.Error(codes.Unavailable, Unreachable)
	}
	args := append(append(make([]any, 0, len(logArgs)+2), logArgs...), "err", err)
	logger.ErrorContext(ctx, "internal error", args...)
	return status.Error(codes.Internal, "internal error")
}
