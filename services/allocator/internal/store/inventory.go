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

// InsertSled adds a sled, idempotently on its serial: when a sled has the
// serial already, that sled is returned unchanged (provided it has the id
// asked for, if one was: id uuid.Nil accepts any). A serial another sled id
// has, or an id another serial has, is ErrConflict. newID is the new sled's
// id when id is uuid.Nil. The serial's unique index (migration 005) backs
// this against concurrent calls: the one that loses the race fails to
// serialize and its retry finds the winner's sled.
func InsertSled(ctx context.Context, q db.Querier, id, newID uuid.UUID, serial string) (Sled, error) {
	existing, err := sledBySerial(ctx, q, serial)
	switch {
	case err == nil:
		if id != uuid.Nil && existing.ID != id {
			return Sled{}, fmt.Errorf("serial: sled %q already exists with id %s: %w", serial, existing.ID, ErrConflict)
		}
		return existing, nil
	case !errors.Is(err, ErrNotFound):
		return Sled{}, err
	}
	if id == uuid.Nil {
		id = newID
	} else if other, err := GetSled(ctx, q, id); err == nil {
		return Sled{}, fmt.Errorf("sled_id: sled %s already exists with serial %q: %w", id, other.Serial, ErrConflict)
	} else if !errors.Is(err, ErrNotFound) {
		return Sled{}, err
	}
	tag, err := q.Exec(ctx, `INSERT INTO sled (id, serial) VALUES ($1, $2) ON CONFLICT DO NOTHING`, id, serial)
	if err != nil {
		return Sled{}, fmt.Errorf("insert sled: %w", err)
	}
	if tag.RowsAffected() == 0 {
		// Only a row this transaction cannot see conflicts, and under
		// SERIALIZABLE that fails the statement instead; say so anyway.
		return Sled{}, fmt.Errorf("sled %s with serial %q: added concurrently: %w", id, serial, ErrConflict)
	}
	return GetSled(ctx, q, id)
}

// sledBySerial returns the sled with a (non-empty) serial, or ErrNotFound.
func sledBySerial(ctx context.Context, q db.Querier, serial string) (Sled, error) {
	var s Sled
	err := q.QueryRow(ctx, `SELECT id, serial, policy, state, time_created FROM sled
		WHERE serial = $1 AND serial <> ''`, serial).
		Scan(&s.ID, &s.Serial, &s.Policy, &s.State, &s.TimeCreated)
	if errors.Is(err, pgx.ErrNoRows) {
		return Sled{}, fmt.Errorf("sled with serial %q: %w", serial, ErrNotFound)
	}
	if err != nil {
		return Sled{}, fmt.Errorf("get sled by serial: %w", err)
	}
	return s, nil
}

