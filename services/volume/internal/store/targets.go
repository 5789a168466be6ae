package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/vcr"
)

func getTarget(ctx context.Context, q db.Querier, id uuid.UUID) (Target, bool, error) {
	return scanTargetRow(q.QueryRow(ctx, getTargetSQL, id), id)
}

const getTargetSQL = `SELECT ` + targetCols + ` FROM target WHERE target_id = $1`

func scanTargetRow(row pgx.Row, id uuid.UUID) (Target, bool, error) {
	t, err := scanTarget(row)
	if errors.Is(err, pgx.ErrNoRows) {
		return Target{}, false, nil
	}
	if err != nil {
		return Target{}, false, fmt.Errorf("load target %s: %w", id, err)
	}
	return t, true, nil
}

// Registration is a target to register as PENDING.
type Registration struct {
	TargetID      uuid.UUID
	Kind          TargetKind
	RegionID      uuid.UUID
	OwnerVolumeID uuid.UUID
	SnapshotID    uuid.UUID
}

// normalize checks a registration and derives its target id: a region's is
// its region id, a region snapshot's ids.RegionSnapshotTargetID.
func (r *Registration) normalize(i int) error {
	p := fmt.Sprintf("targets[%d]", i)
	if r.RegionID == uuid.Nil {
		return invalidArgument("%s.region_id: required", p)
	}
	var want uuid.UUID
	switch r.Kind {
	case KindRWRegion, KindRORegion:
		if r.SnapshotID != uuid.Nil {
			return invalidArgument("%s.snapshot_id: only for region snapshots", p)
		}
		if r.Kind == KindRWRegion && r.OwnerVolumeID == uuid.Nil {
			return invalidArgument("%s.owner_volume_id: required for a rw region", p)
		}
		want = r.RegionID
	case KindRegionSnapshot:
		if r.SnapshotID == uuid.Nil {
			return invalidArgument("%s.snapshot_id: required for a region snapshot", p)
		}
		if r.OwnerVolumeID != uuid.Nil {
			return invalidArgument("%s.owner_volume_id: not for a region snapshot", p)
		}
		want = ids.RegionSnapshotTargetID(r.RegionID, r.SnapshotID)
	default:
		return invalidArgument("%s.kind: required", p)
	}
	if r.TargetID == uuid.Nil {
		r.TargetID = want
	}
	if r.TargetID != want {
		return invalidArgument("%s.target_id: must be %s", p, want)
	}
	return nil
}

// RegisterTargets records targets as PENDING (idempotent: an identical
// registration returns the stored target in whatever state). A region
// snapshot needs its parent region registered as a live rw region whose
// owner volume is not soft-deleted; reading that volume row here and the
// snapshot rows in SoftDeleteVolume makes the two conflict under
// SERIALIZABLE, so exactly one of them wins.
func (s *Store) RegisterTargets(ctx context.Context, regs []Registration) ([]Target, error) {
	for i := range regs {
		if err := regs[i].normalize(i); err != nil {
			return nil, err
		}
	}
	var out []Target
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		for _, r := range regs {
			t, err := registerOne(ctx, tx, r)
			if err != nil {
				return err
			}
			out = append(out, t)
		}
		return nil
	})
	return out, err
}

