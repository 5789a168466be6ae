// Package store is the volume-service's SQL: volumes, the target registry,
// the reference-count ledger (volume_resource_usage) and the volume→target
// index (volume_target). Every mutating operation is one SERIALIZABLE
// transaction fenced by the leader's epoch (fence.InTx), so counts, target
// states, rw ownership and VCR rewrites always change together.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/vcr"
)

// Store is the volume-service database.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a Store over pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Store errors carry an apierr kind, whose code the caller gets (apierr's
// rule). Messages name ids and addresses, never key material.

func invalidArgument(format string, args ...any) error {
	return apierr.Errorf(apierr.Invalid, format, args...)
}

func notFound(format string, args ...any) error {
	return apierr.Errorf(apierr.NotFound, format, args...)
}

func failedPrecondition(format string, args ...any) error {
	return apierr.Errorf(apierr.Precondition, format, args...)
}

func internal(format string, args ...any) error {
	return apierr.Errorf(apierr.Internal, format, args...)
}

// TargetKind is what a registered target is.
type TargetKind string

// Target kinds.
const (
	KindRWRegion       TargetKind = "RW_REGION"
	KindRORegion       TargetKind = "RO_REGION"
	KindRegionSnapshot TargetKind = "REGION_SNAPSHOT"
)

// ReadOnly reports whether the kind is a shared, reference-counted target.
func (k TargetKind) ReadOnly() bool { return k == KindRORegion || k == KindRegionSnapshot }

// TargetState is a registered target's lifecycle state.
type TargetState string

// Target states.
const (
	StatePending  TargetState = "PENDING"
	StateActive   TargetState = "ACTIVE"
	StateDeleting TargetState = "DELETING"
)

// Target is a registry row. Zero uuids and "" mean "not set".
type Target struct {
	ID            uuid.UUID
	Kind          TargetKind
	State         TargetState
	RegionID      uuid.UUID
	DatasetID     uuid.UUID
	Address       string
	SnapshotID    uuid.UUID
	OwnerVolumeID uuid.UUID
	// RefCount is the number of usage rows naming the target; filled by
	// the reads that document it.
	RefCount int64
}

const targetCols = `target_id, kind, state, region_id, dataset_id, address, snapshot_id, owner_volume_id`

// targetColsT is targetCols qualified by the alias t.
const targetColsT = `t.target_id, t.kind, t.state, t.region_id, t.dataset_id, t.address, t.snapshot_id, t.owner_volume_id`

// refCountColumn is the reference-count column of a target query: the
// number of usage rows naming targetCol, or 0 when not asked for (counting
// costs one read per reference).
func refCountColumn(count bool, targetCol string) string {
	if !count {
		return `0::bigint`
	}
	return `(SELECT count(*) FROM volume_resource_usage u WHERE u.target_id = ` + targetCol + `)`
}

func scanTarget(row pgx.Row, extra ...any) (Target, error) {
	var t Target
	var dataset, snapshot, owner uuid.NullUUID
	var addr *string
	dest := append([]any{&t.ID, &t.Kind, &t.State, &t.RegionID, &dataset, &addr, &snapshot, &owner}, extra...)
	if err := row.Scan(dest...); err != nil {
		return Target{}, err
	}
	t.DatasetID = dataset.UUID
	t.SnapshotID = snapshot.UUID
	t.OwnerVolumeID = owner.UUID
	if addr != nil {
		t.Address = *addr
	}
	return t, nil
}

// Volume is a stored volume.
type Volume struct {
	ID          uuid.UUID
	TimeCreated time.Time
	// TimeDeleted is set once soft-deleted.
	TimeDeleted *time.Time
	VCR         *vcr.VCR
	// Targets are the registered targets the VCR names, in VCR order.
	Targets []Target
	// Purpose is why the volume exists, fixed at creation.
	Purpose Purpose
}

// Purpose is why a volume exists.
type Purpose string