// GetSled returns a sled or ErrNotFound.
func GetSled(ctx context.Context, q db.Querier, id uuid.UUID) (Sled, error) {
	var s Sled
	err := q.QueryRow(ctx, `SELECT id, serial, policy, state, time_created FROM sled WHERE id = $1`, id).
		Scan(&s.ID, &s.Serial, &s.Policy, &s.State, &s.TimeCreated)
	if errors.Is(err, pgx.ErrNoRows) {
		return Sled{}, fmt.Errorf("sled %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Sled{}, fmt.Errorf("get sled: %w", err)
	}
	return s, nil
}

// NewDisk describes a physical disk to add.
type NewDisk struct {
	ID          uuid.UUID
	SledID      uuid.UUID
	Capacity    int64
	IP          netip.Addr
	NoProvision bool
	// Fresh ids for the zpool and dataset, used only if the disk is new.
	ZpoolID   uuid.UUID
	DatasetID uuid.UUID
}

// InsertDisk adds a physical disk with its zpool and dataset. Idempotent on
// the disk id: an existing disk on the same sled is returned unchanged; on
// another sled it is ErrConflict, as is a dataset address another disk uses.
// The sled must exist (ErrNotFound) and be in service (ErrPrecondition).
func InsertDisk(ctx context.Context, q db.Querier, d NewDisk) (Disk, error) {
	existing, err := GetDisk(ctx, q, d.ID)
	if err == nil {
		if existing.SledID != d.SledID {
			return Disk{}, fmt.Errorf("disk %s already exists on sled %s: %w", d.ID, existing.SledID, ErrConflict)
		}
		return existing, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return Disk{}, err
	}
	sled, err := GetSled(ctx, q, d.SledID)
	if err != nil {
		return Disk{}, err
	}
	if sled.Policy != PolicyInService {
		return Disk{}, fmt.Errorf("sled %s is expunged: %w", d.SledID, ErrPrecondition)
	}
	var inUse bool
	if err := q.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM crucible_dataset WHERE ip = $1::inet)`, d.IP.String()).Scan(&inUse); err != nil {
		return Disk{}, fmt.Errorf("check dataset address: %w", err)
	}
	if inUse {
		return Disk{}, fmt.Errorf("dataset address %s is used by another disk: %w", d.IP, ErrConflict)
	}
	if _, err := q.Exec(ctx, `
		WITH disk AS (
			INSERT INTO physical_disk (id, sled_id) VALUES ($1, $2) RETURNING id, sled_id
		), pool AS (
			INSERT INTO zpool (id, physical_disk_id, sled_id) SELECT $3, id, sled_id FROM disk RETURNING id
		)
		INSERT INTO crucible_dataset (id, zpool_id, ip, capacity, no_provision)
		SELECT $4, id, $5::inet, $6, $7 FROM pool`,
		d.ID, d.SledID, d.ZpoolID, d.DatasetID, d.IP.String(), d.Capacity, d.NoProvision); err != nil {
		return Disk{}, fmt.Errorf("insert disk: %w", err)
	}
	return GetDisk(ctx, q, d.ID)
}

const diskColumns = `
	pd.id, pd.sled_id, pd.policy, pd.state, z.id, d.id, host(d.ip), d.capacity, d.size_used, d.no_provision,
	(SELECT count(*) FROM region r WHERE r.dataset_id = d.id),
	(SELECT count(*) FROM region_snapshot rs WHERE rs.dataset_id = d.id)`

const diskFrom = `
	FROM physical_disk pd
	JOIN zpool z ON z.physical_disk_id = pd.id
	JOIN crucible_dataset d ON d.zpool_id = z.id`

func scanDisk(row pgx.Row) (Disk, error) {
	var d Disk
	var ip string
	err := row.Scan(&d.ID, &d.SledID, &d.Policy, &d.State, &d.ZpoolID, &d.DatasetID, &ip,
		&d.Capacity, &d.SizeUsed, &d.NoProvision, &d.RegionCount, &d.RegionSnapshotCount)
	if err != nil {
		return Disk{}, err
	}
	d.IP, err = netip.ParseAddr(ip)
	return d, err
}

// GetDisk returns a disk or ErrNotFound.
func GetDisk(ctx context.Context, q db.Querier, id uuid.UUID) (Disk, error) {
	d, err := scanDisk(q.QueryRow(ctx, `SELECT `+diskColumns+diskFrom+` WHERE pd.id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return Disk{}, fmt.Errorf("physical disk %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Disk{}, fmt.Errorf("get disk: %w", err)
	}
	return d, nil
}