func registerOne(ctx context.Context, tx pgx.Tx, r Registration) (Target, error) {
	existing, ok, err := getTarget(ctx, tx, r.TargetID)
	if err != nil {
		return Target{}, err
	}
	if ok {
		if existing.Kind != r.Kind || existing.RegionID != r.RegionID || existing.SnapshotID != r.SnapshotID ||
			(r.Kind == KindRWRegion && existing.OwnerVolumeID != r.OwnerVolumeID && existing.State == StatePending) {
			return Target{}, failedPrecondition("target %s is already registered differently", r.TargetID)
		}
		return existing, nil
	}
	if r.Kind == KindRegionSnapshot {
		parent, ok, err := getTarget(ctx, tx, r.RegionID)
		if err != nil {
			return Target{}, err
		}
		if !ok {
			return Target{}, failedPrecondition("region snapshot %s: parent region %s is not registered", r.TargetID, r.RegionID)
		}
		if parent.Kind != KindRWRegion {
			return Target{}, failedPrecondition("region snapshot %s: region %s is %s; only rw regions are snapshotted", r.TargetID, r.RegionID, parent.Kind)
		}
		var deleted *time.Time
		err = tx.QueryRow(ctx, `SELECT time_deleted FROM volume WHERE id = $1`, parent.OwnerVolumeID).Scan(&deleted)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			// Owner not created yet (regions are registered before their
			// volume) — nothing can have freed the region.
		case err != nil:
			return Target{}, fmt.Errorf("owner volume of %s: %w", r.RegionID, err)
		case deleted != nil:
			return Target{}, failedPrecondition("region snapshot %s: parent region %s belongs to soft-deleted volume %s", r.TargetID, r.RegionID, parent.OwnerVolumeID)
		}
	}
	t, err := scanTarget(tx.QueryRow(ctx, `INSERT INTO target (target_id, kind, state, region_id, snapshot_id, owner_volume_id)
		VALUES ($1, $2, 'PENDING', $3, $4, $5) RETURNING `+targetCols,
		r.TargetID, r.Kind, r.RegionID, nullUUID(r.SnapshotID), nullUUID(r.OwnerVolumeID)))
	if err != nil {
		return Target{}, fmt.Errorf("register %s: %w", r.TargetID, err)
	}
	return t, nil
}

func nullUUID(u uuid.UUID) uuid.NullUUID { return uuid.NullUUID{UUID: u, Valid: u != uuid.Nil} }

// Activation is a created target's placement.
type Activation struct {
	TargetID  uuid.UUID
	DatasetID uuid.UUID
	Address   string
}

// ActivateTargets records the dataset and address of created targets and
// makes them ACTIVE. Idempotent; an ACTIVE target with another placement,
// a DELETING one, or an address another live target serves is
// FailedPrecondition.
func (s *Store) ActivateTargets(ctx context.Context, acts []Activation) ([]Target, error) {
	for i := range acts {
		a := &acts[i]
		if a.TargetID == uuid.Nil {
			return nil, invalidArgument("targets[%d].target_id: required", i)
		}
		if a.DatasetID == uuid.Nil {
			return nil, invalidArgument("targets[%d].dataset_id: required", i)
		}
		c, err := vcr.Canonical(a.Address)
		if err != nil {
			return nil, invalidArgument("targets[%d].address: %v (want \"[ipv6]:port\")", i, err)
		}
		a.Address = c
	}
	var out []Target
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		for _, a := range acts {
			t, ok, err := getTarget(ctx, tx, a.TargetID)
			if err != nil {
				return err
			}
			if !ok {
				return notFound("target %s is not registered", a.TargetID)
			}
			switch t.State {
			case StateDeleting:
				return failedPrecondition("target %s is DELETING", a.TargetID)
			case StateActive:
				if t.Address != a.Address || t.DatasetID != a.DatasetID {
					return failedPrecondition("target %s is already active at %s", a.TargetID, t.Address)
				}
				out = append(out, t)
				continue
			}
			if err := takeOverAddress(ctx, tx, a.Address); err != nil {
				return err
			}
			t, err = scanTarget(tx.QueryRow(ctx, `UPDATE target SET state = 'ACTIVE', dataset_id = $2, address = $3
				WHERE target_id = $1 AND state = 'PENDING' RETURNING `+targetCols, a.TargetID, a.DatasetID, a.Address))
			if db.IsUniqueViolation(err, "target_address_live") {
				return failedPrecondition("address %s is served by another live target", a.Address)
			}
			if err != nil {
				return fmt.Errorf("activate %s: %w", a.TargetID, err)
			}
			out = append(out, t)
		}
		return nil
	})
	return out, err
}

