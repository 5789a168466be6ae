package store

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/volume/internal/vcr"
)

// ReplaceResult is the outcome of a replacement (spec/volumes.md §12.1);
// the "deleted" outcomes are results, not errors.
type ReplaceResult int

// Replacement outcomes.
const (
	ReplaceDone ReplaceResult = iota + 1
	ReplaceAlreadyHappened
	ReplaceVolumeSoftDeleted
	ReplaceVolumeHardDeleted
)

// replaceInputs is what both replacements load first: the volume and the
// two targets (a non-zero result ⇒ the volume is deleted, nothing to do).
type replaceInputs struct {
	volume   Volume
	old, new Target
}

func loadReplaceInputs(ctx context.Context, tx pgx.Tx, volumeID, oldID, newID uuid.UUID, rw bool) (replaceInputs, ReplaceResult, error) {
	var in replaceInputs
	v, ok, err := loadVolume(ctx, tx, volumeID)
	if err != nil {
		return in, 0, err
	}
	if !ok {
		return in, ReplaceVolumeHardDeleted, nil
	}
	if v.SoftDeleted() {
		return in, ReplaceVolumeSoftDeleted, nil
	}
	in.volume = v
	old, ok, err := getTarget(ctx, tx, oldID)
	if err != nil {
		return in, 0, err
	}
	if !ok || old.Address == "" {
		return in, 0, failedPrecondition("old target %s is not a registered target with an address", oldID)
	}
	nt, ok, err := getTarget(ctx, tx, newID)
	if err != nil {
		return in, 0, err
	}
	if !ok || nt.State != StateActive {
		return in, 0, failedPrecondition("new target %s is not a registered ACTIVE target", newID)
	}
	if rw != (old.Kind == KindRWRegion) || rw != (nt.Kind == KindRWRegion) {
		want := "read-only targets"
		if rw {
			want = "rw regions"
		}
		return in, 0, failedPrecondition("targets %s and %s must both be %s", oldID, newID, want)
	}
	in.old, in.new = old, nt
	return in, 0, nil
}

