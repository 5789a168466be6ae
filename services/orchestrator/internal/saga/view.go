package saga

import (
	"context"
	"encoding/json"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga/sagalog"
)

// SagaView is a saga as the admin API shows it (read from the database, so
// any SEC can show any saga).
type SagaView struct {
	ID              uuid.UUID
	Name            string
	Creator         string
	CurrentSEC      string
	State           string // running, unwinding, done, abandoned
	Stuck           bool   // the log holds an undo_failed event no operator skipped
	TimeCreated     time.Time
	AdoptGeneration int64
	AdoptTime       time.Time
	AbandonTime     *time.Time
	AbandonReason   string
	AbandonComment  string
	// UnwindTime and UnwindComment are set once an operator asked for the
	// saga to be unwound (Unwind): when, and their comment.
	UnwindTime    *time.Time
	UnwindComment string
	SubjectID     string
	TraceParent   string
	LastEventTime time.Time
	// Outcome is set when the saga is done. List fills its Kind only (from
	// the saga row and two index probes of its log, no replay); Get replays
	// the log and adds the failing node, the errors and the output.
	Outcome *Outcome
	// Set by Get only.
	Params json.RawMessage
	Nodes  []NodeView
}

// NodeView is one node of a saga with its log. Outputs are shown as
// persisted: actions must never put secrets in them.
type NodeView struct {
	ID     int
	Name   string
	Kind   string
	Action string
	// HasUndo: the node's action declares an undo (known to this binary).
	HasUndo bool
	Parents []int
	Status  string // never_started, started, succeeded, failed, undo_started, undo_finished, undo_failed, undo_skipped
	Output  json.RawMessage
	// Error is a failed, undo_failed or undo_skipped node's error, with its
	// class (Error.Reason: for an undo_failed node, why the saga is stuck;
	// "abandoned" for an action an operator's unwind stopped) and how many
	// runs it took (Error.Attempts).
	Error *ActionError
	// SkipComment is an undo_skipped node's operator comment: they dealt
	// with the effect of its failed undo (Error) by hand.
	SkipComment string
	Events      []EventView
	// Attempts is how many times the node's latest task ran in the
	// execution that recorded its end, when the log says (a failed or
	// undo_failed node's error, an undo_finished event after retries); 0
	// when it does not (one run, or no end yet). While the task is
	// retrying on the SEC answering, it is the runs so far.
	Attempts int
	// RetryError is set while the node's task, in flight on the SEC
	// answering, waits to run again after a retryable error: that error;
	// the next run starts at RetryAt. The log records no single try, so
	// another SEC (a standby's viewer) cannot show it.
	RetryError string
	RetryAt    time.Time
}

// EventView is one log event.
type EventView struct {
	Type    string
	Time    time.Time
	Creator string
	Data    json.RawMessage
}

func viewOf(r sagalog.Saga) SagaView {
	v := SagaView{
		ID: r.ID, Name: r.Name, Creator: r.Creator, State: r.State, Stuck: r.Stuck,
		TimeCreated: r.TimeCreated, AdoptGeneration: r.AdoptGeneration, AdoptTime: r.AdoptTime,
		AbandonTime: r.AbandonTime, UnwindTime: r.UnwindTime, LastEventTime: r.LastEventTime,
	}
	v.CurrentSEC = deref(r.CurrentSEC)
	v.AbandonReason = deref(r.AbandonReason)
	v.AbandonComment = deref(r.AbandonComment)
	v.UnwindComment = deref(r.UnwindComment)
	v.SubjectID = deref(r.SubjectID)
	v.TraceParent = deref(r.TraceParent)
	if r.State == sagalog.StateDone {
		// The same decision as execution.outcomeFromLog: the end node's
		// output makes a success, an undo_failed event no operator skipped
		// a stuck saga, and anything else finished is an unwound failure.
		o := Outcome{SagaID: r.ID, Kind: Failed, UnwindComment: v.UnwindComment}
		switch {
		case r.EndSucceeded:
			o.Kind = Succeeded
		case r.Stuck:
			o.Kind = Stuck
		}
		v.Outcome = &o
	}
	return v
}

// ListFilter narrows List.
type ListFilter struct {
	States    []string // empty: all
	SubjectID string   // empty: all
	Name      string   // template name; empty: all
	// SubjectOrParent keeps sagas whose subject is it or whose subject's
	// parent is it (WithSubjectParent); empty: all.
	SubjectOrParent string
	After           uuid.UUID
	Limit           int // default 100
}

// List returns sagas ordered by id (page with After), without nodes, each
// done saga with its outcome's kind.
func (s *SEC) List(ctx context.Context, f ListFilter) ([]SagaView, error) {
	rows, err := s.store.List(ctx, sagalog.Filter{States: f.States, SubjectID: f.SubjectID, Name: f.Name, SubjectOrParent: f.SubjectOrParent, After: f.After, Limit: f.Limit})
	if err != nil {
		return nil, err
	}
	views := make([]SagaView, len(rows))
	for i, r := range rows {
		views[i] = viewOf(r)
	}
	return views, nil
}

