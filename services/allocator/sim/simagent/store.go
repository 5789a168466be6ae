package simagent

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/platform/db"
)

// The agents' SQL: their state in agent_region, agent_snapshot and
// agent_port, and what they read of the allocator's inventory (whether a
// dataset is in service, which dataset an address belongs to). Functions
// take a db.Querier; the Sim owns the transactions.

// Agent object states.
const (
	agentCreated   = "created"
	agentDestroyed = "destroyed"
)

// agentRegion is what an agent knows about a region.
type agentRegion struct {
	State string
	Port  int32
}

// getAgentRegion returns the agent's region; found is false if the agent
// never had it.
func getAgentRegion(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID) (r agentRegion, found bool, err error) {
	err = q.QueryRow(ctx, `SELECT state, port FROM agent_region WHERE dataset_id = $1 AND region_id = $2`,
		datasetID, regionID).Scan(&r.State, &r.Port)
	if errors.Is(err, pgx.ErrNoRows) {
		return agentRegion{}, false, nil
	}
	if err != nil {
		return agentRegion{}, false, fmt.Errorf("get agent region: %w", err)
	}
	return r, true, nil
}

// freePort returns the lowest port of the dataset's range that nothing on
// its agent listens on right now; ports of destroyed things are reused.
func freePort(ctx context.Context, q db.Querier, datasetID uuid.UUID) (int32, error) {
	var port int32
	err := q.QueryRow(ctx, `
		SELECT p FROM crucible_dataset d, generate_series(d.port_min, d.port_max) p
		WHERE d.id = $1
		  AND NOT EXISTS (SELECT 1 FROM agent_port ap WHERE ap.dataset_id = d.id AND ap.port = p)
		ORDER BY p LIMIT 1`, datasetID).Scan(&port)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("dataset %s: %w", datasetID, agentapi.ErrNoFreePort)
	}
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	return port, nil
}

// createAgentRegion records a region created on the agent at port.
func createAgentRegion(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID, port int32, cloneSource string) error {
	if _, err := q.Exec(ctx, `INSERT INTO agent_port (dataset_id, port, region_id) VALUES ($1, $2, $3)`,
		datasetID, port, regionID); err != nil {
		return fmt.Errorf("take agent port: %w", err)
	}
	if _, err := q.Exec(ctx, `
		INSERT INTO agent_region (dataset_id, region_id, port, state, clone_source)
		VALUES ($1, $2, $3, 'created', $4)`, datasetID, regionID, port, cloneSource); err != nil {
		return fmt.Errorf("create agent region: %w", err)
	}
	return nil
}

// destroyAgentRegion marks the region destroyed and frees its port.
func destroyAgentRegion(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID) error {
	if _, err := q.Exec(ctx, `UPDATE agent_region SET state = 'destroyed'
		WHERE dataset_id = $1 AND region_id = $2 AND state <> 'destroyed'`, datasetID, regionID); err != nil {
		return fmt.Errorf("destroy agent region: %w", err)
	}
	if _, err := q.Exec(ctx, `DELETE FROM agent_port WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id IS NULL`,
		datasetID, regionID); err != nil {
		return fmt.Errorf("free agent port: %w", err)
	}
	return nil
}

// liveAgentSnapshots counts the region's snapshots the agent still has.
func liveAgentSnapshots(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID) (int, error) {
	var n int
	if err := q.QueryRow(ctx, `SELECT count(*) FROM agent_snapshot
		WHERE dataset_id = $1 AND region_id = $2 AND state = 'created'`, datasetID, regionID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count agent snapshots: %w", err)
	}
	return n, nil
}

// agentSnapshot is what an agent knows about a snapshot of a region.
type agentSnapshot struct {
	State string
	// RunningState is "" when no running snapshot was ever started.
	RunningState string
	RunningPort  int32
}

// getAgentSnapshot returns the agent's snapshot; found is false if it
// never existed.
func getAgentSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) (s agentSnapshot, found bool, err error) {
	err = q.QueryRow(ctx, `
		SELECT state, coalesce(running_state, ''), coalesce(running_port, 0)
		FROM agent_snapshot WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3`,
		datasetID, regionID, snapshotID).Scan(&s.State, &s.RunningState, &s.RunningPort)
	if errors.Is(err, pgx.ErrNoRows) {
		return agentSnapshot{}, false, nil
	}
	if err != nil {
		return agentSnapshot{}, false, fmt.Errorf("get agent snapshot: %w", err)
	}
	return s, true, nil
}

