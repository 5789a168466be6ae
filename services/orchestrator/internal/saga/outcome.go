package saga

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kinds of action error, as recorded in a failed or undo_failed event.
const (
	ErrKindAction      = "action"      // the action returned an error
	ErrKindInjected    = "injected"    // a test hook injected it
	ErrKindSerialize   = "serialize"   // the output did not marshal
	ErrKindDeserialize = "deserialize" // a lookup or params decode failed
	ErrKindUndo        = "undo"        // an undo returned an error
	// ErrKindAbandoned: an operator asked for the saga to be unwound
	// (SEC.Unwind) while the action was in flight, so it was cancelled (or
	// never ran); the message carries the operator's comment.
	ErrKindAbandoned = "abandoned"
)

// ActionError is a node failure as persisted in the log (the data of a
// `failed` or `undo_failed` event). Messages are persisted and shown by the
// admin API, so actions must never put secrets in their errors.
type ActionError struct {
	Kind    string `json:"kind"`
	Message string `json:"message"`
	// Code is the gRPC code of the underlying error (OK when it had none),
	// so an RPC that started the saga can answer with the same code.
	Code codes.Code `json:"code,omitempty"`
	// Reason is Classify's reason for the error ("grpc:NotFound",
	// "pg:23505", "injected", …): for an undo_failed node, why the saga is
	// stuck rather than still retrying.
	Reason string `json:"reason,omitempty"`
	// Retryable: the error was retryable, and the node failed only because
	// its action's retry budget ran out (never set for an undo: a retryable
	// undo error is retried until it clears).
	Retryable bool `json:"retryable,omitempty"`
	// Attempts is how many times the task ran, in the execution that
	// recorded the error, before it gave up (0 in logs written before the
	// engine retried anything).
	Attempts int `json:"attempts,omitempty"`
}

func (e *ActionError) Error() string { return e.Kind + ": " + e.Message }

// GRPCStatus lets status.FromError see the original code.
func (e *ActionError) GRPCStatus() *status.Status {
	c := e.Code
	if c == codes.OK {
		c = codes.Unknown
	}
	return status.New(c, e.Message)
}

func newActionError(kind string, err error) *ActionError {
	var ae *ActionError
	if errors.As(err, &ae) {
		c := *ae // the caller fills in this run's attempts
		return &c
	}
	ce := &ActionError{Kind: kind, Message: err.Error()}
	if s, ok := status.FromError(err); ok && s.Code() != codes.Unknown {
		ce.Code = s.Code()
	}
	return ce
}

// OutcomeKind says how a saga ended.
type OutcomeKind int

// Outcomes (docs/architecture.md, "The saga engine").
const (
	// Succeeded: Output holds the final node's output.
	Succeeded OutcomeKind = iota + 1
	// Failed: FailedNode failed with Err and everything was undone.
	Failed
	// Stuck: FailedNode failed, then UndoNode's undo failed with UndoErr.
	// The saga is done but its partial effects remain; an operator must act
	// (SEC.Unwind goes on past the failed undo once they have).
	Stuck
)

func (k OutcomeKind) String() string {
	switch k {
	case Succeeded:
		return "succeeded"
	case Failed:
		return "failed"
	case Stuck:
		return "stuck"
	}
	return fmt.Sprintf("OutcomeKind(%d)", int(k))
}

// Outcome is the result of a finished saga.
type Outcome struct {
	SagaID     uuid.UUID
	Kind       OutcomeKind
	Output     json.RawMessage
	FailedNode string
	Err        *ActionError
	UndoNode   string
	UndoErr    *ActionError
	// UnwindComment is the operator's comment when an operator asked for
	// the saga to be unwound (SEC.Unwind). Err is then the operator's
	// error (kind "abandoned") unless a node failed first, or FailedNode is
	// the first action the unwind cancelled.
	UnwindComment string
}

// Decode unmarshals a succeeded saga's output.
func (o Outcome) Decode(out any) error {
	if o.Kind != Succeeded {
		return o.Error()
	}
	return json.Unmarshal(o.Output, out)
}

// Error is nil for a success, else an error describing the failure; it
// wraps the node's *ActionError (and so its gRPC code).
func (o Outcome) Error() error {
	switch o.Kind {
	case Succeeded:
		return nil
	case Failed:
		if o.FailedNode == "" {
			// An operator's unwind that failed no node (every action in
			// flight finished anyway).
			return fmt.Errorf("saga %s unwound: %w", o.SagaID, o.Err)
		}
		return fmt.Errorf("saga %s failed at node %s: %w", o.SagaID, o.FailedNode, o.Err)
	case Stuck:
		return fmt.Errorf("saga %s stuck: node %s failed (%v) and the undo of %s failed: %w",
			o.SagaID, o.FailedNode, o.Err, o.UndoNode, o.UndoErr)
	}
	return fmt.Errorf("saga %s: no outcome", o.SagaID)
}