// Volume purposes (the column's CHECK lists the same).
const (
	// PurposeData: a disk, snapshot or image, made by a lifecycle saga.
	PurposeData Purpose = "data"
	// PurposeStash: a replacement's stash, holding the reference a swap
	// took from another volume. Never stepped.
	PurposeStash Purpose = "stash"
	// PurposeReference: keeps a replacement's new target alive.
	PurposeReference Purpose = "reference"
)

// SoftDeleted reports whether the volume is soft-deleted.
func (v *Volume) SoftDeleted() bool { return v.TimeDeleted != nil }

// inTx runs a mutating transaction, fenced.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return fence.InTx(ctx, s.pool, fn)
}

// readTx runs a read-only transaction (snapshot of one moment).
func (s *Store) readTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return db.InTxOpts(ctx, s.pool, db.TxOptions{ReadOnly: true, IsoLevel: pgx.RepeatableRead}, fn)
}

// loadVolume reads a volume row (soft-deleted included); ok=false if missing.
func loadVolume(ctx context.Context, q db.Querier, id uuid.UUID) (Volume, bool, error) {
	return scanVolume(q.QueryRow(ctx, loadVolumeSQL, id), id)
}

const loadVolumeSQL = `SELECT id, time_created, time_deleted, data, purpose FROM volume WHERE id = $1`

func scanVolume(row pgx.Row, id uuid.UUID) (Volume, bool, error) {
	var v Volume
	var data []byte
	err := row.Scan(&v.ID, &v.TimeCreated, &v.TimeDeleted, &data, &v.Purpose)
	if errors.Is(err, pgx.ErrNoRows) {
		return Volume{}, false, nil
	}
	if err != nil {
		return Volume{}, false, fmt.Errorf("load volume %s: %w", id, err)
	}
	v.VCR, err = vcr.Decode(data)
	if err != nil {
		return Volume{}, false, internal("volume %s: stored VCR undecodable: %v", id, err)
	}
	return v, true, nil
}

func writeVCR(ctx context.Context, tx pgx.Tx, id uuid.UUID, v *vcr.VCR, onlyLive bool) error {
	data, err := vcr.Encode(v)
	if err != nil {
		return internal("volume %s: encode VCR: %v", id, err)
	}
	sql := `UPDATE volume SET data = $2 WHERE id = $1`
	if onlyLive {
		sql += ` AND time_deleted IS NULL`
	}
	tag, err := tx.Exec(ctx, sql, id, data)
	if err != nil {
		return fmt.Errorf("write VCR of %s: %w", id, err)
	}
	if tag.RowsAffected() != 1 {
		return failedPrecondition("volume %s does not exist or is soft-deleted", id)
	}
	return nil
}