// ListSleds pages through sleds ordered by id, after the id `after`
// (uuid.Nil for the first page), each with its disks counted by policy and
// state and the regions, region snapshots, capacity and use on them. One
// statement: the counts are of one snapshot of the tables.
func ListSleds(ctx context.Context, q db.Querier, after uuid.UUID, limit int) ([]SledSummary, error) {
	rows, err := q.Query(ctx, `
		WITH page AS (SELECT id, serial, policy, state, time_created FROM sled
			WHERE id > $1 ORDER BY id LIMIT $2),
		disk AS (SELECT pd.sled_id, pd.policy, pd.state, d.capacity, d.size_used,
				(SELECT count(*) FROM region r WHERE r.dataset_id = d.id) AS regions,
				(SELECT count(*) FROM region_snapshot rs WHERE rs.dataset_id = d.id) AS snapshots
			FROM physical_disk pd
			JOIN zpool z ON z.physical_disk_id = pd.id
			JOIN crucible_dataset d ON d.zpool_id = z.id
			WHERE pd.sled_id IN (SELECT id FROM page))
		SELECT p.id, p.serial, p.policy, p.state, p.time_created,
			COALESCE((SELECT sum(regions) FROM disk WHERE disk.sled_id = p.id), 0)::bigint,
			COALESCE((SELECT sum(snapshots) FROM disk WHERE disk.sled_id = p.id), 0)::bigint,
			COALESCE((SELECT sum(capacity) FROM disk WHERE disk.sled_id = p.id), 0)::bigint,
			COALESCE((SELECT sum(size_used) FROM disk WHERE disk.sled_id = p.id), 0)::bigint,
			COALESCE((SELECT array_agg(c.policy ORDER BY c.policy DESC, c.state) FROM
				(SELECT policy, state, count(*) AS n FROM disk WHERE disk.sled_id = p.id GROUP BY policy, state) c), '{}'),
			COALESCE((SELECT array_agg(c.state ORDER BY c.policy DESC, c.state) FROM
				(SELECT policy, state, count(*) AS n FROM disk WHERE disk.sled_id = p.id GROUP BY policy, state) c), '{}'),
			COALESCE((SELECT array_agg(c.n ORDER BY c.policy DESC, c.state) FROM
				(SELECT policy, state, count(*) AS n FROM disk WHERE disk.sled_id = p.id GROUP BY policy, state) c), '{}')
		FROM page p ORDER BY p.id`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("list sleds: %w", err)
	}
	defer rows.Close()
	var out []SledSummary
	for rows.Next() {
		var s SledSummary
		var policies, states []string
		var counts []int64
		if err := rows.Scan(&s.ID, &s.Serial, &s.Policy, &s.State, &s.TimeCreated,
			&s.RegionCount, &s.RegionSnapshotCount, &s.Capacity, &s.SizeUsed, &policies, &states, &counts); err != nil {
			return nil, fmt.Errorf("list sleds: %w", err)
		}
		for i := range policies {
			s.Disks = append(s.Disks, DiskCount{Policy: policies[i], State: states[i], Count: counts[i]})
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// ListDisks pages through disks ordered by id, after the id `after`
// (uuid.Nil for the first page), optionally on one sled.
//
// The region counts are one grouped pass over each table, not a count per
// disk: on a populated rack (320 disks, ~13,000 regions) the per-disk
// subqueries of diskColumns visited every region's heap page through the
// index, ~26,000 buffers a call, and the orchestrator lists the disks for
// every rw repair it plans. A sequential pass over the tables is a few
// hundred buffers, and the counts are of the statement's one snapshot as
// before. Even so the pass is over the whole rack's regions, so callers
// that need no counts (withCounts false: they are left zero) skip it; the
// orchestrator lists the disks several times per rw repair.
func ListDisks(ctx context.Context, q db.Querier, sledID, after uuid.UUID, limit int, withCounts bool) ([]Disk, error) {
	counted := `
		WITH regions AS (SELECT dataset_id, count(*) AS n FROM region GROUP BY dataset_id),
		snapshots AS (SELECT dataset_id, count(*) AS n FROM region_snapshot GROUP BY dataset_id)
		SELECT pd.id, pd.sled_id, pd.policy, pd.state, z.id, d.id, host(d.ip), d.capacity, d.size_used, d.no_provision,
			COALESCE(r.n, 0), COALESCE(s.n, 0)` + diskFrom + `
		LEFT JOIN regions r ON r.dataset_id = d.id
		LEFT JOIN snapshots s ON s.dataset_id = d.id`
	if !withCounts {
		counted = `
		SELECT pd.id, pd.sled_id, pd.policy, pd.state, z.id, d.id, host(d.ip), d.capacity, d.size_used, d.no_provision,
			0::bigint, 0::bigint` + diskFrom
	}
	rows, err := q.Query(ctx, counted+`
		WHERE ($1::uuid IS NULL OR pd.sled_id = $1) AND pd.id > $2
		ORDER BY pd.id LIMIT $3`, nullUUID(sledID), after, limit)
	if err != nil {
		return nil, fmt.Errorf("list disks: %w", err)
	}
	defer rows.Close()
	var out []Disk
	for rows.Next() {
		d, err := scanDisk(rows)
		if err != nil {
			return nil, fmt.Errorf("list disks: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// ExpungeDisk marks a disk expunged. changed is false when it already was.
// Irreversible: nothing sets the policy back.
func ExpungeDisk(ctx context.Context, q db.Querier, id uuid.UUID) (changed bool, err error) {
	tag, err := q.Exec(ctx, `UPDATE physical_disk SET policy = 'expunged' WHERE id = $1 AND policy <> 'expunged'`, id)
	if err != nil {
		return false, fmt.Errorf("expunge disk: %w", err)
	}
	if tag.RowsAffected() == 1 {
		return true, nil
	}
	if _, err := GetDisk(ctx, q, id); err != nil {
		return false, err
	}
	return false, nil
}

// ExpungeSled marks a sled and every disk on it expunged, and returns them.
func ExpungeSled(ctx context.Context, q db.Querier, id uuid.UUID) (Sled, []Disk, error) {
	if _, err := GetSled(ctx, q, id); err != nil {
		return Sled{}, nil, err
	}
	if _, err := q.Exec(ctx, `UPDATE sled SET policy = 'expunged' WHERE id = $1 AND policy <> 'expunged'`, id); err != nil {
		return Sled{}, nil, fmt.Errorf("expunge sled: %w", err)
	}
	if _, err := q.Exec(ctx, `UPDATE physical_disk SET policy = 'expunged' WHERE sled_id = $1 AND policy <> 'expunged'`, id); err != nil {
		return Sled{}, nil, fmt.Errorf("expunge sled disks: %w", err)
	}
	s, err := GetSled(ctx, q, id)
	if err != nil {
		return Sled{}, nil, err
	}
	disks, err := ListDisks(ctx, q, id, uuid.Nil, 1<<20, true)
	return s, disks, err
}
