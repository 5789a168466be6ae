// Package simagent simulates the Crucible agents, one per dataset, behind
// the allocator's agent contract (storagecp.dev/allocator/agentapi); the
// sim-agent process serves it as storage.agent.v1 (package agentserver). Their
// state lives in the allocator's database (agent_region, agent_snapshot,
// agent_port; the allocator's migrations create them) so it survives
// restarts and every allocator process on the database sees the same
// agents; each agent call is its own transaction, separate from the
// control plane's rows, because a real agent is a separate system (ensure
// is not atomic with recording the port).
package simagent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/target"
)

// Sim is the simulated agent of every dataset.
type Sim struct {
	pool *pgxpool.Pool
}

var _ agentapi.Agent = (*Sim)(nil)

// NewSim returns the agents over the allocator database.
func NewSim(pool *pgxpool.Pool) *Sim {
	return &Sim{pool: pool}
}

// inTx runs an agent call's transaction after checking its fence and
// whether the agent is there. Deletes on a gone agent succeed with
// nothing done (what was there is gone with it); other calls fail with
// agentapi.ErrGone.
func (s *Sim) inTx(ctx context.Context, datasetID uuid.UUID, goneOK bool, fn func(pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := db.InTx(ctx, s.pool, func(tx pgx.Tx) error {
			if err := fence.Check(ctx, tx); err != nil {
				return err
			}
			in, err := datasetInService(ctx, tx, datasetID)
			if err != nil {
				return err
			}
			if !in {
				if goneOK {
					return nil
				}
				return fmt.Errorf("dataset %s: %w", datasetID, agentapi.ErrGone)
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
	var port int32
	err := s.inTx(ctx, datasetID, false, func(tx pgx.Tx) error {
		r, found, err := getAgentRegion(ctx, tx, datasetID, regionID)
		if err != nil {
			return err
		}
		if found {
			if r.State == agentDestroyed {
				return fmt.Errorf("region %s: %w", regionID, agentapi.ErrDestroyed)
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
				return fmt.Errorf("clone source %q: %w", cloneSource, agentapi.ErrCloneSource)
			}
			res, srcContent, err := probe(ctx, tx, src)
			if err != nil {
				return err
			}
			if res != agentapi.Served {
				return fmt.Errorf("clone source %s: %w", cloneSource, agentapi.ErrCloneSource)
			}
			content = srcContent
		}
		port, err = freePort(ctx, tx, datasetID)
		if err != nil {
			return err
		}
		if err := createAgentRegion(ctx, tx, datasetID, regionID, port, cloneSource); err != nil {
			return err
		}
		return setAgentRegionContent(ctx, tx, datasetID, regionID, content)
	})
	return uint16(port), err
}

// DeleteRegion destroys a region. Unknown regions, destroyed regions and a
// gone agent are success.
func (s *Sim) DeleteRegion(ctx context.Context, datasetID, regionID uuid.UUID) error {
	return s.inTx(ctx, datasetID, true, func(tx pgx.Tx) error {
		r, found, err := getAgentRegion(ctx, tx, datasetID, regionID)
		if err != nil || !found || r.State == agentDestroyed {
			return err
		}
		n, err := liveAgentSnapshots(ctx, tx, datasetID, regionID)
		if err != nil {
			return err
		}
		if n > 0 {
			return fmt.Errorf("region %s: %w", regionID, agentapi.ErrHasSnapshots)
		}
		return destroyAgentRegion(ctx, tx, datasetID, regionID)
	})
}

// CreateSnapshot takes a ZFS snapshot of a created region. Idempotent.
func (s *Sim) CreateSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	return s.inTx(ctx, datasetID, false, func(tx pgx.Tx) error {
		r, found, err := getAgentRegion(ctx, tx, datasetID, regionID)
		if err != nil {
			return err
		}
		if !found || r.State != agentCreated {
			return fmt.Errorf("region %s: %w", regionID, agentapi.ErrNoRegion)
		}
		snap, found, err := getAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
		if err != nil {
			return err
		}
		if found {
			if snap.State == agentDestroyed {
				return fmt.Errorf("snapshot %s of region %s: %w", snapshotID, regionID, agentapi.ErrDestroyed)
			}
			return nil
		}
		if err := createAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID); err != nil {
			return err
		}
		return snapshotAgentRegionContent(ctx, tx, datasetID, regionID, snapshotID)
	})
}

// StartRunningSnapshot starts (or finds) the read-only downstairs serving
// a snapshot and returns its port.
func (s *Sim) StartRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) (uint16, error) {
	var port int32
	err := s.inTx(ctx, datasetID, false, func(tx pgx.Tx) error {
		snap, found, err := getAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
		if err != nil {
			return err
		}
		if !found || snap.State != agentCreated {
			return fmt.Errorf("snapshot %s of region %s: %w", snapshotID, regionID, agentapi.ErrNoSnapshot)
		}
		switch snap.RunningState {
		case agentCreated:
			port = snap.RunningPort
			return nil
		case agentDestroyed:
			return fmt.Errorf("running snapshot %s of region %s: %w", snapshotID, regionID, agentapi.ErrDestroyed)
		}
		port, err = freePort(ctx, tx, datasetID)
		if err != nil {
			return err
		}
		return startRunningSnapshot(ctx, tx, datasetID, regionID, snapshotID, port)
	})
	return uint16(port), err
}

// StopRunningSnapshot stops a running snapshot. Unknown ones and a gone
// agent are success.
func (s *Sim) StopRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	return s.inTx(ctx, datasetID, true, func(tx pgx.Tx) error {
		return stopRunningSnapshot(ctx, tx, datasetID, regionID, snapshotID)
	})
}