// Get returns one saga with its DAG, every event and every output. A done
// saga whose log does not replay keeps the outcome kind List shows.
func (s *SEC) Get(ctx context.Context, id uuid.UUID) (SagaView, error) {
	row, err := s.store.Get(ctx, id)
	if err != nil {
		return SagaView{}, err
	}
	v := viewOf(row)
	var d DAG
	if err := json.Unmarshal(row.DAG, &d); err != nil {
		return v, nil // an undecodable DAG still shows its row
	}
	v.Params = d.Params
	events, err := s.store.Events(ctx, id)
	if err != nil {
		return SagaView{}, err
	}
	for i, n := range d.Nodes {
		nv := NodeView{ID: i, Name: n.Name, Kind: n.Kind, Action: n.Action, Parents: n.Parents, Status: neverStarted.String()}
		if a, err := s.registry.action(n.Action); n.Kind == KindAction && err == nil {
			nv.HasUndo = a.undo != nil
		}
		v.Nodes = append(v.Nodes, nv)
	}
	for _, e := range events {
		if e.NodeID >= 0 && e.NodeID < len(v.Nodes) {
			v.Nodes[e.NodeID].Events = append(v.Nodes[e.NodeID].Events, EventView{Type: e.Type, Time: e.Time, Creator: e.Creator, Data: e.Data})
		}
	}
	// Replay for per-node status; a log that does not replay is still
	// shown event by event.
	ex, err := newExecutionForView(s, row, &d)
	if err == nil && ex.replay(events) == nil {
		for i := range v.Nodes {
			n := ex.nodes[i]
			v.Nodes[i].Status = n.status.String()
			v.Nodes[i].Output = n.output
			v.Nodes[i].Error = n.err
			v.Nodes[i].SkipComment = n.skipComment
			if n.err != nil {
				v.Nodes[i].Attempts = n.err.Attempts
			}
		}
		if row.State == sagalog.StateDone {
			o := ex.outcomeFromLog()
			v.Outcome = &o
		}
	}
	for _, e := range events {
		if e.Type == evUndoFinished && e.Data != nil && e.NodeID >= 0 && e.NodeID < len(v.Nodes) {
			var r undoRecord
			if json.Unmarshal(e.Data, &r) == nil {
				v.Nodes[e.NodeID].Attempts = r.Attempts
			}
		}
	}
	s.mu.Lock()
	running := s.running[id]
	s.mu.Unlock()
	if running != nil {
		for node, r := range running.liveRetries() {
			if node < len(v.Nodes) {
				v.Nodes[node].Attempts, v.Nodes[node].RetryError, v.Nodes[node].RetryAt = r.attempts, r.err, r.next
			}
		}
	}
	return v, nil
}

// UndoNodes lists the names of d's action nodes whose action declares an
// undo, in topological order (what an unwind through the whole DAG runs;
// the test helpers iterate over them). Actions this SEC's registry does
// not know are left out.
func (s *SEC) UndoNodes(d *DAG) []string {
	var names []string
	for _, n := range d.Nodes {
		if n.Kind != KindAction {
			continue
		}
		if a, err := s.registry.action(n.Action); err == nil && a.undo != nil {
			names = append(names, n.Name)
		}
	}
	return names
}

// Exists reports whether a saga with the id was ever created (it may
// have finished or been abandoned since); it reads only the saga row.
func (s *SEC) Exists(ctx context.Context, id uuid.UUID) (bool, error) {
	return s.store.Exists(ctx, id)
}

// newExecutionForView builds an execution only to replay a log; unknown
// actions are fine here.
func newExecutionForView(s *SEC, row sagalog.Saga, d *DAG) (*execution, error) {
	if err := d.validate(); err != nil {
		return nil, err
	}
	ex := &execution{sec: s, id: row.ID, dag: d, nodes: make([]nodeState, len(d.Nodes)), failedNode: -1, undoNode: -1}
	if row.UnwindComment != nil {
		ex.opComment = *row.UnwindComment
		ex.opErr = operatorError(ex.opComment)
	}
	return ex, nil
}

// WaitIdle polls the database until no saga (of any SEC) is running or
// unwinding, or ctx ends.
func (s *SEC) WaitIdle(ctx context.Context) error {
	delay := 5 * time.Millisecond
	for {
		n, err := s.store.CountUnfinished(ctx)
		if err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return ctx.Err()
		}
		delay = min(delay*2, 200*time.Millisecond)
	}
}

// StuckCount counts the undos that leave sagas stuck (undo_failed events
// no operator skipped) in the whole log.
func (s *SEC) StuckCount(ctx context.Context) (int, error) {
	return s.store.CountStuckUndos(ctx)
}
