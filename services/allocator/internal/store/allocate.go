package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
)

// Allocation is the input of the allocation statement.
type Allocation struct {
	VolumeID uuid.UUID
	// SnapshotID, when not Nil, excludes the zpools (and, with distinct
	// sleds, the sleds) holding region snapshots of that snapshot.
	SnapshotID      uuid.UUID
	BlockSize       int64
	BlocksPerExtent int64
	ExtentCount     int64
	ReadOnly        bool
	DistinctSleds   bool
	// Seed orders candidates by md5(id || seed).
	Seed string
	// Redundancy is the total number of regions the volume should have.
	Redundancy int
	// NewRegionIDs are the ids of regions this call may create, in order.
	NewRegionIDs []uuid.UUID
	// ExcludeDiskIDs are treated as expunged (dry runs that preview an
	// expunge).
	ExcludeDiskIDs []uuid.UUID
	// ExcludeSledIDs get no new region (the orchestrator's per-destination
	// rebuild budget).
	ExcludeSledIDs []uuid.UUID
}

// Reserved is what a region of the allocation's geometry reserves on its
// dataset: the requested size plus the agent's 25 %. Callers validate the
// geometry first so this cannot overflow.
func (a Allocation) Reserved() int64 {
	requested := a.BlockSize * a.BlocksPerExtent * a.ExtentCount
	return requested + requested/4
}

// Guard names: the sentinels the allocation statement fails with.
const (
	GuardSpace          = "not enough space"
	GuardDatasets       = "not enough datasets"
	GuardUniqueZpools   = "not enough unique zpools"
	GuardNewRegionIDs   = "not enough new_region_ids"
	guardSentinelPrefix = "not enough "
)

// GuardError is a failed allocation guard. Its text is what the caller is
// told, and its kind (Unwrap) the code: fewer new_region_ids than regions
// to create is the caller's mistake, any other guard is not enough storage.
type GuardError struct{ Guard string }

func (e *GuardError) Error() string {
	if e.Guard == GuardNewRegionIDs {
		return "new_region_ids: fewer ids than regions to create"
	}
	return "not enough storage: " + e.Guard
}

func (e *GuardError) Unwrap() error {
	if e.Guard == GuardNewRegionIDs {
		return apierr.Invalid
	}
	return apierr.Exhausted
}

// AllocatedRegion is one region of the volume after an allocation.
type AllocatedRegion struct {
	ID      uuid.UUID
	Created bool
}