// takeOverAddress clears the way for a new target at addr. Agents reuse
// ports, and a freed rw region stays registered between its destruction
// and its unregistration (unregister after destroy), with no DELETING state
// to step aside in as a freed read-only target does: a disk created in
// that window got the port back and was refused. The agent handing out the
// port proves the old region destroyed; if the volume-service also finds
// it unregistrable (owner deleted, no region snapshot), its row goes now
// and the freeing saga's own unregister finds nothing left to do. Any
// other live holder refuses the address.
func takeOverAddress(ctx context.Context, tx pgx.Tx, addr string) error {
	holder, ok, err := scanTargetRow(tx.QueryRow(ctx, `SELECT `+targetCols+` FROM target WHERE address = $1 AND state <> 'DELETING'`, addr), uuid.Nil)
	if err != nil {
		return fmt.Errorf("address holder: %w", err)
	}
	if !ok {
		return nil
	}
	if holder.Kind != KindRWRegion || checkUnregister(ctx, tx, holder) != nil {
		return failedPrecondition("address %s is served by live target %s", addr, holder.ID)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM target WHERE target_id = $1`, holder.ID); err != nil {
		return fmt.Errorf("unregister %s, destroyed under address %s: %w", holder.ID, addr, err)
	}
	return nil
}

// UnregisterTargets removes destroyed targets: a read-only target when
// DELETING, or PENDING and unreferenced (undoing a registration); a rw
// region when PENDING or when its owner volume is soft- or hard-deleted,
// and never while a region snapshot of it is registered. Unknown ids are
// ignored. All or nothing.
func (s *Store) UnregisterTargets(ctx context.Context, targetIDs []uuid.UUID) (int, error) {
	var removed int
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		removed = 0
		for _, id := range targetIDs {
			t, ok, err := getTarget(ctx, tx, id)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if err := checkUnregister(ctx, tx, t); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM target WHERE target_id = $1`, id); err != nil {
				return fmt.Errorf("unregister %s: %w", id, err)
			}
			removed++
		}
		return nil
	})
	return removed, err
}

// RetireResult is what RetireTargets found for each target.
type RetireResult struct {
	// Retired: referenced by no volume and never to be again (DELETING, or
	// PENDING, which no volume can name): the caller may destroy them.
	Retired []uuid.UUID
	// Kept: a live volume references them; they are left to its lifecycle.
	Kept []uuid.UUID
	// Absent: not registered.
	Absent []uuid.UUID
}

