// Package agent simulates the Crucible agents, one per dataset. Their state
// lives in the allocator's database (agent_region, agent_snapshot,
// agent_port) so it survives restarts and every allocator process on the
// database sees the same agents; each agent call is its own transaction,
// separate from the control plane's rows, because a real agent is a
// separate system (ensure is not atomic with recording the port).
package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/allocator/internal/store"
	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/target"
)

// Errors of agent calls; their kinds are their gRPC codes (apierr): the
// agent out of reach is Unavailable, the rest are FailedPrecondition.
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
	ErrNoFreePort = store.ErrNoFreePort
)

// ProbeResult says what answers at an address.
type ProbeResult int

// Probe results.
const (
	Destroyed ProbeResult = iota + 1
	Served
	Unreachable
)

// Sim is the simulated agent of every dataset.
type Sim struct {
	pool   *pgxpool.Pool
	faults *Faults
}

// NewSim returns the agents over the allocator database with this
// process's fault registry (nil for none).
func NewSim(pool *pgxpool.Pool, faults *Faults) *Sim {
	return &Sim{pool: pool, faults: faults}
}

// inTx runs an agent call's transaction after checking its fence and
// whether the agent is there. Deletes on a gone agent succeed with
// nothing done (what was there is gone with it); other calls fail with
// ErrGone.
func (s *Sim) inTx(ctx context.Context, datasetID uuid.UUID, goneOK bool, fn func(pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
			if err := fence.Check(ctx, tx); err != nil {
				return err
			}
			in, err := store.DatasetInService(ctx, tx, datasetID)
			if err != nil {
				return err
			}
			if !in {
				if goneOK {
					return nil
				}
				return fmt.Errorf("dataset %s: %w", datasetID, ErrGone)
			}
			return fn(tx)
		})
		// Two callers picking the same free port, or creating the same
		// object, collide on a key; the next attempt takes another port or
		// finds the object created.
		if db.IsUniqueViolation(err, "") && attempt < 10 {
			continue
		}
		return err
	}
}

// EnsureRegion creates a region (idempotent: a created region returns its
// port), optionally cloned from a read-only source address, and returns
// its port.
func (s *Sim) EnsureRegion(ctx context.Context, datasetID, regionID uuid.UUID, cloneSource string) (uint16, error) {
	if err := s.faults.apply(ctx, OpEnsureRegion, datasetID); err != nil {
		return 0, err
	}
	var port int32
	err := s.inTx(ctx, datasetID, false, func(tx pgx.Tx) error {
		r, found, err := store.GetAgentRegion(ctx, tx, datasetID, regionID)
		if err != nil {
			return err
		}
		if found {
			if r.State == store.AgentDestroyed {
				return fmt.Errorf("region %s: %w", regionID, ErrDestroyed)
			}
			port = r.Port
			return nil
		}
		// A new region is blank; a clone holds its source's bytes, copied
		// in this transaction so that no write to the source can slip in
		// between.
		content := Blank
		if cloneSource != "" {
			src, err := target.Parse(cloneSource)
			if err != nil {
				return fmt.Errorf("clone source %q: %w", cloneSource, ErrCloneSource)
			}
			res, srcContent, err := probe(ctx, tx, src)
			if err != nil {
				return err
			}
			if res != Served {
				return fmt.Errorf("clone source %s: %w", cloneSource, ErrCloneSource)
			}
			content = srcContent
		}
		port, err = store.FreePort(ctx, tx, datasetID)
		if err != nil {
			return err
		}
		if err := store.CreateAgentRegion(ctx, tx, datasetID, regionID, port, cloneSource); err != nil {
			return err
		}
		return store.SetAgentRegionContent(ctx, tx, datasetID, regionID, content)
	})
	return uint16(port), err
}

// DeleteRegion destroys a region. Unknown regions, destroyed regions and a
// gone agent are success.
func (s *Sim) DeleteRegion(ctx context.Context, datasetID, regionID uuid.UUID) error {
	if err := s.faults.apply(ctx, OpDeleteRegion, datasetID); err != nil {
		return err
	}
	return s.inTx(ctx, datasetID, true, func(tx pgx.Tx) error {
		r, found, err := store.GetAgentRegion(ctx, tx, datasetID, regionID)
		if err != nil || !found || r.State == store.AgentDestroyed {
			return err
		}
		n, err := store.LiveAgentSnapshots(ctx, tx, datasetID, regionID)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("region %s: %w", regionID, ErrHasSnapshots)
		}
		return store.DestroyAgentRegion(ctx, tx, datasetID, regionID)
	})
}

