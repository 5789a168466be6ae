package agent

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
)

// Operation is a kind of agent call faults can target.
type Operation int

// Operations.
const (
	OpEnsureRegion Operation = iota + 1
	OpDeleteRegion
	// OpCreateSnapshot covers taking a snapshot (not starting its running
	// snapshot, so one fault fails one CreateRegionSnapshots attempt).
	OpCreateSnapshot
	// OpDeleteSnapshot covers stopping the running snapshot (the first step
	// of deleting a region snapshot).
	OpDeleteSnapshot
)

func (o Operation) String() string {
	switch o {
	case OpEnsureRegion:
		return "ensure region"
	case OpDeleteRegion:
		return "delete region"
	case OpCreateSnapshot:
		return "create snapshot"
	case OpDeleteSnapshot:
		return "delete snapshot"
	}
	return "unknown operation"
}

// Fault affects the next Count calls of Op (on DatasetID, or on every
// dataset when it is uuid.Nil): each is delayed by Delay, then fails if
// Fail is set — permanently (a broken agent, which retrying does not fix)
// if Permanent is set too, else as an agent out of reach.
type Fault struct {
	Op        Operation
	DatasetID uuid.UUID
	Count     int
	Fail      bool
	Permanent bool
	Delay     time.Duration
}

// Faults is the per-process fault registry. It is deliberately in memory:
// a fault belongs to the process a test (or the dev-only RPC) injected it
// into, which is how an integration test breaks one allocator process.
type Faults struct {
	mu      sync.Mutex
	pending []*Fault
}

// Inject adds a fault; faults are consumed in the order injected.
func (f *Faults) Inject(fault Fault) {
	if fault.Count <= 0 {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = append(f.pending, &fault)
}

// Clear removes every pending fault.
func (f *Faults) Clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pending = nil
}

// Pending counts the calls still affected.
func (f *Faults) Pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, p := range f.pending {
		n += p.Count
	}
	return n
}

// take consumes one call of the first matching fault (the zero Fault,
// which does nothing, when none matches).
func (f *Faults) take(op Operation, datasetID uuid.UUID) Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, p := range f.pending {
		if p.Op != op || (p.DatasetID != uuid.Nil && p.DatasetID != datasetID) {
			continue
		}
		p.Count--
		if p.Count == 0 {
			f.pending = append(f.pending[:i], f.pending[i+1:]...)
		}
		return *p
	}
	return Fault{}
}

// apply delays and/or fails a call as the registry says.
func (f *Faults) apply(ctx context.Context, op Operation, datasetID uuid.UUID) error {
	if f == nil {
		return nil
	}
	fault := f.take(op, datasetID)
	if delay := fault.Delay; delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
	if fault.Fail {
		return &InjectedError{Op: op, DatasetID: datasetID, Permanent: fault.Permanent}
	}
	return nil
}

// InjectedError is a failure injected by a Fault.
type InjectedError struct {
	Op        Operation
	DatasetID uuid.UUID
	// Permanent: a broken agent (FAILED_PRECONDITION), not one out of
	// reach (UNAVAILABLE).
	Permanent bool
}

func (e *InjectedError) Error() string {
	return "injected agent fault: " + e.Op.String() + " on dataset " + e.DatasetID.String()
}

// Unwrap is the fault's kind (apierr): Precondition when Permanent,
// Unavailable otherwise.
func (e *InjectedError) Unwrap() error {
	if e.Permanent {
		return apierr.Precondition
	}
	return apierr.Unavailable
}
