package store

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"storagecp.dev/platform/vcr"
)

// ReplaceResult is the outcome of a replacement;
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
	vol := loadedVolume{}
	old, nt := loadedTarget{id: oldID}, loadedTarget{id: newID}
	var err error
	if vol.v, vol.ok, err = loadVolume(ctx, tx, volumeID); err != nil {
		return replaceInputs{}, 0, err
	}
	if vol.ok && !vol.v.SoftDeleted() {
		if old.t, old.ok, err = getTarget(ctx, tx, oldID); err != nil {
			return replaceInputs{}, 0, err
		}
		if nt.t, nt.ok, err = getTarget(ctx, tx, newID); err != nil {
			return replaceInputs{}, 0, err
		}
	}
	return replaceInputsOf(&vol, &old, &nt, rw)
}

// replaceInputsOf checks what loadReplaceInputs (or a batch) read: a
// non-zero result when the volume is deleted, an error when the targets are
// not what the replacement needs.
func replaceInputsOf(vol *loadedVolume, old, nt *loadedTarget, rw bool) (replaceInputs, ReplaceResult, error) {
	var in replaceInputs
	switch {
	case !vol.ok:
		return in, ReplaceVolumeHardDeleted, nil
	case vol.v.SoftDeleted():
		return in, ReplaceVolumeSoftDeleted, nil
	}
	in.volume = vol.v
	if !old.ok || old.t.Address == "" {
		return in, 0, failedPrecondition("old target %s is not a registered target with an address", old.id)
	}
	if !nt.ok || nt.t.State != StateActive {
		return in, 0, failedPrecondition("new target %s is not a registered ACTIVE target", nt.id)
	}
	if rw != (old.t.Kind == KindRWRegion) || rw != (nt.t.Kind == KindRWRegion) {
		want := "read-only targets"
		if rw {
			want = "rw regions"
		}
		return in, 0, failedPrecondition("targets %s and %s must both be %s", old.id, nt.id, want)
	}
	in.old, in.new = old.t, nt.t
	return in, 0, nil
}

// loadedVolume and loadedTarget are rows read by a batch (or one by one);
// ok=false when the row does not exist.
type loadedVolume struct {
	v  Volume
	ok bool
}

type loadedTarget struct {
	id uuid.UUID
	t  Target
	ok bool
}

// queueLoadVolume is loadVolume as a query of a batch.
func queueLoadVolume(b *pgx.Batch, id uuid.UUID) *loadedVolume {
	out := &loadedVolume{}
	b.Queue(loadVolumeSQL, id).QueryRow(func(row pgx.Row) error {
		var err error
		out.v, out.ok, err = scanVolume(row, id)
		return err
	})
	return out
}

// queueGetTarget is getTarget as a query of a batch.
func queueGetTarget(b *pgx.Batch, id uuid.UUID) *loadedTarget {
	out := &loadedTarget{id: id}
	b.Queue(getTargetSQL, id).QueryRow(func(row pgx.Row) error {
		var err error
		out.t, out.ok, err = scanTargetRow(row, id)
		return err
	})
	return out
}

// checkStash: the stash must exist live, and since its VCR is overwritten it
// may hold nothing but (on an undo) the reference that moves back.
func checkStash(ctx context.Context, tx pgx.Tx, stashID uuid.UUID, newTarget Target) error {
	var stash loadedVolume
	var err error
	if stash.v, stash.ok, err = loadVolume(ctx, tx, stashID); err != nil {
		return err
	}
	var others int64
	if err := tx.QueryRow(ctx, stashOthersSQL, stashID, newTarget.ID).Scan(&others); err != nil {
		return err
	}
	return stashUsable(&stash, stashID, newTarget, others)
}

// stashOthersSQL counts the stash's references to other targets than new.
const stashOthersSQL = `SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1 AND target_id <> $2`

