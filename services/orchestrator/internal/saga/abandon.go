package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga/sagalog"
)

// An operator's way back from a saga that does not move (the package
// comment's "Abandonment" says why it works as it does): Unwind makes a running saga
// unwind from where it is, and lets a stuck one go on unwinding past the
// undo that failed once the operator has dealt with that undo's effect.

// ErrFinished means the saga is done and not stuck: there is nothing left
// to unwind.
var ErrFinished = errors.New("saga already finished")

// OwnedElsewhereError means an unfinished saga is owned by another SEC, so
// this one cannot drive its unwind (adopt the other SEC's sagas first, as
// a new leader does).
type OwnedElsewhereError struct {
	Saga  uuid.UUID
	Owner string // "" when no SEC owns it
	Self  string
}

func (e *OwnedElsewhereError) Error() string {
	return fmt.Sprintf("saga %s is owned by SEC %q, not by this one (%s)", e.Saga, e.Owner, e.Self)
}

// Is makes OwnedElsewhereError match ErrNotOwner.
func (e *OwnedElsewhereError) Is(target error) bool { return target == ErrNotOwner }

// UnwindResult says what Unwind set in motion; the saga's outcome follows
// from Wait.
type UnwindResult struct {
	// Resumed: the saga was stuck, and its unwind goes on past Skipped.
	Resumed bool
	// Skipped are the nodes whose failed undo is now recorded undo_skipped.
	Skipped []string
	// Recovered: the saga was not running here, so this SEC loaded it (as
	// recovery does) to unwind it. A resumed stuck saga is always loaded.
	Recovered bool
}

// skipRecord is the data of an undo_skipped event.
type skipRecord struct {
	Comment string `json:"comment"`
}

// unwindCause is the cause with which an operator's unwind cancels the
// context of a saga's actions.
type unwindCause struct{ err *ActionError }

func (c unwindCause) Error() string { return c.err.Error() }

// operatorError is the error of an action an operator's unwind stopped.
// Classify never retries it (the action's context is done; its kind, like
// the other errors the engine makes itself, comes out the same every run).
func operatorError(comment string) *ActionError {
	return &ActionError{Kind: ErrKindAbandoned, Message: "unwound by an operator: " + comment, Reason: ErrKindAbandoned}
}

// unwoundBy returns a copy of the operator's error when ctx, an action's
// context, was cancelled by an operator's unwind; nil otherwise.
func unwoundBy(ctx context.Context) *ActionError {
	var c unwindCause
	if !errors.As(context.Cause(ctx), &c) {
		return nil
	}
	ae := *c.err
	return &ae
}

// operatorUnwind acts on an operator's unwind on the driver: no action
// starts any more, and the saga unwinds. The actions in flight get the
// SEC's grace period to finish (then they are undone like any other); one
// still running after it is cancelled and comes back failed with the
// operator's error. Undos in flight go on.
func (ex *execution) operatorUnwind(comment string, b *batch) {
	if ex.opErr == nil {
		// The first request's, as the saga row keeps it.
		ex.opComment = comment
		ex.opErr = operatorError(comment)
	}
	ex.cancelActionsAfterGrace()
	if !ex.unwinding {
		ex.unwinding = true
		b.state = sagalog.StateUnwinding
	}
	ex.logger.Warn("saga unwinding at an operator's request", "error", ex.opErr.Message, "stuck", ex.stuck)
}

// cancelActionsAfterGrace cancels the actions in flight with the
// operator's error once the SEC's unwind grace has passed (WithUnwindGrace
// says why not at once). Called on the driver only; the timer is stopped
// when the driver ends.
func (ex *execution) cancelActionsAfterGrace() {
	if ex.graceTimer != nil {
		return
	}
	cause := unwindCause{ex.opErr}
	cancel := ex.cancelActions
	ex.graceTimer = time.AfterFunc(ex.sec.unwindGrace, func() { cancel(cause) })
}