// resolveAddresses maps each canonical address to the one non-deleting
// target serving it. PENDING targets have no address, so only ACTIVE ones
// resolve.
func resolveAddresses(ctx context.Context, q db.Querier, addrs []string) (map[string]Target, error) {
	out := make(map[string]Target, len(addrs))
	if len(addrs) == 0 {
		return out, nil
	}
	rows, err := q.Query(ctx, `SELECT `+targetCols+` FROM target WHERE address = ANY($1) AND state <> 'DELETING'`, addrs)
	if err != nil {
		return nil, fmt.Errorf("resolve addresses: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		t, err := scanTarget(rows)
		if err != nil {
			return nil, err
		}
		out[t.Address] = t
	}
	return out, rows.Err()
}

func uniqueStrings(in []string) []string {
	seen := make(map[string]bool, len(in))
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// indexEntry is one volume_target row.
type indexEntry struct {
	target   uuid.UUID
	readOnly bool
}

// resolveVCR resolves every target a live volume's VCR names: read-only
// targets to ACTIVE read-only targets, rw targets to ACTIVE rw regions owned
// by volumeID. It returns the index rows and the read-only target ids, one
// per occurrence (the usage rows).
func resolveVCR(ctx context.Context, q db.Querier, volumeID uuid.UUID, v *vcr.VCR) ([]indexEntry, []uuid.UUID, error) {
	refs := vcr.AllTargets(v)
	addrs := make([]string, 0, len(refs))
	for _, r := range refs {
		c, err := vcr.Canonical(r.Address)
		if err != nil {
			return nil, nil, internal("volume %s: target %q: %v", volumeID, r.Address, err)
		}
		addrs = append(addrs, c)
	}
	resolved, err := resolveAddresses(ctx, q, uniqueStrings(addrs))
	if err != nil {
		return nil, nil, err
	}
	var index []indexEntry
	var usage []uuid.UUID
	inIndex := map[uuid.UUID]bool{}
	for i, r := range refs {
		a := addrs[i]
		t, ok := resolved[a]
		switch {
		case !ok && r.ReadOnly:
			return nil, nil, failedPrecondition("read-only target %s does not resolve to a registered active target", a)
		case !ok:
			return nil, nil, failedPrecondition("rw target %s does not resolve to a registered active rw region", a)
		case r.ReadOnly && !t.Kind.ReadOnly():
			return nil, nil, failedPrecondition("read-only target %s is registered as rw region %s", a, t.ID)
		case !r.ReadOnly && t.Kind != KindRWRegion:
			return nil, nil, failedPrecondition("rw target %s is registered as read-only target %s", a, t.ID)
		case !r.ReadOnly && t.OwnerVolumeID != volumeID:
			return nil, nil, failedPrecondition("rw region %s at %s is owned by volume %s, not %s", t.ID, a, t.OwnerVolumeID, volumeID)
		}
		if r.ReadOnly {
			usage = append(usage, t.ID)
		}
		if !inIndex[t.ID] {
			inIndex[t.ID] = true
			index = append(index, indexEntry{target: t.ID, readOnly: r.ReadOnly})
		}
	}
	return index, usage, nil
}

// writeIndex replaces a volume's volume_target rows.
func writeIndex(ctx context.Context, tx pgx.Tx, volumeID uuid.UUID, entries []indexEntry) error {
	if _, err := tx.Exec(ctx, `DELETE FROM volume_target WHERE volume_id = $1`, volumeID); err != nil {
		return fmt.Errorf("clear index of %s: %w", volumeID, err)
	}
	return insertIndex(ctx, tx, volumeID, entries)
}

const insertIndexSQL = `INSERT INTO volume_target (volume_id, target_id, read_only)
	SELECT $1, t, r FROM unnest($2::uuid[], $3::bool[]) AS x(t, r)`

func indexArrays(entries []indexEntry) ([]uuid.UUID, []bool) {
	ids := make([]uuid.UUID, len(entries))
	ro := make([]bool, len(entries))
	for i, e := range entries {
		ids[i], ro[i] = e.target, e.readOnly
	}
	return ids, ro
}

func insertIndex(ctx context.Context, tx pgx.Tx, volumeID uuid.UUID, entries []indexEntry) error {
	if len(entries) == 0 {
		return nil
	}
	ids, ro := indexArrays(entries)
	if _, err := tx.Exec(ctx, insertIndexSQL, volumeID, ids, ro); err != nil {
		return fmt.Errorf("write index of %s: %w", volumeID, err)
	}
	return nil
}

const insertUsageSQL = `INSERT INTO volume_resource_usage (usage_id, volume_id, target_id)
	SELECT gen_random_uuid(), $1, t FROM unnest($2::uuid[]) AS t`

func insertUsage(ctx context.Context, tx pgx.Tx, volumeID uuid.UUID, targets []uuid.UUID) error {
	if len(targets) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, insertUsageSQL, volumeID, targets); err != nil {
		return fmt.Errorf("insert usage rows of %s: %w", volumeID, err)
	}
	return nil
}

// pageLimit clamps a requested page size.
func pageLimit(n int) int {
	switch {
	case n <= 0:
		return 100
	case n > 1000:
		return 1000
	}
	return n
}
