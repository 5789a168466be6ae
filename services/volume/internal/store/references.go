package store

// Which volumes reference a target (FindVolumesReferencingTarget, from the
// index), and whether one volume's VCR names a target as read-only
// (VolumeReferencesReadOnlyTarget): read-only queries, no counts change.

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/vcr"
)

// VolumeRef is a volume found through the index.
type VolumeRef struct {
	ID          uuid.UUID
	SoftDeleted bool
	Purpose     Purpose
}

// FindVolumesReferencingTarget answers from the volume_target index, by
// volume id after `after`.
func (s *Store) FindVolumesReferencingTarget(ctx context.Context, target uuid.UUID, includeDeleted bool, after uuid.UUID, limit int) ([]VolumeRef, uuid.UUID, error) {
	limit = pageLimit(limit)
	rows, err := s.pool.Query(ctx, `SELECT vt.volume_id, v.time_deleted IS NOT NULL, v.purpose
		FROM volume_target vt JOIN volume v ON v.id = vt.volume_id
		WHERE vt.target_id = $1 AND vt.volume_id > $2 AND ($3 OR v.time_deleted IS NULL)
		ORDER BY vt.volume_id LIMIT $4`, target, after, includeDeleted, limit+1)
	if err != nil {
		return nil, uuid.Nil, fmt.Errorf("volumes referencing %s: %w", target, err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (VolumeRef, error) {
		var v VolumeRef
		err := r.Scan(&v.ID, &v.SoftDeleted, &v.Purpose)
		return v, err
	})
	if err != nil {
		return nil, uuid.Nil, err
	}
	var next uuid.UUID
	if len(out) > limit {
		out = out[:limit]
		next = out[limit-1].ID
	}
	return out, next, nil
}

// ReadOnlyReference answers VolumeReferencesReadOnlyTarget.
type ReadOnlyReference struct {
	Exists, SoftDeleted, Referenced bool
	// Purpose is empty when the volume does not exist.
	Purpose Purpose
}

// VolumeReferencesReadOnlyTarget reports whether a volume's VCR (soft-deleted
// ones too) names the target as a read-only target. An unregistered target
// is not referenced.
func (s *Store) VolumeReferencesReadOnlyTarget(ctx context.Context, volumeID, targetID uuid.UUID) (ReadOnlyReference, error) {
	var out ReadOnlyReference
	err := s.readTx(ctx, func(tx pgx.Tx) error {
		out = ReadOnlyReference{}
		v, ok, err := loadVolume(ctx, tx, volumeID)
		if err != nil || !ok {
			return err
		}
		out.Exists, out.SoftDeleted, out.Purpose = true, v.SoftDeleted(), v.Purpose
		t, ok, err := getTarget(ctx, tx, targetID)
		if err != nil || !ok || t.Address == "" {
			return err
		}
		out.Referenced, err = vcr.ReadOnlyTargetInVCR(v.VCR, t.Address)
		if err != nil {
			return internal("volume %s: malformed VCR: %v", volumeID, err)
		}
		return nil
	})
	return out, err
}