// allocateSQL is the whole allocation as one statement, so that reading
// usage, choosing datasets, inserting regions and charging datasets is one
// atomic step. The guard CTE turns a failed check into a cast of a sentinel
// string to boolean, which aborts the statement with the sentinel in the
// error message; the CASE is not constant (it reads subqueries), so the
// planner cannot fold it away early, and its WHEN order fixes which guard
// is reported. The chosen datasets are locked in id order (locked) before
// they are charged, so concurrent allocations wait for each other instead
// of deadlocking; under REPEATABLE READ a dataset charged by another
// allocation since our snapshot makes the lock fail with a serialization
// error and the caller retries with fresh usage.
//
// $1 volume, $2 snapshot (nullable), $3 block size, $4 blocks per extent,
// $5 extent count, $6 read-only, $7 distinct sleds, $8 seed, $9 redundancy,
// $10 new region ids, $11 reserved bytes per region, $12 disks to exclude,
// $13 sleds to exclude.
const allocateSQL = `
WITH
old_regions AS (
	SELECT r.id, d.zpool_id
	FROM region r JOIN crucible_dataset d ON d.id = r.dataset_id
	WHERE r.allocated_for = $1
),
existing_zpools AS (
	SELECT zpool_id FROM old_regions
	UNION
	SELECT d.zpool_id
	FROM region_snapshot rs JOIN crucible_dataset d ON d.id = rs.dataset_id
	WHERE rs.snapshot_id = $2::uuid
),
existing_sleds AS (
	SELECT DISTINCT z.sled_id FROM existing_zpools e JOIN zpool z ON z.id = e.zpool_id
),
candidate_zpools AS (
	SELECT DISTINCT ON (CASE WHEN $7::boolean THEN z.sled_id ELSE z.id END)
		z.id AS zpool_id
	FROM zpool z
	JOIN physical_disk pd ON pd.id = z.physical_disk_id
	JOIN sled s ON s.id = pd.sled_id
	JOIN crucible_dataset d ON d.zpool_id = z.id
	WHERE z.time_deleted IS NULL
	  AND s.policy = 'in_service' AND s.state = 'active'
	  AND pd.policy = 'in_service' AND pd.state = 'active'
	  AND pd.id <> ALL($12::uuid[])
	  AND s.id <> ALL($13::uuid[])
	  AND d.time_deleted IS NULL AND NOT d.no_provision
	  AND d.size_used + $11::bigint <= d.capacity
	  AND z.id NOT IN (SELECT zpool_id FROM existing_zpools)
	  AND (NOT $7::boolean OR z.sled_id NOT IN (SELECT sled_id FROM existing_sleds))
	ORDER BY CASE WHEN $7::boolean THEN z.sled_id ELSE z.id END, md5(z.id::text || $8::text)
),
candidate_datasets AS (
	SELECT DISTINCT ON (d.zpool_id) d.id, d.zpool_id
	FROM crucible_dataset d JOIN candidate_zpools c ON c.zpool_id = d.zpool_id
	WHERE d.time_deleted IS NULL AND NOT d.no_provision
	  AND d.size_used + $11::bigint <= d.capacity
	ORDER BY d.zpool_id, md5(d.id::text || $8::text)
),
shuffled_datasets AS (
	SELECT id, zpool_id, row_number() OVER (ORDER BY md5(id::text || $8::text), id) AS n
	FROM candidate_datasets
),
candidate_regions AS (
	SELECT ($10::uuid[])[n] AS id, id AS dataset_id, zpool_id
	FROM shuffled_datasets
	WHERE n <= $9::int - (SELECT count(*) FROM old_regions)
),
verdict AS (
	SELECT CASE
		WHEN (SELECT count(*) FROM old_regions) >= $9::int THEN 'FALSE'
		WHEN coalesce(cardinality($10::uuid[]), 0) < $9::int - (SELECT count(*) FROM old_regions)
			THEN 'not enough new_region_ids'
		WHEN (SELECT count(*) FROM candidate_zpools)
			+ (SELECT count(DISTINCT zpool_id) FROM old_regions) < $9::int
			THEN 'not enough space'
		WHEN (SELECT count(*) FROM candidate_regions) + (SELECT count(*) FROM old_regions) < $9::int
			THEN 'not enough datasets'
		WHEN (SELECT count(DISTINCT zpool_id) FROM (
				SELECT zpool_id FROM old_regions UNION ALL SELECT zpool_id FROM candidate_regions) u) < $9::int
			THEN 'not enough unique zpools'
		ELSE 'TRUE'
	END AS v
),
do_insert AS (
	SELECT CAST(v AS boolean) AS ok FROM verdict
),
locked AS MATERIALIZED (
	SELECT d.id
	FROM crucible_dataset d
	WHERE d.id IN (SELECT dataset_id FROM candidate_regions) AND (SELECT ok FROM do_insert)
	ORDER BY d.id
	FOR NO KEY UPDATE
),
inserted AS (
	INSERT INTO region (id, dataset_id, allocated_for, block_size, blocks_per_extent, extent_count, read_only)
	SELECT id, dataset_id, $1, $3, $4, $5, $6
	FROM candidate_regions
	WHERE (SELECT ok FROM do_insert)
	RETURNING id, dataset_id, reserved_bytes
),
charged AS (
	UPDATE crucible_dataset d SET size_used = d.size_used + i.reserved_bytes
	FROM inserted i JOIN locked l ON l.id = i.dataset_id
	WHERE d.id = i.dataset_id
	RETURNING d.id
)
SELECT id, false FROM old_regions
UNION ALL
SELECT id, true FROM inserted`

// Allocate runs the allocation statement. It returns every region of the
// volume, marking the ones it created; a *GuardError when a guard fails
// (nothing is written then); ErrConflict when a new region id already
// exists.
func Allocate(ctx context.Context, q db.Querier, a Allocation) ([]AllocatedRegion, error) {
	ids := a.NewRegionIDs
	if ids == nil {
		ids = []uuid.UUID{}
	}
	exclude := a.ExcludeDiskIDs
	if exclude == nil {
		exclude = []uuid.UUID{}
	}
	excludeSleds := a.ExcludeSledIDs
	if excludeSleds == nil {
		excludeSleds = []uuid.UUID{}
	}
	rows, err := q.Query(ctx, allocateSQL,
		a.VolumeID, nullUUID(a.SnapshotID), a.BlockSize, a.BlocksPerExtent, a.ExtentCount, a.ReadOnly,
		a.DistinctSleds, a.Seed, a.Redundancy, ids, a.Reserved(), exclude, excludeSleds)
	if err != nil {
		return nil, mapAllocateError(err)
	}
	defer rows.Close()
	var out []AllocatedRegion
	for rows.Next() {
		var r AllocatedRegion
		if err := rows.Scan(&r.ID, &r.Created); err != nil {
			return nil, mapAllocateError(err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, mapAllocateError(err)
	}
	return out, nil
}

// mapAllocateError recognises the sentinel casts (invalid_text_representation
// carrying the guard's text) and duplicate region ids.
func mapAllocateError(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if pgErr.Code == "22P02" && strings.Contains(pgErr.Message, guardSentinelPrefix) {
			for _, g := range []string{GuardSpace, GuardDatasets, GuardUniqueZpools, GuardNewRegionIDs} {
				if strings.Contains(pgErr.Message, `"`+g+`"`) {
					return &GuardError{Guard: g}
				}
			}
		}
		if db.IsUniqueViolation(err, "region_pkey") {
			return fmt.Errorf("a new region id already exists: %w", ErrConflict)
		}
	}
	return fmt.Errorf("allocate regions: %w", err)
}