// CreateSnapshot takes a ZFS snapshot of a created region. Idempotent.
func (s *Sim) CreateSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	if err := s.faults.apply(ctx, OpCreateSnapshot, datasetID); err != nil {
		return err
	}
	return s.inTx(ctx, datasetID, false, func(tx pgx.Tx) error {
		r, found, err := store.GetAgentRegion(ctx, tx, datasetID, regionID)
		if err != nil {
			return err
		}
		if !found || r.State != store.AgentCreated {
			return fmt.Errorf("region %s: %w", regionID, ErrNoRegion)
		}
		snap, found, err := store.GetAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
		if err != nil {
			return err
		}
		if found {
			if snap.State == store.AgentDestroyed {
				return fmt.Errorf("snapshot %s of region %s: %w", snapshotID, regionID, ErrDestroyed)
			}
			return nil
		}
		if err := store.CreateAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID); err != nil {
			return err
		}
		return store.SnapshotAgentRegionContent(ctx, tx, datasetID, regionID, snapshotID)
	})
}

// RunningSnapshot starts (or finds) the read-only downstairs serving a
// snapshot and returns its port.
func (s *Sim) RunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) (uint16, error) {
	var port int32
	err := s.inTx(ctx, datasetID, false, func(tx pgx.Tx) error {
		snap, found, err := store.GetAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
		if err != nil {
			return err
		}
		if !found || snap.State != store.AgentCreated {
			return fmt.Errorf("snapshot %s of region %s: %w", snapshotID, regionID, ErrNoSnapshot)
		}
		switch snap.RunningState {
		case store.AgentCreated:
			port = snap.RunningPort
			return nil
		case store.AgentDestroyed:
			return fmt.Errorf("running snapshot %s of region %s: %w", snapshotID, regionID, ErrDestroyed)
		}
		port, err = store.FreePort(ctx, tx, datasetID)
		if err != nil {
			return err
		}
		return store.StartRunningSnapshot(ctx, tx, datasetID, regionID, snapshotID, port)
	})
	return uint16(port), err
}

// DeleteRunningSnapshot stops a running snapshot. Unknown ones and a gone
// agent are success.
func (s *Sim) DeleteRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	if err := s.faults.apply(ctx, OpDeleteSnapshot, datasetID); err != nil {
		return err
	}
	return s.inTx(ctx, datasetID, true, func(tx pgx.Tx) error {
		return store.StopRunningSnapshot(ctx, tx, datasetID, regionID, snapshotID)
	})
}

// DeleteSnapshot destroys a ZFS snapshot whose running snapshot is
// stopped. Unknown ones and a gone agent are success.
func (s *Sim) DeleteSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	return s.inTx(ctx, datasetID, true, func(tx pgx.Tx) error {
		snap, found, err := store.GetAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
		if err != nil || !found {
			return err
		}
		if snap.RunningState == store.AgentCreated {
			return fmt.Errorf("snapshot %s of region %s: %w", snapshotID, regionID, ErrRunning)
		}
		return store.DestroyAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
	})
}

// Probe says whether a live region or running snapshot serves addr and,
// when one does, the content identity it serves.
func (s *Sim) Probe(ctx context.Context, addr netip.AddrPort) (ProbeResult, string, error) {
	return probe(ctx, s.pool, addr)
}

func probe(ctx context.Context, q db.Querier, addr netip.AddrPort) (ProbeResult, string, error) {
	res, obj, err := resolve(ctx, q, addr)
	return res, obj.Content, err
}

// resolve says what serves addr: the object when it is Served.
func resolve(ctx context.Context, q db.Querier, addr netip.AddrPort) (ProbeResult, store.ServedObject, error) {
	datasetID, inService, found, err := store.DatasetByIP(ctx, q, addr.Addr())
	if err != nil {
		return 0, store.ServedObject{}, err
	}
	if !found {
		return Destroyed, store.ServedObject{}, nil
	}
	if !inService {
		return Unreachable, store.ServedObject{}, nil
	}
	obj, used, err := store.ServedAt(ctx, q, datasetID, int32(addr.Port()))
	if err != nil {
		return 0, store.ServedObject{}, err
	}
	if used {
		return Served, obj, nil
	}
	return Destroyed, store.ServedObject{}, nil
}
