package store

// Deleting volumes and the reference counting that comes with it: the soft
// delete drops the volume's references and records what that frees (the
// cleanup list), the hard delete removes the row once no rw region names
// it, and FindDeletedVolumeRegions finds the rw regions soft-deleted
// volumes leave behind.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/vcr"
)

// RegionSnapshotRef identifies a region snapshot.
type RegionSnapshotRef struct {
	DatasetID, RegionID, SnapshotID uuid.UUID
}

// TargetID is the derived target id.
func (r RegionSnapshotRef) TargetID() uuid.UUID {
	return ids.RegionSnapshotTargetID(r.RegionID, r.SnapshotID)
}

// SoftDeleteResult is what a soft delete freed.
type SoftDeleteResult struct {
	Regions         []uuid.UUID
	RegionSnapshots []RegionSnapshotRef
	VolumeMissing   bool
	AlreadyDeleted  bool
	// HardDeleted: SoftDeleteOptions.HardIfNothingFreed applied.
	HardDeleted bool
}

// SoftDeleteOptions change what a soft delete does.
type SoftDeleteOptions struct {
	// HardIfNothingFreed: when the delete frees nothing and the volume owns
	// no rw region, remove the row and its index rows in the same
	// transaction instead of marking it deleted. That is all the
	// volume-delete saga would do next (hard delete once no region
	// names the volume), and a re-run finds the volume missing, which
	// again frees nothing. A fan-out deletes one read-only stash per
	// volume: this saves the second transaction and RPC.
	HardIfNothingFreed bool
	// OnlyPurpose, when set, refuses a live volume of another purpose
	// (FailedPrecondition, nothing changed).
	OnlyPurpose Purpose
}

// crucibleResources is the stored cleanup list, externally tagged by
// version like the reference's; only V3 is written (no legacy rows exist).
type crucibleResources struct {
	V3 *crucibleResourcesV3 `json:"V3,omitempty"`
}

type crucibleResourcesV3 struct {
	Regions         []uuid.UUID        `json:"regions"`
	RegionSnapshots []regionSnapshotV3 `json:"region_snapshots"`
}

type regionSnapshotV3 struct {
	Dataset  uuid.UUID `json:"dataset"`
	Region   uuid.UUID `json:"region"`
	Snapshot uuid.UUID `json:"snapshot"`
}

// SoftDeleteVolume soft-deletes a volume in one transaction.
func (s *Store) SoftDeleteVolume(ctx context.Context, id uuid.UUID) (SoftDeleteResult, error) {
	return s.SoftDeleteVolumeWith(ctx, id, SoftDeleteOptions{})
}