// createAgentSnapshot records a ZFS snapshot of a region.
func createAgentSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
	if _, err := q.Exec(ctx, `
		INSERT INTO agent_snapshot (dataset_id, region_id, snapshot_id, state) VALUES ($1, $2, $3, 'created')
		ON CONFLICT DO NOTHING`, datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("create agent snapshot: %w", err)
	}
	return nil
}

// startRunningSnapshot records a running snapshot listening on port.
func startRunningSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID, port int32) error {
	if _, err := q.Exec(ctx, `INSERT INTO agent_port (dataset_id, port, region_id, snapshot_id) VALUES ($1, $2, $3, $4)`,
		datasetID, port, regionID, snapshotID); err != nil {
		return fmt.Errorf("take agent port: %w", err)
	}
	if _, err := q.Exec(ctx, `UPDATE agent_snapshot SET running_state = 'created', running_port = $4
		WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3`, datasetID, regionID, snapshotID, port); err != nil {
		return fmt.Errorf("start running snapshot: %w", err)
	}
	return nil
}

// stopRunningSnapshot marks the running snapshot destroyed and frees its port.
func stopRunningSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
	if _, err := q.Exec(ctx, `UPDATE agent_snapshot SET running_state = 'destroyed'
		WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3 AND running_state = 'created'`,
		datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("stop running snapshot: %w", err)
	}
	if _, err := q.Exec(ctx, `DELETE FROM agent_port WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3`,
		datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("free agent port: %w", err)
	}
	return nil
}

// destroyAgentSnapshot marks the ZFS snapshot destroyed.
func destroyAgentSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
	if _, err := q.Exec(ctx, `UPDATE agent_snapshot SET state = 'destroyed'
		WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3 AND state <> 'destroyed'`,
		datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("destroy agent snapshot: %w", err)
	}
	return nil
}

// datasetInService reports whether the dataset's disk (and sled) is in
// service: the negation of "its agent is gone". agentapi.ErrUnknownDataset
// for an unknown dataset.
func datasetInService(ctx context.Context, q db.Querier, datasetID uuid.UUID) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `
		SELECT pd.policy = 'in_service' AND s.policy = 'in_service'
		FROM crucible_dataset d
		JOIN zpool z ON z.id = d.zpool_id
		JOIN physical_disk pd ON pd.id = z.physical_disk_id
		JOIN sled s ON s.id = pd.sled_id
		WHERE d.id = $1`, datasetID).Scan(&ok)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("dataset %s: %w", datasetID, agentapi.ErrUnknownDataset)
	}
	if err != nil {
		return false, fmt.Errorf("dataset in service: %w", err)
	}
	return ok, nil
}

// datasetByIP returns the dataset serving at ip and whether its agent is
// in service. found is false when no dataset has that address.
func datasetByIP(ctx context.Context, q db.Querier, ip netip.Addr) (datasetID uuid.UUID, inService, found bool, err error) {
	err = q.QueryRow(ctx, `
		SELECT d.id, pd.policy = 'in_service' AND s.policy = 'in_service'
		FROM crucible_dataset d
		JOIN zpool z ON z.id = d.zpool_id
		JOIN physical_disk pd ON pd.id = z.physical_disk_id
		JOIN sled s ON s.id = pd.sled_id
		WHERE d.ip = $1::inet`, ip.String()).Scan(&datasetID, &inService)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, false, false, nil
	}
	if err != nil {
		return uuid.Nil, false, false, fmt.Errorf("dataset by address: %w", err)
	}
	return datasetID, inService, true, nil
}

// lockAgents changes the versions of the given agents (datasets) in this
// transaction, in dataset order, before anything else on them changes. The
// tables' trigger changes them anyway on every write; taking them first
// and in one order keeps two transactions from each holding what the other
// waits for (one agent's version and another's row, or two agents'
// versions taken in opposite orders).
func lockAgents(ctx context.Context, q db.Querier, datasetIDs []uuid.UUID) error {
	_, err := q.Exec(ctx, `
		INSERT INTO agent_dataset_version (dataset_id, version)
		SELECT id, nextval('agent_version_seq')
		FROM (SELECT DISTINCT unnest($1::uuid[]) AS id) d ORDER BY id
		ON CONFLICT (dataset_id) DO UPDATE SET version = EXCLUDED.version`, datasetIDs)
	if err != nil {
		return fmt.Errorf("lock agents: %w", err)
	}
	return nil
}