func stashUsable(stash *loadedVolume, stashID uuid.UUID, newTarget Target, others int64) error {
	if !stash.ok || stash.v.SoftDeleted() {
		return failedPrecondition("stash volume %s does not exist or is soft-deleted", stashID)
	}
	for _, r := range vcr.AllTargets(stash.v.VCR) {
		if c, err := vcr.Canonical(r.Address); err != nil || c != newTarget.Address {
			return failedPrecondition("stash volume %s already names other targets", stashID)
		}
	}
	if others > 0 {
		return failedPrecondition("stash volume %s already holds other references", stashID)
	}
	return nil
}

// ReplaceReadOnlyTarget replaces one read-only target of a volume with
// another and parks the old reference in the stash volume, whose VCR
// becomes a stub naming only the old target (vcr.StubReadOnly). Swapping
// old and new undoes it. Both present is FailedPrecondition.
//
// It is the fan-out's hot path (one call per volume naming the target), so
// it costs three round trips: BEGIN, the fence and every read in one
// pipeline, every write in another, then COMMIT; and it maintains the
// volume→target index by the one entry that changes instead of rewriting
// the volume's whole index (fewer index insertions also mean fewer
// serialization conflicts with the other swaps of the same target).
func (s *Store) ReplaceReadOnlyTarget(ctx context.Context, volumeID, oldID, newID, stashID uuid.UUID) (ReplaceResult, error) {
	if err := distinct(volumeID, oldID, newID, stashID); err != nil {
		return 0, err
	}
	var res ReplaceResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var reads pgx.Batch
		vol, stash := queueLoadVolume(&reads, volumeID), queueLoadVolume(&reads, stashID)
		oldT, newT := queueGetTarget(&reads, oldID), queueGetTarget(&reads, newID)
		var stashOthers int64
		reads.Queue(stashOthersSQL, stashID, newID).QueryRow(func(row pgx.Row) error { return row.Scan(&stashOthers) })
		if err := tx.SendBatch(ctx, &reads).Close(); err != nil {
			return err
		}
		in, r, err := replaceInputsOf(vol, oldT, newT, false)
		if err != nil || r != 0 {
			res = r
			return err
		}
		w, r, err := planReadOnlySwap(volumeID, stashID, in, stash, stashOthers)
		if err != nil || r != 0 {
			res = r
			return err
		}
		var writes pgx.Batch
		check := queueReadOnlySwap(&writes, w)
		if err := tx.SendBatch(ctx, &writes).Close(); err != nil {
			return fmt.Errorf("replace %s in %s: %w", oldID, volumeID, err)
		}
		if err := check(); err != nil {
			return err
		}
		res = ReplaceDone
		return nil
	})
	return res, err
}

// readOnlySwap is the writes of one read-only swap, worked out from what
// was read.
type readOnlySwap struct {
	volume, stash, old, new uuid.UUID
	volData, stashData      []byte
}

// planReadOnlySwap decides one read-only swap from the loaded rows: a
// non-zero result when there is nothing to write (ReplaceAlreadyHappened),
// an error when the swap is refused.
func planReadOnlySwap(volumeID, stashID uuid.UUID, in replaceInputs, stash *loadedVolume, stashOthers int64) (readOnlySwap, ReplaceResult, error) {
	hasOld, err := vcr.ReadOnlyTargetInVCR(in.volume.VCR, in.old.Address)
	if err != nil {
		return readOnlySwap{}, 0, internal("volume %s: malformed VCR: %v", volumeID, err)
	}
	hasNew, err := vcr.ReadOnlyTargetInVCR(in.volume.VCR, in.new.Address)
	if err != nil {
		return readOnlySwap{}, 0, internal("volume %s: malformed VCR: %v", volumeID, err)
	}
	switch {
	case !hasOld && hasNew:
		return readOnlySwap{}, ReplaceAlreadyHappened, nil
	case hasOld && hasNew:
		return readOnlySwap{}, 0, failedPrecondition("volume %s names both %s and %s", volumeID, in.old.Address, in.new.Address)
	case !hasOld:
		return readOnlySwap{}, 0, failedPrecondition("volume %s names neither %s nor %s", volumeID, in.old.Address, in.new.Address)
	}
	if err := stashUsable(stash, stashID, in.new, stashOthers); err != nil {
		return readOnlySwap{}, 0, err
	}
	replaced, n, err := vcr.ReplaceReadOnlyTargetInVCR(in.volume.VCR, in.old.Address, in.new.Address)
	if err != nil {
		return readOnlySwap{}, 0, internal("volume %s: %v", volumeID, err)
	}
	if n != 1 {
		return readOnlySwap{}, 0, internal("volume %s: replaced %d occurrences of %s, want 1", volumeID, n, in.old.Address)
	}
	w := readOnlySwap{volume: volumeID, stash: stashID, old: in.old.ID, new: in.new.ID}
	if w.volData, err = vcr.Encode(replaced); err != nil {
		return readOnlySwap{}, 0, internal("volume %s: encode VCR: %v", volumeID, err)
	}
	if w.stashData, err = vcr.Encode(vcr.StubReadOnly(stashID, in.old.Address)); err != nil {
		return readOnlySwap{}, 0, internal("volume %s: encode VCR: %v", stashID, err)
	}
	return w, 0, nil
}

