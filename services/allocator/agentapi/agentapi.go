// Package agentapi is the contract between the region-allocator and the
// Crucible agents, one per dataset: the calls the allocator makes (Agent),
// what they answer (Probe) and the errors it tells apart, each with the
// kind (platform/apierr) the allocator answers its own callers with; and
// how those errors cross the wire of storage.agent.v1 (wire.go), written
// once for both ends.
//
// It holds no agent. The allocator's client of storage.agent.v1 is in
// allocator/internal/agentclient; the simulated agents (sim-agent, in the
// storagecp.dev/allocator/sim module) serve it. This package is outside
// internal/ so that the simulation can implement the same contract.
package agentapi

import (
	"context"
	"net/netip"

	"github.com/google/uuid"

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
	// StartRunningSnapshot starts (or finds) the read-only downstairs serving a
	// snapshot and returns its port.
	StartRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) (uint16, error)
	// StopRunningSnapshot stops a running snapshot. Unknown ones and a
	// gone agent are success.
	StopRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error
	// DeleteSnapshot destroys a ZFS snapshot whose running snapshot is
	// stopped. Unknown ones and a gone agent are success.
	DeleteSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error
	// ProbeTargets says, for each address in order, whether a live region
	// or running snapshot serves it and, when one does, the content
	// identity it serves.
	ProbeTargets(ctx context.Context, addrs []netip.AddrPort) ([]Probe, error)
}

// Probe is what answers at one address.
type Probe struct {
	Result ProbeResult
	// Content is the served content identity; empty unless Served.
	Content string
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
// Unavailable, a full port range Exhausted, an unknown dataset NotFound,
// the rest FailedPrecondition.
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
	// ErrUnknownDataset: the call names a dataset the inventory does not
	// have.
	ErrUnknownDataset = apierr.New(apierr.NotFound, "dataset not in the inventory")
	// ErrUnavailable: the agent is out of reach; retrying may succeed.
	ErrUnavailable = apierr.New(apierr.Unavailable, "agent out of reach")
	// ErrBroken: the agent is broken; retrying does not fix it.
	ErrBroken = apierr.New(apierr.Precondition, "agent broken")
)
