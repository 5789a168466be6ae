// Package agentfault injects faults into the region-allocator's agent
// calls: the registry the development-only AgentFaultService drives, and
// Wrap, an agentapi.Agent that consults it before each call. The
// region-allocator builds it only when started with --dev.
//
// Faults act on the allocator's side of the wire, and the registry is in
// memory, so a fault belongs to the one allocator process a test injected
// it into (which is how an integration test breaks one allocator of two),
// whichever agent answers behind it.
package agentfault

import (
	"context"
	"sync"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/allocator/agentapi"
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
// Fail is set — permanently (a broken agent, which retrying does not fix:
// agentapi.ErrBroken) if Permanent is set too, else as an agent out of
// reach (agentapi.ErrUnavailable).
type Fault struct {
	Op        Operation
	DatasetID uuid.UUID
	Count     int
	Fail      bool
	Permanent bool
	Delay     time.Duration
}

// Faults is the per-process fault registry.
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

// InjectedError is a failure injected by an Fault.
type InjectedError struct {
	Op        Operation
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

// Wrap returns agent with the registry's faults applied before the calls
// they target; the others pass straight through.
func Wrap(agent agentapi.Agent, f *Faults) agentapi.Agent {
	return &faulty{Agent: agent, faults: f}
}

// faulty consults the registry on the four calls faults can target;
// StartRunningSnapshot, DeleteSnapshot and ProbeTargets pass through
// (embedded).
type faulty struct {
	agentapi.Agent
	faults *Faults
}

func (a *faulty) EnsureRegion(ctx context.Context, datasetID, regionID uuid.UUID, cloneSource string) (uint16, error) {
	if err := a.faults.apply(ctx, OpEnsureRegion, datasetID); err != nil {
		return 0, err
	}
	return a.Agent.EnsureRegion(ctx, datasetID, regionID, cloneSource)
}

func (a *faulty) DeleteRegion(ctx context.Context, datasetID, regionID uuid.UUID) error {
	if err := a.faults.apply(ctx, OpDeleteRegion, datasetID); err != nil {
		return err
	}
	return a.Agent.DeleteRegion(ctx, datasetID, regionID)
}

func (a *faulty) CreateSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	if err := a.faults.apply(ctx, OpCreateSnapshot, datasetID); err != nil {
		return err
	}
	return a.Agent.CreateSnapshot(ctx, datasetID, regionID, snapshotID)
}

func (a *faulty) StopRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	if err := a.faults.apply(ctx, OpDeleteSnapshot, datasetID); err != nil {
		return err
	}
	return a.Agent.StopRunningSnapshot(ctx, datasetID, regionID, snapshotID)
}