// DeleteSnapshot destroys a ZFS snapshot whose running snapshot is
// stopped. Unknown ones and a gone agent are success.
func (s *Sim) DeleteSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	return s.inTx(ctx, datasetID, true, func(tx pgx.Tx) error {
		snap, found, err := getAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
		if err != nil || !found {
			return err
		}
		if snap.RunningState == agentCreated {
			return fmt.Errorf("snapshot %s of region %s: %w", snapshotID, regionID, agentapi.ErrRunning)
		}
		return destroyAgentSnapshot(ctx, tx, datasetID, regionID, snapshotID)
	})
}

// probeSQL answers resolve for many addresses ($1 their IPs, $2 their
// ports). Each distinct IP (an agent: a probe names a few hundred
// addresses on a few dozen agents) is resolved to its dataset once, and
// each address is then looked up through the indexes on its own (LATERAL
// with LIMIT keeps the planner from hashing the whole agent tables, which
// a plain join did: 64,000 buffers a call on a full rack).
const probeSQL = `
		WITH a AS (
			SELECT * FROM unnest($1::inet[], $2::int[]) WITH ORDINALITY AS a(ip, port, n)),
		ds AS (
			SELECT ips.ip, d.id, d.in_service
			FROM (SELECT DISTINCT ip FROM a) ips
			CROSS JOIN LATERAL (
				SELECT d.id, pd.policy = 'in_service' AND sl.policy = 'in_service' AS in_service
				FROM crucible_dataset d
				JOIN zpool z ON z.id = d.zpool_id
				JOIN physical_disk pd ON pd.id = z.physical_disk_id
				JOIN sled sl ON sl.id = pd.sled_id
				WHERE d.ip = ips.ip
				LIMIT 1) d)
		SELECT a.n, ds.id IS NOT NULL, coalesce(ds.in_service, false), sv.used IS NOT NULL, coalesce(sv.content, '')
		FROM a
		LEFT JOIN ds ON ds.ip = a.ip
		LEFT JOIN LATERAL (
			SELECT true AS used, coalesce(sn.content, r.content, '') AS content
			FROM agent_port ap
			LEFT JOIN agent_region r ON ap.snapshot_id IS NULL
			     AND r.dataset_id = ap.dataset_id AND r.region_id = ap.region_id
			LEFT JOIN agent_snapshot sn ON sn.dataset_id = ap.dataset_id
			     AND sn.region_id = ap.region_id AND sn.snapshot_id = ap.snapshot_id
			WHERE ap.dataset_id = ds.id AND ap.port = a.port
			LIMIT 1) sv ON true
		ORDER BY a.n`

// ProbeTargets says, for each address, whether a live region or running
// snapshot serves it and, when one does, the content identity it serves:
// resolve's answer for every address, in one statement. Every running
// sim-upstairs probes all its volumes' targets each interval, so on a
// populated rack two statements per address made the simulated hardware
// the database's busiest client.
func (s *Sim) ProbeTargets(ctx context.Context, addrs []netip.AddrPort) ([]agentapi.Probe, error) {
	ips := make([]string, len(addrs))
	ports := make([]int32, len(addrs))
	for i, a := range addrs {
		ips[i], ports[i] = a.Addr().String(), int32(a.Port())
	}
	rows, err := s.pool.Query(ctx, probeSQL, ips, ports)
	if err != nil {
		return nil, fmt.Errorf("probe targets: %w", err)
	}
	out := make([]agentapi.Probe, len(addrs))
	var n int64
	var found, inService, used bool
	var content string
	_, err = pgx.ForEachRow(rows, []any{&n, &found, &inService, &used, &content}, func() error {
		if n < 1 || int(n) > len(out) {
			return fmt.Errorf("probe targets: row for address %d of %d", n, len(out))
		}
		switch {
		case !found:
			out[n-1] = agentapi.Probe{Result: agentapi.Destroyed}
		case !inService:
			out[n-1] = agentapi.Probe{Result: agentapi.Unreachable}
		case !used:
			out[n-1] = agentapi.Probe{Result: agentapi.Destroyed}
		default:
			out[n-1] = agentapi.Probe{Result: agentapi.Served, Content: content}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("probe targets: %w", err)
	}
	return out, nil
}

func probe(ctx context.Context, q db.Querier, addr netip.AddrPort) (agentapi.ProbeResult, string, error) {
	res, obj, err := resolve(ctx, q, addr)
	return res, obj.Content, err
}

// resolve says what serves addr: the object when it is agentapi.Served.
func resolve(ctx context.Context, q db.Querier, addr netip.AddrPort) (agentapi.ProbeResult, servedObject, error) {
	datasetID, inService, found, err := datasetByIP(ctx, q, addr.Addr())
	if err != nil {
		return 0, servedObject{}, err
	}
	if !found {
		return agentapi.Destroyed, servedObject{}, nil
	}
	if !inService {
		return agentapi.Unreachable, servedObject{}, nil
	}
	obj, used, err := servedAt(ctx, q, datasetID, int32(addr.Port()))
	if err != nil {
		return 0, servedObject{}, err
	}
	if used {
		return agentapi.Served, obj, nil
	}
	return agentapi.Destroyed, servedObject{}, nil
}