// RetireTargets is the proof an unwinding saga needs before it destroys
// read-only targets it created: that nothing references them. It moves each
// unreferenced ACTIVE target to DELETING in the same transaction that
// counts its references, so a CreateVolume naming it either committed first
// (and the target is kept) or cannot name it any more (DELETING targets do
// not resolve). A target that escaped into a volume made while the saga ran
// — a clone of a snapshot that named it for a moment — is kept: destroying
// it would leave that volume naming nothing, and unregistering it is
// refused, so the saga would be stuck besides. Idempotent.
func (s *Store) RetireTargets(ctx context.Context, targetIDs []uuid.UUID) (RetireResult, error) {
	for i, id := range targetIDs {
		if id == uuid.Nil {
			return RetireResult{}, invalidArgument("target_ids[%d]: required", i)
		}
	}
	var out RetireResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = RetireResult{}
		for i, id := range targetIDs {
			t, ok, err := getTarget(ctx, tx, id)
			if err != nil {
				return err
			}
			if !ok {
				out.Absent = append(out.Absent, id)
				continue
			}
			if !t.Kind.ReadOnly() {
				return invalidArgument("target_ids[%d]: %s is a %s; only read-only targets are retired", i, id, t.Kind)
			}
			if t.State == StateDeleting {
				out.Retired = append(out.Retired, id)
				continue
			}
			var referenced bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM volume_resource_usage WHERE target_id = $1)`, id).Scan(&referenced); err != nil {
				return fmt.Errorf("references of %s: %w", id, err)
			}
			switch {
			case referenced:
				out.Kept = append(out.Kept, id)
			case t.State == StatePending:
				// No address, so no volume can name it, and the saga that
				// would activate it is the one unwinding.
				out.Retired = append(out.Retired, id)
			default:
				if _, err := tx.Exec(ctx, `UPDATE target SET state = 'DELETING' WHERE target_id = $1 AND state = 'ACTIVE'`, id); err != nil {
					return fmt.Errorf("retire %s: %w", id, err)
				}
				out.Retired = append(out.Retired, id)
			}
		}
		return nil
	})
	return out, err
}

func checkUnregister(ctx context.Context, tx pgx.Tx, t Target) error {
	var refs int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM volume_resource_usage WHERE target_id = $1`, t.ID).Scan(&refs); err != nil {
		return fmt.Errorf("references of %s: %w", t.ID, err)
	}
	if t.Kind.ReadOnly() {
		switch {
		case t.State == StateDeleting:
			return nil
		case refs == 0 && (t.State == StatePending || t.State == StateActive):
			// Never referenced: a count that drops to zero marks the target
			// DELETING, so an unreferenced PENDING or ACTIVE target is one
			// whose creating saga is unwinding. A concurrent CreateVolume
			// naming it conflicts with this transaction; whichever commits
			// first wins, and neither can leave a dangling reference.
			return nil
		}
		return failedPrecondition("target %s is %s with %d references; a read-only target can be unregistered only when DELETING or never referenced", t.ID, t.State, refs)
	}
	var snapshots int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM target WHERE kind = 'REGION_SNAPSHOT' AND region_id = $1`, t.RegionID).Scan(&snapshots); err != nil {
		return fmt.Errorf("snapshots of %s: %w", t.ID, err)
	}
	if snapshots > 0 {
		return failedPrecondition("rw region %s still has %d region snapshots registered", t.ID, snapshots)
	}
	if t.State == StatePending {
		return nil
	}
	var deleted *time.Time
	err := tx.QueryRow(ctx, `SELECT time_deleted FROM volume WHERE id = $1`, t.OwnerVolumeID).Scan(&deleted)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	case err != nil:
		return fmt.Errorf("owner of %s: %w", t.ID, err)
	case deleted == nil:
		return failedPrecondition("rw region %s is owned by live volume %s", t.ID, t.OwnerVolumeID)
	}
	return nil
}

// GetTarget returns a target, with its reference count if asked. Counting
// a target referenced by thousands of volumes reads every one of their
// usage rows: O(references) per call, so never on the data path (nor inside
// a mutating transaction, where it would make every concurrent replacement
// of the same target a serialization conflict).
func (s *Store) GetTarget(ctx context.Context, id uuid.UUID, withRefCount bool) (Target, error) {
	var refs int64
	t, err := scanTarget(s.pool.QueryRow(ctx, `SELECT `+targetCols+`, `+refCountColumn(withRefCount, "target.target_id")+`
		FROM target WHERE target_id = $1`, id), &refs)
	if errors.Is(err, pgx.ErrNoRows) {
		return Target{}, notFound("target %s is not registered", id)
	}
	if err != nil {
		return Target{}, fmt.Errorf("load target %s: %w", id, err)
	}
	t.RefCount = refs
	return t, nil
}

// TargetFilter narrows ListTargets; zero fields match everything.
type TargetFilter struct {
	Kind          TargetKind
	State         TargetState
	OwnerVolumeID uuid.UUID
}

// ListTargets lists targets by id after `after`.
func (s *Store) ListTargets(ctx context.Context, f TargetFilter, after uuid.UUID, limit int) ([]Target, uuid.UUID, error) {
	limit = pageLimit(limit)
	rows, err := s.pool.Query(ctx, `SELECT `+targetCols+`, `+refCountColumn(true, "target.target_id")+`
		FROM target
		WHERE target_id > $1 AND ($2 = '' OR kind = $2) AND ($3 = '' OR state = $3)
		  AND ($4::uuid IS NULL OR owner_volume_id = $4)
		ORDER BY target_id LIMIT $5`, after, string(f.Kind), string(f.State), nullUUID(f.OwnerVolumeID), limit+1)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("list targets: %w", err)
	}
	defer rows.Close()
	var out []Target
	for rows.Next() {
		var n int64
		t, err := scanTarget(rows, &n)
		if err != nil {
			return nil, uuid.Nil, err
		}
		t.RefCount = n
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, uuid.Nil, err
	}
	var next uuid.UUID
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}

// ResolveAddress returns the one non-deleting target serving addr.
func (s *Store) ResolveAddress(ctx context.Context, addr string) (Target, error) {
	c, err := vcr.Canonical(addr)
	if err != nil {
		return Target{}, invalidArgument("address: %v (want \"[ipv6]:port\")", err)
	}
	t, err := scanTarget(s.pool.QueryRow(ctx, `SELECT `+targetCols+` FROM target WHERE address = $1 AND state <> 'DELETING'`, c))
	if errors.Is(err, pgx.ErrNoRows) {
		return Target{}, notFound("no live target serves %s", c)
	}
	if err != nil {
		return Target{}, fmt.Errorf("resolve %s: %w", c, err)
	}
	return s.GetTarget(ctx, t.ID, false)
}
