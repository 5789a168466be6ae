package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
)

// Agent object states.
const (
	AgentCreated   = "created"
	AgentDestroyed = "destroyed"
)

// ErrNoFreePort means every port of the dataset's range is in use.
var ErrNoFreePort = apierr.New(apierr.Exhausted, "no free port on agent")

// AgentRegion is what an agent knows about a region.
type AgentRegion struct {
	State string
	Port  int32
}

// GetAgentRegion returns the agent's region; found is false if the agent
// never had it.
func GetAgentRegion(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID) (r AgentRegion, found bool, err error) {
	err = q.QueryRow(ctx, `SELECT state, port FROM agent_region WHERE dataset_id = $1 AND region_id = $2`,
		datasetID, regionID).Scan(&r.State, &r.Port)
	if errors.Is(err, pgx.ErrNoRows) {
		return AgentRegion{}, false, nil
	}
	if err != nil {
		return AgentRegion{}, false, fmt.Errorf("get agent region: %w", err)
	}
	return r, true, nil
}

// FreePort returns the lowest port of the dataset's range that nothing on
// its agent listens on right now; ports of destroyed things are reused.
func FreePort(ctx context.Context, q db.Querier, datasetID uuid.UUID) (int32, error) {
	var port int32
	err := q.QueryRow(ctx, `
		SELECT p FROM crucible_dataset d, generate_series(d.port_min, d.port_max) p
		WHERE d.id = $1
		  AND NOT EXISTS (SELECT 1 FROM agent_port ap WHERE ap.dataset_id = d.id AND ap.port = p)
		ORDER BY p LIMIT 1`, datasetID).Scan(&port)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, fmt.Errorf("dataset %s: %w", datasetID, ErrNoFreePort)
	}
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	return port, nil
}

// CreateAgentRegion records a region created on the agent at port.
func CreateAgentRegion(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID, port int32, cloneSource string) error {
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

// DestroyAgentRegion marks the region destroyed and frees its port.
func DestroyAgentRegion(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID) error {
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

// LiveAgentSnapshots counts the region's snapshots the agent still has.
func LiveAgentSnapshots(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID) (int, error) {
	var n int
	if err := q.QueryRow(ctx, `SELECT count(*) FROM agent_snapshot
		WHERE dataset_id = $1 AND region_id = $2 AND state = 'created'`, datasetID, regionID).Scan(&n); err != nil {
		return 0, fmt.Errorf("count agent snapshots: %w", err)
	}
	return n, nil
}

// AgentSnapshot is what an agent knows about a snapshot of a region.
type AgentSnapshot struct {
	State string
	// RunningState is "" when no running snapshot was ever started.
	RunningState string
	RunningPort  int32
}

// GetAgentSnapshot returns the agent's snapshot; found is false if it
// never existed.
func GetAgentSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) (s AgentSnapshot, found bool, err error) {
	err = q.QueryRow(ctx, `
		SELECT state, coalesce(running_state, ''), coalesce(running_port, 0)
		FROM agent_snapshot WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3`,
		datasetID, regionID, snapshotID).Scan(&s.State, &s.RunningState, &s.RunningPort)
	if errors.Is(err, pgx.ErrNoRows) {
		return AgentSnapshot{}, false, nil
	}
	if err != nil {
		return AgentSnapshot{}, false, fmt.Errorf("get agent snapshot: %w", err)
	}
	return s, true, nil
}

// CreateAgentSnapshot records a ZFS snapshot of a region.
func CreateAgentSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
	if _, err := q.Exec(ctx, `
		INSERT INTO agent_snapshot (dataset_id, region_id, snapshot_id, state) VALUES ($1, $2, $3, 'created')
		ON CONFLICT DO NOTHING`, datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("create agent snapshot: %w", err)
	}
	return nil
}

// StartRunningSnapshot records a running snapshot listening on port.
func StartRunningSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID, port int32) error {
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

// StopRunningSnapshot marks the running snapshot destroyed and frees its port.
func StopRunningSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
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

// DestroyAgentSnapshot marks the ZFS snapshot destroyed.
func DestroyAgentSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
	if _, err := q.Exec(ctx, `UPDATE agent_snapshot SET state = 'destroyed'
		WHERE dataset_id = $1 AND region_id = $2 AND snapshot_id = $3 AND state <> 'destroyed'`,
		datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("destroy agent snapshot: %w", err)
	}
	return nil
}
