package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
)

const regionSnapshotSelect = `
	SELECT rs.dataset_id, rs.region_id, rs.snapshot_id, rs.address, z.physical_disk_id, z.sled_id, pd.policy
	FROM region_snapshot rs
	JOIN crucible_dataset d ON d.id = rs.dataset_id
	JOIN zpool z ON z.id = d.zpool_id
	JOIN physical_disk pd ON pd.id = z.physical_disk_id`

func scanRegionSnapshots(rows pgx.Rows, err error) ([]RegionSnapshot, error) {
	if err != nil {
		return nil, fmt.Errorf("query region snapshots: %w", err)
	}
	defer rows.Close()
	var out []RegionSnapshot
	for rows.Next() {
		var s RegionSnapshot
		if err := rows.Scan(&s.DatasetID, &s.RegionID, &s.SnapshotID, &s.Address, &s.DiskID, &s.SledID, &s.DiskPolicy); err != nil {
			return nil, fmt.Errorf("scan region snapshot: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// GetRegionSnapshot returns one region snapshot or ErrNotFound.
func GetRegionSnapshot(ctx context.Context, q db.Querier, regionID, snapshotID uuid.UUID) (RegionSnapshot, error) {
	out, err := scanRegionSnapshots(q.Query(ctx, regionSnapshotSelect+`
		WHERE rs.region_id = $1 AND rs.snapshot_id = $2`, regionID, snapshotID))
	if err != nil {
		return RegionSnapshot{}, err
	}
	if len(out) == 0 {
		return RegionSnapshot{}, fmt.Errorf("region snapshot %s/%s: %w", regionID, snapshotID, ErrNotFound)
	}
	return out[0], nil
}

// InsertRegionSnapshot records a region snapshot unless it exists, and
// returns the stored row (so a replay gets the first address).
func InsertRegionSnapshot(ctx context.Context, q db.Querier, datasetID, regionID, snapshotID uuid.UUID, address string) (RegionSnapshot, error) {
	if _, err := q.Exec(ctx, `
		INSERT INTO region_snapshot (dataset_id, region_id, snapshot_id, address)
		SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM region WHERE id = $2)
		ON CONFLICT (region_id, snapshot_id) DO NOTHING`, datasetID, regionID, snapshotID, address); err != nil {
		return RegionSnapshot{}, fmt.Errorf("insert region snapshot: %w", err)
	}
	return GetRegionSnapshot(ctx, q, regionID, snapshotID)
}

// DeleteRegionSnapshot removes a row; deleted is false when there was none.
func DeleteRegionSnapshot(ctx context.Context, q db.Querier, regionID, snapshotID uuid.UUID) (deleted bool, err error) {
	tag, err := q.Exec(ctx, `DELETE FROM region_snapshot WHERE region_id = $1 AND snapshot_id = $2`, regionID, snapshotID)
	if err != nil {
		return false, fmt.Errorf("delete region snapshot: %w", err)
	}
	return tag.RowsAffected() > 0, nil
}

// RegionSnapshotsOfRegion lists a region's snapshots.
func RegionSnapshotsOfRegion(ctx context.Context, q db.Querier, regionID uuid.UUID) ([]RegionSnapshot, error) {
	return scanRegionSnapshots(q.Query(ctx, regionSnapshotSelect+`
		WHERE rs.region_id = $1 ORDER BY rs.snapshot_id`, regionID))
}

// RegionSnapshotKey identifies a region snapshot; also the paging cursor.
type RegionSnapshotKey struct {
	RegionID   uuid.UUID
	SnapshotID uuid.UUID
}

// RegionSnapshotFilter narrows ListRegionSnapshots; zero values do not
// filter.
type RegionSnapshotFilter struct {
	SnapshotID uuid.UUID
	DatasetID  uuid.UUID
	// SnapshotIDs, when not empty, keeps region snapshots of any of these
	// snapshots.
	SnapshotIDs []uuid.UUID
}

// ListRegionSnapshots pages by (region, snapshot) after `after`.
func ListRegionSnapshots(ctx context.Context, q db.Querier, f RegionSnapshotFilter, after RegionSnapshotKey, limit int) ([]RegionSnapshot, error) {
	return scanRegionSnapshots(q.Query(ctx, regionSnapshotSelect+`
		WHERE ($1::uuid IS NULL OR rs.snapshot_id = $1)
		  AND ($5::uuid IS NULL OR rs.dataset_id = $5)
		  AND (rs.region_id, rs.snapshot_id) > ($2, $3)
		  AND (cardinality($6::uuid[]) = 0 OR rs.snapshot_id = ANY($6))
		ORDER BY rs.region_id, rs.snapshot_id LIMIT $4`, nullUUID(f.SnapshotID), after.RegionID, after.SnapshotID, limit, nullUUID(f.DatasetID), nonNil(f.SnapshotIDs)))
}

// ListExpungedRegionSnapshots lists region snapshots on expunged disks.
func ListExpungedRegionSnapshots(ctx context.Context, q db.Querier, offset, limit int) ([]RegionSnapshot, error) {
	return scanRegionSnapshots(q.Query(ctx, regionSnapshotSelect+`
		WHERE pd.policy = 'expunged' AND z.time_deleted IS NULL AND d.time_deleted IS NULL
		ORDER BY rs.region_id, rs.snapshot_id OFFSET $1 LIMIT $2`, offset, limit))
}

// ListCloneSourceSnapshots lists a snapshot's region snapshots on
// in-service disks.
func ListCloneSourceSnapshots(ctx context.Context, q db.Querier, snapshotID uuid.UUID) ([]RegionSnapshot, error) {
	return scanRegionSnapshots(q.Query(ctx, regionSnapshotSelect+`
		JOIN sled s ON s.id = pd.sled_id
		WHERE rs.snapshot_id = $1 AND pd.policy = 'in_service' AND s.policy = 'in_service'
		ORDER BY rs.region_id`, snapshotID))
}

// DatasetOfRegionSnapshot finds the dataset a region snapshot lives (or
// lived) on: from its row, else its region, else the agent's record — so a
// delete can clean an agent snapshot whose row was never written.
func DatasetOfRegionSnapshot(ctx context.Context, q db.Querier, regionID, snapshotID uuid.UUID) (datasetID uuid.UUID, found bool, err error) {
	err = q.QueryRow(ctx, `
		SELECT dataset_id FROM (
			SELECT dataset_id, 1 AS pref FROM region_snapshot WHERE region_id = $1 AND snapshot_id = $2
			UNION ALL SELECT dataset_id, 2 FROM region WHERE id = $1
			UNION ALL SELECT dataset_id, 3 FROM agent_snapshot WHERE region_id = $1 AND snapshot_id = $2
		) s ORDER BY pref LIMIT 1`, regionID, snapshotID).Scan(&datasetID)
	if errors.Is(err, pgx.ErrNoRows) {
		return uuid.Nil, false, nil
	}
	if err != nil {
		return uuid.Nil, false, fmt.Errorf("dataset of region snapshot: %w", err)
	}
	return datasetID, true, nil
}