// checkStash: the stash must exist live, and since its VCR is overwritten it
// may hold nothing but (on an undo) the reference that moves back.
func checkStash(ctx context.Context, tx pgx.Tx, stashID uuid.UUID, newTarget Target) error {
	stash, ok, err := loadVolume(ctx, tx, stashID)
	if err != nil {
		return err
	}
	if !ok || stash.SoftDeleted() {
		return failedPrecondition("stash volume %s does not exist or is soft-deleted", stashID)
	}
	for _, r := range vcr.AllTargets(stash.VCR) {
		if c, err := vcr.Canonical(r.Address); err != nil || c != newTarget.Address {
			return failedPrecondition("stash volume %s already names other targets", stashID)
		}
	}
	var others int64
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1 AND target_id <> $2`,
		stashID, newTarget.ID).Scan(&others); err != nil {
		return err
	}
	if others > 0 {
		return failedPrecondition("stash volume %s already holds other references", stashID)
	}
	return nil
}

// ReplaceReadOnlyTarget replaces one read-only target of a volume with
// another (§12) and parks the old reference in the stash volume, whose VCR
// becomes the §12 stub naming the old target. Swapping old and new undoes
// it. Both present is FailedPrecondition.
func (s *Store) ReplaceReadOnlyTarget(ctx context.Context, volumeID, oldID, newID, stashID uuid.UUID) (ReplaceResult, error) {
	if err := distinct(volumeID, oldID, newID, stashID); err != nil {
		return 0, err
	}
	var res ReplaceResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		in, r, err := loadReplaceInputs(ctx, tx, volumeID, oldID, newID, false)
		if err != nil || r != 0 {
			res = r
			return err
		}
		hasOld, err := vcr.ReadOnlyTargetInVCR(in.volume.VCR, in.old.Address)
		if err != nil {
			return internal("volume %s: malformed VCR: %v", volumeID, err)
		}
		hasNew, err := vcr.ReadOnlyTargetInVCR(in.volume.VCR, in.new.Address)
		if err != nil {
			return internal("volume %s: malformed VCR: %v", volumeID, err)
		}
		switch {
		case !hasOld && hasNew:
			res = ReplaceAlreadyHappened
			return nil
		case hasOld && hasNew:
			return failedPrecondition("volume %s names both %s and %s", volumeID, in.old.Address, in.new.Address)
		case !hasOld:
			return failedPrecondition("volume %s names neither %s nor %s", volumeID, in.old.Address, in.new.Address)
		}
		if err := checkStash(ctx, tx, stashID, in.new); err != nil {
			return err
		}
		replaced, n, err := vcr.ReplaceReadOnlyTargetInVCR(in.volume.VCR, in.old.Address, in.new.Address)
		if err != nil {
			return internal("volume %s: %v", volumeID, err)
		}
		if n != 1 {
			return internal("volume %s: replaced %d occurrences of %s, want 1", volumeID, n, in.old.Address)
		}
		if err := writeVCR(ctx, tx, volumeID, replaced, true); err != nil {
			return err
		}
		stub := vcr.StubReadOnly(stashID, in.old.Address)
		if err := writeVCR(ctx, tx, stashID, stub, true); err != nil {
			return err
		}
		// Old reference: volume → stash.
		tag, err := tx.Exec(ctx, `UPDATE volume_resource_usage SET volume_id = $2 WHERE volume_id = $1 AND target_id = $3`, volumeID, stashID, oldID)
		if err != nil {
			return err
		}
		if tag.RowsAffected() != 1 {
			return internal("volume %s: moved %d usage rows of %s, want 1", volumeID, tag.RowsAffected(), oldID)
		}
		// New reference: insert (forward) or move back from the stash (undo).
		tag, err = tx.Exec(ctx, `UPDATE volume_resource_usage SET volume_id = $2 WHERE volume_id = $1 AND target_id = $3`, stashID, volumeID, newID)
		if err != nil {
			return err
		}
		switch tag.RowsAffected() {
		case 0:
			if err := insertUsage(ctx, tx, volumeID, []uuid.UUID{newID}); err != nil {
				return err
			}
		case 1:
		default:
			return internal("stash %s held %d usage rows of %s, want at most 1", stashID, tag.RowsAffected(), newID)
		}
		if err := reindex(ctx, tx, volumeID, replaced); err != nil {
			return err
		}
		if err := reindex(ctx, tx, stashID, stub); err != nil {
			return err
		}
		res = ReplaceDone
		return nil
	})
	return res, err
}

// ReplaceRegion replaces one rw region of a volume (§11): the target is
// swapped, every Region reached through sub_volumes gets gen+1, the old
// region's ownership moves to the stash volume (whose VCR becomes one rw
// region naming it, so deleting the stash frees it) and the new region's to
// the volume. Swapping old and new undoes it. Both present is
// FailedPrecondition.
func (s *Store) ReplaceRegion(ctx context.Context, volumeID, oldID, newID, stashID uuid.UUID) (ReplaceResult, error) {
	if err := distinct(volumeID, oldID, newID, stashID); err != nil {
		return 0, err
	}
	var res ReplaceResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		in, r, err := loadReplaceInputs(ctx, tx, volumeID, oldID, newID, true)
		if err != nil || r != 0 {
			res = r
			return err
		}
		hasOld, err := vcr.RegionInVCR(in.volume.VCR, in.old.Address)
		if err != nil {
			return internal("volume %s: malformed VCR: %v", volumeID, err)
		}
		hasNew, err := vcr.RegionInVCR(in.volume.VCR, in.new.Address)
		if err != nil {
			return internal("volume %s: malformed VCR: %v", volumeID, err)
		}
		switch {
		case !hasOld && hasNew:
			res = ReplaceAlreadyHappened
			return nil
		case hasOld && hasNew:
			return failedPrecondition("volume %s names both %s and %s", volumeID, in.old.Address, in.new.Address)
		case !hasOld:
			return failedPrecondition("volume %s names neither %s nor %s", volumeID, in.old.Address, in.new.Address)
		}
		if in.old.OwnerVolumeID != volumeID {
			return failedPrecondition("rw region %s is owned by %s, not volume %s", oldID, in.old.OwnerVolumeID, volumeID)
		}
		if err := checkStash(ctx, tx, stashID, in.new); err != nil {
			return err
		}
		replaced, err := vcr.ReplaceRegionInVCR(in.volume.VCR, in.old.Address, in.new.Address)
		if err != nil {
			return internal("volume %s: %v", volumeID, err)
		}
		if _, err := tx.Exec(ctx, `UPDATE target SET owner_volume_id = $2 WHERE target_id = $1`, oldID, stashID); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `UPDATE target SET owner_volume_id = $2 WHERE target_id = $1`, newID, volumeID); err != nil {
			return err
		}
		if err := writeVCR(ctx, tx, volumeID, replaced, true); err != nil {
			return err
		}
		stub := vcr.StubReadWrite(stashID, in.old.Address)
		if err := writeVCR(ctx, tx, stashID, stub, true); err != nil {
			return err
		}
		if err := reindex(ctx, tx, volumeID, replaced); err != nil {
			return err
		}
		if err := reindex(ctx, tx, stashID, stub); err != nil {
			return err
		}
		res = ReplaceDone
		return nil
	})
	return res, err
}

func distinct(volumeID, oldID, newID, stashID uuid.UUID) error {
	switch {
	case volumeID == uuid.Nil:
		return invalidArgument("volume_id: required")
	case oldID == uuid.Nil:
		return invalidArgument("old target id: required")
	case newID == uuid.Nil:
		return invalidArgument("new target id: required")
	case stashID == uuid.Nil:
		return invalidArgument("stash_volume_id: required")
	case oldID == newID:
		return invalidArgument("old and new target must differ")
	case stashID == volumeID:
		return invalidArgument("stash_volume_id must differ from volume_id")
	}
	return nil
}