// queueReadOnlySwap queues one swap's writes on b; the returned check,
// called once the batch ran, says whether every write found its row.
func queueReadOnlySwap(b *pgx.Batch, w readOnlySwap) func() error {
	const writeLive = `UPDATE volume SET data = $2 WHERE id = $1 AND time_deleted IS NULL`
	var volRows, stashRows, oldMoved, newMoved int64
	rows := func(n *int64) func(pgconn.CommandTag) error {
		return func(tag pgconn.CommandTag) error { *n = tag.RowsAffected(); return nil }
	}
	b.Queue(writeLive, w.volume, w.volData).Exec(rows(&volRows))
	b.Queue(writeLive, w.stash, w.stashData).Exec(rows(&stashRows))
	// Old reference: volume → stash.
	b.Queue(`UPDATE volume_resource_usage SET volume_id = $2 WHERE volume_id = $1 AND target_id = $3`,
		w.volume, w.stash, w.old).Exec(rows(&oldMoved))
	// New reference: moved back from the stash (an undo) or inserted.
	b.Queue(`WITH moved AS (
			UPDATE volume_resource_usage SET volume_id = $2 WHERE volume_id = $1 AND target_id = $3 RETURNING 1
		), inserted AS (
			INSERT INTO volume_resource_usage (usage_id, volume_id, target_id)
			SELECT gen_random_uuid(), $2, $3 WHERE NOT EXISTS (SELECT 1 FROM moved)
		)
		SELECT count(*) FROM moved`, w.stash, w.volume, w.new).
		QueryRow(func(row pgx.Row) error { return row.Scan(&newMoved) })
	// The index: the volume trades old for new; the stash names old.
	b.Queue(`DELETE FROM volume_target WHERE volume_id = $1 AND target_id = $2`, w.volume, w.old)
	b.Queue(`INSERT INTO volume_target (volume_id, target_id, read_only) VALUES ($1, $2, true)`, w.volume, w.new)
	b.Queue(`DELETE FROM volume_target WHERE volume_id = $1`, w.stash)
	b.Queue(`INSERT INTO volume_target (volume_id, target_id, read_only) VALUES ($1, $2, true)`, w.stash, w.old)
	return func() error {
		switch {
		case volRows != 1:
			return failedPrecondition("volume %s does not exist or is soft-deleted", w.volume)
		case stashRows != 1:
			return failedPrecondition("volume %s does not exist or is soft-deleted", w.stash)
		case oldMoved != 1:
			return internal("volume %s: moved %d usage rows of %s, want 1", w.volume, oldMoved, w.old)
		case newMoved > 1:
			return internal("stash %s held %d usage rows of %s, want at most 1", w.stash, newMoved, w.new)
		}
		return nil
	}
}

// ReplaceRegion replaces one rw region of a volume: the target is
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