// SoftDeleteVolumeWith is SoftDeleteVolume with options.
func (s *Store) SoftDeleteVolumeWith(ctx context.Context, id uuid.UUID, opts SoftDeleteOptions) (SoftDeleteResult, error) {
	var res SoftDeleteResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		res = SoftDeleteResult{}
		var deleted *time.Time
		var data, stored []byte
		var purpose Purpose
		err := tx.QueryRow(ctx, `SELECT time_deleted, data, resources_to_clean_up, purpose FROM volume WHERE id = $1`, id).
			Scan(&deleted, &data, &stored, &purpose)
		if errors.Is(err, pgx.ErrNoRows) {
			res.VolumeMissing = true
			return nil
		}
		if err != nil {
			return fmt.Errorf("load volume %s: %w", id, err)
		}
		if deleted != nil {
			res.AlreadyDeleted = true
			return decodeResources(stored, &res)
		}
		if opts.OnlyPurpose != "" && purpose != opts.OnlyPurpose {
			return failedPrecondition("volume %s is a %s volume, not a %s one; its replacement deletes it", id, purpose, opts.OnlyPurpose)
		}
		v, err := vcr.Decode(data)
		if err != nil {
			return internal("volume %s: stored VCR undecodable: %v", id, err)
		}
		if _, err := vcr.CountSubVolumes(v); err != nil {
			return internal("volume %s: invalid volume: %v", id, err)
		}
		if err := softDeleteRW(ctx, tx, id, v, &res); err != nil {
			return err
		}
		if err := softDeleteRO(ctx, tx, id, v, &res); err != nil {
			return err
		}
		cr := crucibleResources{V3: &crucibleResourcesV3{Regions: res.Regions, RegionSnapshots: []regionSnapshotV3{}}}
		if cr.V3.Regions == nil {
			cr.V3.Regions = []uuid.UUID{}
		}
		for _, r := range res.RegionSnapshots {
			cr.V3.RegionSnapshots = append(cr.V3.RegionSnapshots, regionSnapshotV3{r.DatasetID, r.RegionID, r.SnapshotID})
		}
		if opts.HardIfNothingFreed && len(res.Regions) == 0 && len(res.RegionSnapshots) == 0 {
			var owns bool
			if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM target WHERE kind = 'RW_REGION' AND owner_volume_id = $1)`, id).Scan(&owns); err != nil {
				return fmt.Errorf("owned regions of %s: %w", id, err)
			}
			if !owns {
				res.HardDeleted = true
				return removeVolumeRow(ctx, tx, id)
			}
		}
		js, err := json.Marshal(cr)
		if err != nil {
			return internal("encode cleanup list: %v", err)
		}
		tag, err := tx.Exec(ctx, `UPDATE volume SET time_deleted = now(), resources_to_clean_up = $2
			WHERE id = $1 AND time_deleted IS NULL`, id, js)
		if err != nil {
			return fmt.Errorf("soft delete %s: %w", id, err)
		}
		if tag.RowsAffected() != 1 {
			return internal("soft delete %s: updated %d rows, want 1", id, tag.RowsAffected())
		}
		return nil
	})
	return res, err
}

func decodeResources(stored []byte, res *SoftDeleteResult) error {
	if stored == nil {
		return nil
	}
	var cr crucibleResources
	if err := json.Unmarshal(stored, &cr); err != nil {
		return internal("stored cleanup list undecodable: %v", err)
	}
	if cr.V3 == nil {
		return nil
	}
	res.Regions = cr.V3.Regions
	for _, r := range cr.V3.RegionSnapshots {
		res.RegionSnapshots = append(res.RegionSnapshots, RegionSnapshotRef{r.Dataset, r.Region, r.Snapshot})
	}
	return nil
}

// softDeleteRW: every rw target must resolve to a rw region; a region with
// any region snapshot registered (any state) is kept for
// FindDeletedVolumeRegions, the rest are freed. Reading the snapshot rows is
// what makes a concurrent RegisterTargets of a snapshot conflict.
func softDeleteRW(ctx context.Context, tx pgx.Tx, id uuid.UUID, v *vcr.VCR, res *SoftDeleteResult) error {
	addrs, err := canonicalAll(vcr.ReadWriteTargets(v))
	if err != nil {
		return internal("volume %s: %v", id, err)
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(addrs))
	if err != nil {
		return err
	}
	var regionIDs []uuid.UUID
	for _, a := range addrs {
		t, ok := resolved[a]
		if !ok || t.Kind != KindRWRegion {
			return failedPrecondition("volume %s: rw target %s does not resolve to a registered rw region", id, a)
		}
		regionIDs = append(regionIDs, t.RegionID)
	}
	if len(regionIDs) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT DISTINCT region_id FROM target
		WHERE kind = 'REGION_SNAPSHOT' AND region_id = ANY($1)`, regionIDs)
	if err != nil {
		return fmt.Errorf("region snapshots of %s: %w", id, err)
	}
	hasSnapshots, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	pinned := map[uuid.UUID]bool{}
	for _, r := range hasSnapshots {
		pinned[r] = true
	}
	for _, r := range regionIDs {
		if !pinned[r] {
			res.Regions = append(res.Regions, r)
		}
	}
	return nil
}

// softDeleteRO drops one usage row per read-only occurrence and marks every
// target whose count reaches zero DELETING (exactly one row each).
func softDeleteRO(ctx context.Context, tx pgx.Tx, id uuid.UUID, v *vcr.VCR, res *SoftDeleteResult) error {
	addrs, err := canonicalAll(vcr.ReadOnlyTargets(v))
	if err != nil {
		return internal("volume %s: %v", id, err)
	}
	if len(addrs) == 0 {
		return nil
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(addrs))
	if err != nil {
		return err
	}
	targetIDs := make([]uuid.UUID, 0, len(addrs))
	want := map[uuid.UUID]int{}
	byID := map[uuid.UUID]Target{}
	for _, a := range addrs {
		t, ok := resolved[a]
		if !ok || !t.Kind.ReadOnly() {
			return failedPrecondition("volume %s: read-only target %s does not resolve to a registered read-only target", id, a)
		}
		if want[t.ID] == 0 {
			targetIDs = append(targetIDs, t.ID)
		}
		want[t.ID]++
		byID[t.ID] = t
	}
	rows, err := tx.Query(ctx, `DELETE FROM volume_resource_usage WHERE volume_id = $1 AND target_id = ANY($2) RETURNING target_id`, id, targetIDs)
	if err != nil {
		return fmt.Errorf("drop usage rows of %s: %w", id, err)
	}
	dropped, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	got := map[uuid.UUID]int{}
	for _, t := range dropped {
		got[t]++
	}
	for _, t := range targetIDs {
		if got[t] != want[t] {
			return internal("volume %s: target %s: dropped %d usage rows, want %d", id, t, got[t], want[t])
		}
	}
	rows, err = tx.Query(ctx, `SELECT t FROM unnest($1::uuid[]) AS t
		WHERE NOT EXISTS (SELECT 1 FROM volume_resource_usage u WHERE u.target_id = t)`, targetIDs)
	if err != nil {
		return fmt.Errorf("remaining counts: %w", err)
	}
	zero, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return err
	}
	if len(zero) == 0 {
		return nil
	}
	tag, err := tx.Exec(ctx, `UPDATE target SET state = 'DELETING' WHERE target_id = ANY($1) AND state = 'ACTIVE'`, zero)
	if err != nil {
		return fmt.Errorf("mark deleting: %w", err)
	}
	if int(tag.RowsAffected()) != len(zero) {
		return internal("volume %s: marked %d targets deleting, want %d", id, tag.RowsAffected(), len(zero))
	}
	// Keep VCR order in the result.
	isZero := map[uuid.UUID]bool{}
	for _, z := range zero {
		isZero[z] = true
	}
	for _, tid := range targetIDs {
		if !isZero[tid] {
			continue
		}
		t := byID[tid]
		if t.Kind == KindRORegion {
			res.Regions = append(res.Regions, t.RegionID)
		} else {
			res.RegionSnapshots = append(res.RegionSnapshots, RegionSnapshotRef{t.DatasetID, t.RegionID, t.SnapshotID})
		}
	}
	return nil
}

