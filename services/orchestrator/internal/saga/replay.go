package saga

import (
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"storagecp.dev/orchestrator/internal/saga/sagalog"
)

// ErrCorruptLog means a saga's log cannot be replayed: an unknown label, a
// transition the node state machine forbids, or nodes inconsistent with
// their parents. Recovery treats it as permanent.
var ErrCorruptLog = errors.New("corrupt saga log")

// replay rebuilds per-node state from the log: events are
// sorted by label rank, never by time, and fed through the state machine;
// then every edge is checked.
func (ex *execution) replay(events []sagalog.Event) error {
	sorted := append([]sagalog.Event(nil), events...)
	for _, e := range sorted {
		if _, ok := eventRank[e.Type]; !ok {
			return fmt.Errorf("%w: unknown event label %q", ErrCorruptLog, e.Type)
		}
		if e.NodeID < 0 || e.NodeID >= len(ex.nodes) {
			return fmt.Errorf("%w: event for node %d of a %d-node DAG", ErrCorruptLog, e.NodeID, len(ex.nodes))
		}
	}
	sort.SliceStable(sorted, func(i, j int) bool { return eventRank[sorted[i].Type] < eventRank[sorted[j].Type] })
	for _, e := range sorted {
		n := &ex.nodes[e.NodeID]
		name := ex.dag.Nodes[e.NodeID].Name
		bad := func() error {
			return fmt.Errorf("%w: node %q: %s after %s", ErrCorruptLog, name, e.Type, n.status)
		}
		switch e.Type {
		case evStarted:
			if n.status != neverStarted {
				return bad()
			}
			n.status = started
		case evSucceeded:
			if n.status != started {
				return bad()
			}
			n.status = succeeded
			n.output = json.RawMessage(e.Data)
			if n.output == nil {
				n.output = json.RawMessage("null")
			}
		case evFailed, evUndoFailed:
			if (e.Type == evFailed && n.status != started) || (e.Type == evUndoFailed && n.status != undoStarted) {
				return bad()
			}
			var ae ActionError
			if err := json.Unmarshal(e.Data, &ae); err != nil {
				ae = ActionError{Kind: ErrKindAction, Message: string(e.Data)}
			}
			n.err = &ae
			if e.Type == evFailed {
				n.status = failed
				n.actionErr = &ae
			} else {
				n.status = undoFailed
			}
		case evUndoStarted:
			// A failed node is undone only when its outcome was unknown.
			if n.status != succeeded && (n.status != failed || n.actionErr == nil || !n.actionErr.Retryable) {
				return bad()
			}
			n.status = undoStarted
		case evUndoFinished:
			if n.status != undoStarted {
				return bad()
			}
			n.status = undoFinished
			n.undone = true
		case evUndoSkipped:
			// Only ever answers an undo_failed of the same node, which
			// ranks before it. The failed undo's error stays on the node:
			// it says what the operator dealt with.
			if n.status != undoFailed {
				return bad()
			}
			var sk skipRecord
			if err := json.Unmarshal(e.Data, &sk); err == nil {
				n.skipComment = sk.Comment
			}
			n.status = undoSkipped
			n.undone = true
		}
	}
	for id := range ex.nodes {
		st := ex.nodes[id].status
		if ex.nodes[id].actionErr != nil {
			// Failed, and perhaps undone since (an unknown outcome).
			ex.unwinding = true
			if ex.failedNode < 0 {
				ex.failedNode = id
			}
		}
		switch st {
		case undoStarted, undoFinished, undoSkipped:
			ex.unwinding = true
		case undoFailed:
			ex.unwinding = true
			ex.stuck = true
			if ex.undoNode < 0 {
				ex.undoNode = id
			}
		}
		for _, p := range ex.dag.Nodes[id].Parents {
			ps := ex.nodes[p].status
			parentUndoing := ps == undoStarted || ps == undoFinished || ps == undoFailed || ps == undoSkipped
			everSucceeded := ps == succeeded || parentUndoing
			if st != neverStarted && !everSucceeded {
				return fmt.Errorf("%w: node %q is %s but its parent %q is %s", ErrCorruptLog, ex.dag.Nodes[id].Name, st, ex.dag.Nodes[p].Name, ps)
			}
			// A parent's undo starts only once every child is undone: it
			// never ran, failed, was undone, or its failed undo was skipped.
			childUndone := st == neverStarted || st == failed || st == undoFinished || st == undoSkipped
			if parentUndoing && !childUndone {
				return fmt.Errorf("%w: parent %q is %s while node %q is %s", ErrCorruptLog, ex.dag.Nodes[p].Name, ps, ex.dag.Nodes[id].Name, st)
			}
		}
	}
	return nil
}

// resumeBatch is the first batch of a recovered saga.
func (ex *execution) resumeBatch(state string) batch {
	var b batch
	end := len(ex.nodes) - 1
	if s := ex.nodes[end].status; s == succeeded || s == undoStarted || s == undoFinished || s == undoSkipped {
		// The end node has an output: the saga is complete (an operator's
		// unwind asked for after that changes nothing).
		b.state = sagalog.StateDone
		b.finished = true
		ex.unwinding = false
		ex.stuck = false
		ex.outcome = Outcome{SagaID: ex.id, Kind: Succeeded, Output: ex.nodes[end].output, UnwindComment: ex.opComment}
		return b
	}
	if ex.opErr != nil && !ex.stuck {
		// An operator asked for the unwind before the SEC that drove the
		// saga went away. The actions it had in flight run again, as in any
		// recovery (they may have landed, and only one that finishes can
		// be undone); the unwind's grace then cancels any that hangs.
		ex.unwinding = true
	}
	if ex.unwinding && state != sagalog.StateUnwinding && !ex.stuck {
		b.state = sagalog.StateUnwinding
	}
	ex.advance(&b)
	return b
}

// outcomeFromLog computes the outcome of a finished saga from its log.
func (ex *execution) outcomeFromLog() Outcome {
	end := len(ex.nodes) - 1
	switch {
	case ex.nodes[end].output != nil:
		return Outcome{SagaID: ex.id, Kind: Succeeded, Output: ex.nodes[end].output, UnwindComment: ex.opComment}
	case ex.stuck:
		return ex.stuckOutcome()
	default:
		return ex.failedOutcome()
	}
}
