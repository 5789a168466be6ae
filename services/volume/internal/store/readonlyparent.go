package store

// RemoveReadOnlyParent: moving a volume's read-only parent, with its usage
// and index rows, into an empty temporary volume.

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// RemoveReadOnlyParent moves a volume's read-only parent into a live,
// empty temporary volume; the usage and index rows move with it.
func (s *Store) RemoveReadOnlyParent(ctx context.Context, volumeID, tempID uuid.UUID) (bool, error) {
	if volumeID == tempID {
		return false, invalidArgument("temp_volume_id: must differ from volume_id")
	}
	var removed bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		removed = false
		v, ok, err := loadVolume(ctx, tx, volumeID)
		if err != nil || !ok || v.SoftDeleted() || v.VCR.Volume == nil || v.VCR.Volume.ReadOnlyParent == nil {
			return err
		}
		temp, ok, err := loadVolume(ctx, tx, tempID)
		if err != nil {
			return err
		}
		if !ok || temp.SoftDeleted() {
			return failedPrecondition("temp volume %s does not exist or is soft-deleted", tempID)
		}
		if len(vcr.AllTargets(temp.VCR)) != 0 {
			return failedPrecondition("temp volume %s is not empty", tempID)
		}
		rop := v.VCR.Volume.ReadOnlyParent
		without := v.VCR.Clone()
		without.Volume.ReadOnlyParent = nil
		tempVCR := &vcr.VCR{Volume: &vcr.Volume{ID: tempID.String(), BlockSize: v.VCR.Volume.BlockSize, ReadOnlyParent: rop.Clone()}}
		if err := writeVCR(ctx, tx, volumeID, without, true); err != nil {
			return err
		}
		if err := writeVCR(ctx, tx, tempID, tempVCR, true); err != nil {
			return err
		}
		if err := moveReferences(ctx, tx, volumeID, tempID, vcr.ReadOnlyTargets(tempVCR)); err != nil {
			return err
		}
		if err := reindex(ctx, tx, volumeID, without); err != nil {
			return err
		}
		if err := reindex(ctx, tx, tempID, tempVCR); err != nil {
			return err
		}
		removed = true
		return nil
	})
	return removed, err
}

// moveReferences moves the usage rows of the targets at addrs from one
// volume to another: exactly one row per address.
func moveReferences(ctx context.Context, tx pgx.Tx, from, to uuid.UUID, addrs []string) error {
	canon, err := canonicalAll(addrs)
	if err != nil {
		return internal("%v", err)
	}
	resolved, err := resolveAddresses(ctx, tx, uniqueStrings(canon))
	if err != nil {
		return err
	}
	for _, a := range canon {
		t, ok := resolved[a]
		if !ok {
			return failedPrecondition("read-only target %s does not resolve to a registered target", a)
		}
		tag, err := tx.Exec(ctx, `UPDATE volume_resource_usage SET volume_id = $3 WHERE volume_id = $1 AND target_id = $2`, from, t.ID, to)
		if err != nil {
			return fmt.Errorf("move usage rows: %w", err)
		}
		if tag.RowsAffected() != 1 {
			return internal("volume %s: moved %d usage rows of target %s, want 1", from, tag.RowsAffected(), t.ID)
		}
	}
	return nil
}
