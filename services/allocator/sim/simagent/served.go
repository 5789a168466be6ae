package simagent

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
)

// servedObject is what listens on a port of an agent: a live region or a
// running snapshot, with the content identity it serves.
type servedObject struct {
	DatasetID uuid.UUID
	RegionID  uuid.UUID
	// SnapshotID is uuid.Nil for a region.
	SnapshotID uuid.UUID
	Content    string
	// ReadOnly: a running snapshot, or a region the control plane
	// allocated read-only (a clone made by a read-only replacement). Either
	// refuses writes, as a read-only downstairs does.
	ReadOnly bool
}

// IsSnapshot reports whether a running snapshot serves the port.
func (o servedObject) IsSnapshot() bool { return o.SnapshotID != uuid.Nil }

// servedAt returns what listens on the dataset's port; found is false when
// nothing does.
func servedAt(ctx context.Context, q db.Querier, datasetID uuid.UUID, port int32) (o servedObject, found bool, err error) {
	var snapshotID *uuid.UUID
	err = q.QueryRow(ctx, `
		SELECT ap.region_id, ap.snapshot_id, coalesce(s.content, r.content, ''),
		       ap.snapshot_id IS NOT NULL OR coalesce(reg.read_only, false)
		FROM agent_port ap
		LEFT JOIN agent_region r ON ap.snapshot_id IS NULL
		     AND r.dataset_id = ap.dataset_id AND r.region_id = ap.region_id
		LEFT JOIN agent_snapshot s ON s.dataset_id = ap.dataset_id
		     AND s.region_id = ap.region_id AND s.snapshot_id = ap.snapshot_id
		LEFT JOIN region reg ON ap.snapshot_id IS NULL AND reg.id = ap.region_id
		WHERE ap.dataset_id = $1 AND ap.port = $2`, datasetID, port).
		Scan(&o.RegionID, &snapshotID, &o.Content, &o.ReadOnly)
	if errors.Is(err, pgx.ErrNoRows) {
		return servedObject{}, false, nil
	}
	if err != nil {
		return servedObject{}, false, fmt.Errorf("served at port: %w", err)
	}
	if snapshotID != nil {
		o.SnapshotID = *snapshotID
	}
	o.DatasetID = datasetID
	return o, true, nil
}

// setAgentRegionContent records what bytes a live region now holds.
func setAgentRegionContent(ctx context.Context, q db.Querier, datasetID, regionID uuid.UUID, content string) error {
	if _, err := q.Exec(ctx, `UPDATE agent_region SET content = $3
		WHERE dataset_id = $1 AND region_id = $2 AND state = 'created'`, datasetID, regionID, content); err != nil {
		return fmt.Errorf("set agent region content: %w", err)
	}
	return nil
}

// snapshotAgentRegionContent gives a snapshot its region's content as it
// is now: a ZFS snapshot freezes the region's bytes at the moment it is
// taken, and later writes to the region do not reach it.
func snapshotAgentRegionContent(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID) error {
	if _, err := q.Exec(ctx, `UPDATE agent_snapshot s SET content = r.content
		FROM agent_region r
		WHERE s.dataset_id = $1 AND s.region_id = $2 AND s.snapshot_id = $3
		  AND r.dataset_id = s.dataset_id AND r.region_id = s.region_id`, datasetID, regionID, snapshotID); err != nil {
		return fmt.Errorf("snapshot agent region content: %w", err)
	}
	return nil
}
