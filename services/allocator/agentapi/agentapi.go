// Package agentapi is what the region-allocator needs from the Crucible
// agents, one per dataset: the calls the server makes (Agent), what they
// answer (ProbeResult) and the errors the server maps to gRPC codes; and,
// for the development-only services registered with --dev, fault injection
// (FaultInjector) and the data path sim-upstairs drives (DataPath).
//
// It holds no implementation. The only one today is the simulation in
// storagecp.dev/allocator/sim/simagent (a separate module, so that its name
// says it is a simulation); this package is outside internal/ so that the
// simulation can implement it.
package agentapi

import (
	"context"
	"net/netip"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/allocator/internal/store"
	"storagecp.dev/platform/apierr"
)

// Agent is what the server needs from the Crucible agents.
type Agent interface {
	// EnsureRegion creates a region (idempotent: a created region returns
	// its port), optionally cloned from a read-only source address, and
	// returns its port.
	EnsureRegion(ctx context.Context, datasetID, regionID uuid.UUID, cloneSource string) (uint16, error)
	// DeleteRegion destroys a region. Unknown regions, destroyed regions
	// and a gone agent are success.
	DeleteRegion(ctx context.Context, datasetID, regionID uuid.UUID) error
	// CreateSnapshot takes a ZFS snapshot of a created region. Idempotent.
	CreateSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error
	// RunningSnapshot starts (or finds) the read-only downstairs serving a
	// snapshot and returns its port.
	RunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) (uint16, error)
	// DeleteRunningSnapshot stops a running snapshot. Unknown ones and a
	// gone agent are success.
	DeleteRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error
	// DeleteSnapshot destroys a ZFS snapshot whose running snapshot is
	// stopped. Unknown ones and a gone agent are success.
	DeleteSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error
	// Probe says whether a live region or running snapshot serves addr
	// and, when one does, the content identity it serves.
	Probe(ctx context.Context, addr netip.AddrPort) (ProbeResult, string, error)
}

// ProbeResult says what answers at an address.
type ProbeResult int

// Probe results.
const (
	Destroyed ProbeResult = iota + 1
	Served
	Unreachable
)

// Errors of agent calls. Each carries its kind (platform/apierr), which is
// the gRPC code the allocator answers with: an agent out of reach is
// Unavailable, a full port range Exhausted, the rest FailedPrecondition.
var (
	// ErrGone: the dataset's disk is expunged; the agent does not answer.
	ErrGone = apierr.New(apierr.Unavailable, "agent gone: dataset is not on an in-service disk")
	// ErrDestroyed: the object was destroyed on the agent and cannot be
	// created again under the same id.
	ErrDestroyed = apierr.New(apierr.Precondition, "destroyed on the agent")
	// ErrHasSnapshots: ZFS cannot destroy a region that has snapshots.
	ErrHasSnapshots = apierr.New(apierr.Precondition, "region still has snapshots on the agent")
	// ErrRunning: a snapshot cannot be destroyed while its running snapshot is up.
	ErrRunning = apierr.New(apierr.Precondition, "snapshot still has a running snapshot")
	// ErrNoRegion: the region does not exist on the agent.
	ErrNoRegion = apierr.New(apierr.Precondition, "region does not exist on the agent")
	// ErrNoSnapshot: the snapshot does not exist on the agent.
	ErrNoSnapshot = apierr.New(apierr.Precondition, "snapshot does not exist on the agent")
	// ErrCloneSource: the clone source does not serve its address.
	ErrCloneSource = apierr.New(apierr.Precondition, "clone source is not served")
	// ErrNoFreePort: every port of the agent's range is in use.
	ErrNoFreePort = apierr.New(apierr.Exhausted, "no free port on agent")
	// ErrNotFound: the call names a dataset the inventory does not have.
	// It is the store's ErrNotFound, so that the server answers it as it
	// answers every unknown object.
	ErrNotFound = store.ErrNotFound
	// ErrUnavailable: the agent is out of reach; retrying may succeed.
	ErrUnavailable = apierr.New(apierr.Unavailable, "agent out of reach")
	// ErrBroken: the agent is broken; retrying does not fix it.
	ErrBroken = apierr.New(apierr.Precondition, "agent broken")
)

// Errors of the data-path calls, all FailedPrecondition.
var (
	// ErrReadOnly: the address serves read-only data (a running snapshot
	// or a read-only region); nothing writes or repairs it.
	ErrReadOnly = apierr.New(apierr.Precondition, "serves read-only data")
	// ErrNoSource: no copy of the set to repair from is served.
	ErrNoSource = apierr.New(apierr.Precondition, "no served copy to repair from")
	// ErrDisagree: the copies to repair from hold different content.
	ErrDisagree = apierr.New(apierr.Precondition, "the copies to repair from disagree")
	// ErrNotServed: a copy to repair is not served.
	ErrNotServed = apierr.New(apierr.Precondition, "not served")
)

// DataPath records what an Upstairs does to the bytes of the regions it
// serves from: the development-only AgentDataService drives it.
type DataPath interface {
	// Write gives every rw region served at one of addrs the content of
	// the write writeID and returns the content, the addresses written and
	// those skipped because nothing serves them.
	Write(ctx context.Context, addrs []netip.AddrPort, writeID uuid.UUID) (content string, written, skipped []netip.AddrPort, err error)
	// Repair records the end of a live repair (repair non-empty) or a
	// reconciliation (repair empty) of one rw region set whose copies are
	// addrs, and returns the content its served copies now hold and the
	// addresses it changed.
	Repair(ctx context.Context, addrs, repair []netip.AddrPort) (content string, repaired []netip.AddrPort, err error)
}

// FaultInjector is a fault registry: the development-only
// AgentFaultService drives it.
type FaultInjector interface {
	// Inject adds a fault; faults are consumed in the order injected.
	Inject(Fault)
	// Clear removes every pending fault.
	Clear()
}

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
// ErrBroken) if Permanent is set too, else as an agent out of reach
// (ErrUnavailable).
type Fault struct {
	Op        Operation
	DatasetID uuid.UUID
	Count     int
	Fail      bool
	Permanent bool
	Delay     time.Duration
}
