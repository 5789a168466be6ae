package simagent

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/allocator/agentapi"
)

// Faults is the per-process fault registry. It is deliberately in memory:
// a fault belongs to the process a test (or the dev-only RPC) injected it
// into, which is how an integration test breaks one allocator process.
type Faults struct {
	mu      sync.Mutex
	pending []*agentapi.Fault
}

// Inject adds a fault; faults are consumed in the order injected.
func (f *Faults) Inject(fault agentapi.Fault) {
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
func (f *Faults) take(op agentapi.Operation, datasetID uuid.UUID) agentapi.Fault {
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
	return agentapi.Fault{}
}

// apply delays and/or fails a call as the registry says.
func (f *Faults) apply(ctx context.Context, op agentapi.Operation, datasetID uuid.UUID) error {
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

// InjectedError is a failure injected by an agentapi.Fault.
type InjectedError struct {
	Op        agentapi.Operation
	DatasetID uuid.UUID
	// Permanent: a broken agent (agentapi.ErrBroken, FAILED_PRECONDITION),
	// not one out of reach (agentapi.ErrUnavailable, UNAVAILABLE).
	Permanent bool
}

func (e *InjectedError) Error() string {
	return "injected agent fault: " + e.Op.String() + " on dataset " + e.DatasetID.String()
}

// Unwrap says what kind of agent failure the fault stands for, so that
// callers classify it by the agentapi errors alone.
func (e *InjectedError) Unwrap() error {
	if e.Permanent {
		return agentapi.ErrBroken
	}
	return agentapi.ErrUnavailable
}