// HardDeleteResult is what HardDeleteVolume did.
type HardDeleteResult struct {
	Kept bool
	// RemainingRegions are the rw targets the volume still owns (Kept).
	RemainingRegions []uuid.UUID
}

// HardDeleteVolume removes a soft-deleted volume row and its index rows.
// Missing ⇒ done; live ⇒ FailedPrecondition (hard-deleting a live volume
// would leak its usage rows); still owning registered rw targets ⇒ Kept.
func (s *Store) HardDeleteVolume(ctx context.Context, id uuid.UUID) (HardDeleteResult, error) {
	var res HardDeleteResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		res = HardDeleteResult{}
		var deleted *time.Time
		err := tx.QueryRow(ctx, `SELECT time_deleted FROM volume WHERE id = $1`, id).Scan(&deleted)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("load volume %s: %w", id, err)
		}
		if deleted == nil {
			return failedPrecondition("volume %s is live; soft-delete it first", id)
		}
		rows, err := tx.Query(ctx, `SELECT target_id FROM target WHERE kind = 'RW_REGION' AND owner_volume_id = $1 ORDER BY target_id`, id)
		if err != nil {
			return fmt.Errorf("owned regions of %s: %w", id, err)
		}
		owned, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		if len(owned) > 0 {
			res.Kept, res.RemainingRegions = true, owned
			return nil
		}
		return removeVolumeRow(ctx, tx, id)
	})
	return res, err
}

// removeVolumeRow deletes a volume's row and its index rows (its usage
// rows are the soft delete's business).
func removeVolumeRow(ctx context.Context, tx pgx.Tx, id uuid.UUID) error {
	var b pgx.Batch
	b.Queue(`DELETE FROM volume_target WHERE volume_id = $1`, id)
	b.Queue(`DELETE FROM volume WHERE id = $1`, id)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return fmt.Errorf("hard delete %s: %w", id, err)
	}
	return nil
}

// FindDeletedVolumeRegions lists rw regions whose owner volume exists and is
// soft-deleted and which have no region snapshot registered (any state), and
// the volumes all of whose rw regions are in that batch.
//
// It reads in a serializable transaction, not a snapshot: its answer frees
// regions, and it races soft deletes that keep a region because a
// snapshot of it was still registered. A snapshot read could miss both the
// soft delete (not yet committed) and the snapshot (unregistered since the
// soft delete read it), and the region would be left to nobody.
func (s *Store) FindDeletedVolumeRegions(ctx context.Context) ([]uuid.UUID, []uuid.UUID, error) {
	var regions, volumes []uuid.UUID
	err := db.InTxOpts(ctx, s.pool, db.TxOptions{ReadOnly: true}, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT r.target_id FROM target r
			JOIN volume v ON v.id = r.owner_volume_id AND v.time_deleted IS NOT NULL
			WHERE r.kind = 'RW_REGION'
			  AND NOT EXISTS (SELECT 1 FROM target s WHERE s.kind = 'REGION_SNAPSHOT' AND s.region_id = r.region_id)
			ORDER BY r.target_id`)
		if err != nil {
			return fmt.Errorf("freed regions: %w", err)
		}
		if regions, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID]); err != nil {
			return err
		}
		rows, err = tx.Query(ctx, `SELECT DISTINCT r.owner_volume_id FROM target r
			WHERE r.target_id = ANY($1)
			  AND NOT EXISTS (SELECT 1 FROM target o WHERE o.kind = 'RW_REGION'
			                  AND o.owner_volume_id = r.owner_volume_id AND NOT (o.target_id = ANY($1)))
			ORDER BY 1`, regions)
		if err != nil {
			return fmt.Errorf("freed volumes: %w", err)
		}
		volumes, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	return regions, volumes, err
}
