package store

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
)

const regionSelect = `
	SELECT r.id, r.dataset_id, r.allocated_for, r.block_size, r.blocks_per_extent, r.extent_count,
		r.read_only, coalesce(r.port, 0), host(d.ip), z.sled_id, z.physical_disk_id, r.time_created, pd.policy
	FROM region r
	JOIN crucible_dataset d ON d.id = r.dataset_id
	JOIN zpool z ON z.id = d.zpool_id
	JOIN physical_disk pd ON pd.id = z.physical_disk_id`

func scanRegions(rows pgx.Rows, err error) ([]Region, error) {
	if err != nil {
		return nil, fmt.Errorf("query regions: %w", err)
	}
	defer rows.Close()
	var out []Region
	for rows.Next() {
		var r Region
		var ip string
		if err := rows.Scan(&r.ID, &r.DatasetID, &r.AllocatedFor, &r.BlockSize, &r.BlocksPerExtent,
			&r.ExtentCount, &r.ReadOnly, &r.Port, &ip, &r.SledID, &r.DiskID, &r.TimeCreated, &r.DiskPolicy); err != nil {
			return nil, fmt.Errorf("scan region: %w", err)
		}
		if r.IP, err = netip.ParseAddr(ip); err != nil {
			return nil, fmt.Errorf("scan region: %w", err)
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// GetRegions returns the regions with the given ids that exist, in the
// order of ids.
func GetRegions(ctx context.Context, q db.Querier, ids []uuid.UUID) ([]Region, error) {
	rs, err := scanRegions(q.Query(ctx, regionSelect+` WHERE r.id = ANY($1)`, ids))
	if err != nil {
		return nil, err
	}
	byID := make(map[uuid.UUID]Region, len(rs))
	for _, r := range rs {
		byID[r.ID] = r
	}
	out := make([]Region, 0, len(rs))
	for _, id := range ids {
		if r, ok := byID[id]; ok {
			out = append(out, r)
			delete(byID, id)
		}
	}
	return out, nil
}

// GetRegion returns one region or ErrNotFound.
func GetRegion(ctx context.Context, q db.Querier, id uuid.UUID) (Region, error) {
	rs, err := GetRegions(ctx, q, []uuid.UUID{id})
	if err != nil {
		return Region{}, err
	}
	if len(rs) == 0 {
		return Region{}, fmt.Errorf("region %s: %w", id, ErrNotFound)
	}
	return rs[0], nil
}

// RegionFilter narrows ListRegions; zero values do not filter.
type RegionFilter struct {
	AllocatedFor uuid.UUID
	DatasetID    uuid.UUID
	// AllocatedForAny, when not empty, keeps regions allocated for any of
	// these volumes.
	AllocatedForAny []uuid.UUID
}

// ListRegions pages through regions ordered by id, after `after`.
func ListRegions(ctx context.Context, q db.Querier, f RegionFilter, after uuid.UUID, limit int) ([]Region, error) {
	return scanRegions(q.Query(ctx, regionSelect+`
		WHERE ($1::uuid IS NULL OR r.allocated_for = $1)
		  AND ($2::uuid IS NULL OR r.dataset_id = $2)
		  AND r.id > $3
		  AND (cardinality($5::uuid[]) = 0 OR r.allocated_for = ANY($5))
		ORDER BY r.id LIMIT $4`, nullUUID(f.AllocatedFor), nullUUID(f.DatasetID), after, limit, nonNil(f.AllocatedForAny)))
}

// SetRegionPort records the port the agent assigned. Setting the same port
// again is fine; a different one is ErrConflict; a missing region is
// ErrNotFound.
func SetRegionPort(ctx context.Context, q db.Querier, id uuid.UUID, port int32) error {
	var current *int32
	err := q.QueryRow(ctx, `SELECT port FROM region WHERE id = $1 FOR UPDATE`, id).Scan(&current)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("region %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("set region port: %w", err)
	}
	if current != nil {
		if *current != port {
			return fmt.Errorf("region %s already has port %d, agent reported %d: %w", id, *current, port, ErrConflict)
		}
		return nil
	}
	if _, err := q.Exec(ctx, `UPDATE region SET port = $2 WHERE id = $1 AND port IS NULL`, id, port); err != nil {
		return fmt.Errorf("set region port: %w", err)
	}
	return nil
}

// RegionSnapshotCount counts the region snapshots of a region.
func RegionSnapshotCount(ctx context.Context, q db.Querier, id uuid.UUID) (int, error) {
	var n int
	if err := q.QueryRow(ctx, `SELECT count(*) FROM region_snapshot WHERE region_id = $1`, id).Scan(&n); err != nil {
		return 0, fmt.Errorf("count region snapshots: %w", err)
	}
	return n, nil
}

// DeleteRegion removes a region row and recomputes its dataset's size_used
// as the sum of the remaining reservations (no decrement, so no drift).
// deleted is false for an unknown region. A region that still has region
// snapshots is ErrPrecondition.
func DeleteRegion(ctx context.Context, q db.Querier, id uuid.UUID) (deleted bool, err error) {
	n, err := RegionSnapshotCount(ctx, q, id)
	if err != nil {
		return false, err
	}
	if n > 0 {
		return false, fmt.Errorf("region %s still has %d region snapshots: %w", id, n, ErrPrecondition)
	}
	var datasetID uuid.UUID
	err = q.QueryRow(ctx, `DELETE FROM region WHERE id = $1 RETURNING dataset_id`, id).Scan(&datasetID)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("delete region: %w", err)
	}
	if err := RecomputeSizeUsed(ctx, q, datasetID); err != nil {
		return false, err
	}
	return true, nil
}

// RecomputeSizeUsed sets a dataset's size_used to the sum of its regions'
// reservations.
func RecomputeSizeUsed(ctx context.Context, q db.Querier, datasetID uuid.UUID) error {
	if _, err := q.Exec(ctx, `
		UPDATE crucible_dataset d
		SET size_used = (SELECT coalesce(sum(r.reserved_bytes), 0) FROM region r WHERE r.dataset_id = d.id)
		WHERE d.id = $1`, datasetID); err != nil {
		return fmt.Errorf("recompute size_used: %w", err)
	}
	return nil
}

// expungedRegionsSQL walks expunged disk → zpool → dataset → regions.
const expungedRegionsSQL = regionSelect + `
	WHERE pd.policy = 'expunged' AND z.time_deleted IS NULL AND d.time_deleted IS NULL
	  AND r.read_only = $1
	ORDER BY r.id OFFSET $2 LIMIT $3`

// ListExpungedRegions lists read-only or read/write regions on expunged
// disks, by id, with offset paging.
func ListExpungedRegions(ctx context.Context, q db.Querier, readOnly bool, offset, limit int) ([]Region, error) {
	return scanRegions(q.Query(ctx, expungedRegionsSQL, readOnly, offset, limit))
}

// ListCloneSourceRegions lists the read-only regions allocated for a volume
// that are ensured and on in-service disks.
func ListCloneSourceRegions(ctx context.Context, q db.Querier, volumeID uuid.UUID) ([]Region, error) {
	return scanRegions(q.Query(ctx, regionSelect+`
		JOIN sled s ON s.id = pd.sled_id
		WHERE r.allocated_for = $1 AND r.read_only AND r.port IS NOT NULL
		  AND pd.policy = 'in_service' AND s.policy = 'in_service'
		ORDER BY r.id`, volumeID))
}

// nonNil turns a nil id list into an empty array parameter.
func nonNil(v []uuid.UUID) []uuid.UUID {
	if v == nil {
		return []uuid.UUID{}
	}
	return v
}