// Unwind is an operator's abandonment of saga id, which undoes everything
// that can be undone:
//
//   - An unfinished saga owned by this SEC unwinds from where it is. The
//     request is made durable first (the saga row's unwind_time and
//     unwind_comment); then no action starts any more, the actions in
//     flight get the SEC's unwind grace to finish (and are undone), those
//     still running after it are cancelled and recorded failed with an
//     error of kind "abandoned" carrying comment (never retried), and the
//     normal unwind runs every undo in reverse.
//     A saga owned here but not running (its recovery failed) is loaded and
//     unwound. A saga owned by another SEC is refused with
//     *OwnedElsewhereError: adopt it first.
//   - A stuck saga (done, with an undo_failed no operator skipped): comment
//     asserts that the operator dealt with the failed undo's effect. The
//     engine records that undo undo_skipped, puts the saga back to
//     unwinding under this SEC and drives it, so every remaining undo runs.
//     If another undo fails for good, the saga is stuck again at that node.
//
// The saga then ends failed (unwound), or stuck; Wait returns the outcome,
// whose UnwindComment is comment. ErrFinished for a saga that is done and
// not stuck, ErrAbandoned for an abandoned one (and for one that turns out
// not to load: recovery abandons it as unrecoverable), ErrNotFound for an
// unknown id.
func (s *SEC) Unwind(ctx context.Context, id uuid.UUID, comment string) (UnwindResult, error) {
	var res UnwindResult
	// The row can change under us (finish, get stuck, be adopted) between
	// reading it and acting on it; each step is conditional, so read again.
	for range 3 {
		row, err := s.store.Get(ctx, id)
		if err != nil {
			return res, err
		}
		switch row.State {
		case sagalog.StateAbandoned:
			return res, fmt.Errorf("%w: saga %s was abandoned (%s: %s) and is never driven again",
				ErrAbandoned, id, deref(row.AbandonReason), deref(row.AbandonComment))
		case sagalog.StateDone:
			if !row.Stuck {
				return res, fmt.Errorf("%w: saga %s is done and not stuck; there is nothing to unwind", ErrFinished, id)
			}
			_, nodes, ok, err := s.store.ResumeStuck(ctx, id, s.id, comment, mustJSON(skipRecord{Comment: comment}))
			if err != nil {
				return res, fmt.Errorf("resume stuck saga %s: %w", id, err)
			}
			if !ok {
				continue
			}
			res.Resumed = true
			res.Skipped = nodeNames(row.DAG, nodes)
			// Its stuck outcome, if it finished here, is stale now: Wait
			// and recovery must not take it for the end.
			s.mu.Lock()
			delete(s.finished, id)
			s.mu.Unlock()
			s.logger.Warn("stuck saga resumed by an operator: its failed undos are skipped", "saga_id", id, "skipped", res.Skipped, "comment", comment)
			if row, err = s.store.Get(ctx, id); err != nil {
				return res, err
			}
		default:
			if row.CurrentSEC == nil || *row.CurrentSEC != s.id {
				return res, &OwnedElsewhereError{Saga: id, Owner: deref(row.CurrentSEC), Self: s.id}
			}
			ok, err := s.store.RequestUnwind(ctx, id, s.id, comment)
			if err != nil {
				return res, fmt.Errorf("record the unwind of saga %s: %w", id, err)
			}
			if !ok {
				continue
			}
			if s.signalUnwind(id, comment) {
				return res, nil
			}
			// The row as it is now, with the request, for the load below.
			if row, err = s.store.Get(ctx, id); err != nil {
				return res, err
			}
		}
		// Not running here: load it, as recovery would; the request is
		// durable, so the loaded execution unwinds.
		r, err := s.recoverRow(ctx, row)
		switch {
		case err != nil:
			return res, fmt.Errorf("load saga %s to unwind it: %w", id, err)
		case r == recoverAbandoned:
			return res, fmt.Errorf("%w: saga %s does not load (unrecoverable): it was abandoned and is never driven again", ErrAbandoned, id)
		case r == recoverStarted:
			res.Recovered = true
			return res, nil
		}
		// Loaded meanwhile by someone else (a recovery pass): if here, it
		// read the request already; tell it anyway.
		if s.signalUnwind(id, comment) {
			return res, nil
		}
	}
	return res, fmt.Errorf("saga %s kept changing while its unwind was asked for; look at it again", id)
}

// signalUnwind hands an operator's unwind to the driver of saga id, if it
// runs here.
func (s *SEC) signalUnwind(id uuid.UUID, comment string) bool {
	s.mu.Lock()
	ex := s.running[id]
	s.mu.Unlock()
	if ex == nil {
		return false
	}
	select {
	case ex.unwindCh <- comment:
	default: // one is pending already; the request is durable anyway
	}
	return true
}

// nodeNames maps node ids of a stored DAG to their names (the ids
// themselves when the DAG does not decode).
func nodeNames(dagJSON []byte, ids []int) []string {
	var d DAG
	_ = json.Unmarshal(dagJSON, &d)
	out := make([]string, len(ids))
	for i, id := range ids {
		if id >= 0 && id < len(d.Nodes) {
			out[i] = d.Nodes[id].Name
		} else {
			out[i] = fmt.Sprintf("node %d", id)
		}
	}
	return out
}

func deref(p *string) string {
	if p == nil {
		return ""
	}
	return *p
}
