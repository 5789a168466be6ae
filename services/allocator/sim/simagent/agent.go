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
	"sync"
	"time"

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
	pool   *pgxpool.Pool
	probes probeCache
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
			if err := lockAgents(ctx, tx, []uuid.UUID{datasetID}); err != nil {
				return err
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
// ports, $3 the agent version the caller already knows the address's
// answer at, or -1). The agents named (a probe names a few thousand
// addresses on a few hundred agents) are resolved to their datasets and
// versions in one join of the inventory, which is small: looked up one IP
// at a time it scanned the zpools once per agent. An address is looked up
// only when its agent is in service and its version is not the one known
// (the condition, on the outer row alone, is a one-time filter that skips
// the lookup); LATERAL with LIMIT keeps the planner from hashing the
// whole agent tables, which a plain join did: 64,000 buffers a call on a
// full rack. Each row says whether the known answer still holds
// (known), or else whether the port is used and its content.
const probeSQL = `
		WITH a AS (
			SELECT * FROM unnest($1::inet[], $2::int[], $3::int8[]) WITH ORDINALITY AS a(ip, port, known, n)),
		ds AS (
			SELECT d.ip, d.id, pd.policy = 'in_service' AND sl.policy = 'in_service' AS in_service,
			       coalesce(v.version, 0) AS version
			FROM crucible_dataset d
			JOIN zpool z ON z.id = d.zpool_id
			JOIN physical_disk pd ON pd.id = z.physical_disk_id
			JOIN sled sl ON sl.id = pd.sled_id
			LEFT JOIN agent_dataset_version v ON v.dataset_id = d.id
			WHERE d.ip IN (SELECT ip FROM a))
		SELECT a.n, ds.id IS NOT NULL, coalesce(ds.in_service, false), coalesce(ds.version, 0),
		       coalesce(ds.version = a.known, false), sv.used IS NOT NULL, coalesce(sv.content, '')
		FROM a
		LEFT JOIN ds ON ds.ip = a.ip
		LEFT JOIN LATERAL (
			SELECT true AS used, coalesce(sn.content, r.content, '') AS content
			FROM agent_port ap
			LEFT JOIN agent_region r ON ap.snapshot_id IS NULL
			     AND r.dataset_id = ap.dataset_id AND r.region_id = ap.region_id
			LEFT JOIN agent_snapshot sn ON sn.dataset_id = ap.dataset_id
			     AND sn.region_id = ap.region_id AND sn.snapshot_id = ap.snapshot_id
			WHERE ds.in_service AND ds.version <> a.known
			  AND ap.dataset_id = ds.id AND ap.port = a.port
			LIMIT 1) sv ON true
		ORDER BY a.n`

// portAnswer is what an in-service agent's port served at an agent
// version: whether something listens there, and its content.
type portAnswer struct {
	version int64
	used    bool
	content string
	read    time.Time
}

// probeCacheTTL bounds how long a port's answer is offered as known. The
// versions make the cache exact; the bound is for what they cannot see (a
// database rewound under a running sim-agent). At 10 s, a third of a
// full rack's probes (every 3 s) re-read every address.
const probeCacheTTL = time.Minute

// probeCache holds each port's last answer. Every running sim-upstairs
// probes all its volumes' targets every few hundred milliseconds, and
// almost none of them change between two probes: resolving each again was
// the simulated hardware's share of a populated rack's database, larger
// than the control plane's.
type probeCache struct {
	mu      sync.Mutex
	answers map[netip.AddrPort]portAnswer
}

// known returns the answers still offered for addrs (version -1 for none).
func (c *probeCache) known(addrs []netip.AddrPort, now time.Time) []portAnswer {
	out := make([]portAnswer, len(addrs))
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, a := range addrs {
		p, ok := c.answers[a]
		if !ok || now.Sub(p.read) > probeCacheTTL {
			p = portAnswer{version: -1}
		}
		out[i] = p
	}
	return out
}

// store records fresh answers. An answer read at an older version may
// overwrite a newer one from a concurrent probe: the next probe then
// re-reads it, and is never wrong.
func (c *probeCache) store(fresh map[netip.AddrPort]portAnswer) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.answers == nil {
		c.answers = map[netip.AddrPort]portAnswer{}
	}
	for a, p := range fresh {
		c.answers[a] = p
	}
}

// ProbeTargets says, for each address, whether a live region or running
// snapshot serves it and, when one does, the content identity it serves:
// resolve's answer for every address, in one statement. An address whose
// agent's version is the one its cached answer was read at is not looked
// up again: nothing on that agent has changed since, in the statement's
// own snapshot, so the cached answer is what a lookup would read.
func (s *Sim) ProbeTargets(ctx context.Context, addrs []netip.AddrPort) ([]agentapi.Probe, error) {
	now := time.Now()
	known := s.probes.known(addrs, now)
	ips := make([]string, len(addrs))
	ports := make([]int32, len(addrs))
	versions := make([]int64, len(addrs))
	for i, a := range addrs {
		ips[i], ports[i], versions[i] = a.Addr().String(), int32(a.Port()), known[i].version
	}
	rows, err := s.pool.Query(ctx, probeSQL, ips, ports, versions)
	if err != nil {
		return nil, fmt.Errorf("probe targets: %w", err)
	}
	out := make([]agentapi.Probe, len(addrs))
	fresh := map[netip.AddrPort]portAnswer{}
	var n, version int64
	var found, inService, unchanged, used bool
	var content string
	_, err = pgx.ForEachRow(rows, []any{&n, &found, &inService, &version, &unchanged, &used, &content}, func() error {
		if n < 1 || int(n) > len(out) {
			return fmt.Errorf("probe targets: row for address %d of %d", n, len(out))
		}
		i := n - 1
		if found && inService {
			if unchanged {
				used, content = known[i].used, known[i].content
			} else {
				fresh[addrs[i]] = portAnswer{version: version, used: used, content: content, read: now}
			}
		}
		switch {
		case !found:
			out[i] = agentapi.Probe{Result: agentapi.Destroyed}
		case !inService:
			out[i] = agentapi.Probe{Result: agentapi.Unreachable}
		case !used:
			out[i] = agentapi.Probe{Result: agentapi.Destroyed}
		default:
			out[i] = agentapi.Probe{Result: agentapi.Served, Content: content}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("probe targets: %w", err)
	}
	s.probes.store(fresh)
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
