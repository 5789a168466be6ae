package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// ReadOnlyKind is what a read-only replacement replaces.
type ReadOnlyKind string

// Read-only target kinds.
const (
	KindRegionSnapshot ReadOnlyKind = "region_snapshot"
	KindReadOnlyRegion ReadOnlyKind = "read_only_region"
)

// ReadOnlyState is a read-only replacement request's state.
type ReadOnlyState string

// Terminal reports whether nothing will move a request in this state again.
func (s ReadOnlyState) Terminal() bool { return s == ROComplete || s == RODataLost || s == ROCancelled }

// Request states (docs/replacement.md, "Read-only request"), plus the
// terminal DataLost and Cancelled.
const (
	RORequested         ReadOnlyState = "requested"
	ROAllocating        ReadOnlyState = "allocating"
	ROReplacementDone   ReadOnlyState = "replacement_done"
	RODeletingOldVolume ReadOnlyState = "deleting_old_volume"
	RORunning           ReadOnlyState = "running"
	ROCompleting        ReadOnlyState = "completing"
	ROComplete          ReadOnlyState = "complete"
	RODataLost          ReadOnlyState = "data_lost"
	ROCancelled         ReadOnlyState = "cancelled"
)

// ROStates lists every read-only request state, in the order above.
var ROStates = []ReadOnlyState{RORequested, ROAllocating, ROReplacementDone, RODeletingOldVolume, RORunning, ROCompleting, ROComplete, RODataLost, ROCancelled}

// ROReplacement is a read-only target replacement request.
type ROReplacement struct {
	ID                  uuid.UUID
	RequestTime         time.Time
	TimeModified        time.Time
	Kind                ReadOnlyKind
	OldTargetID         uuid.UUID
	OldRegionID         uuid.UUID
	OldDatasetID        *uuid.UUID
	OldSnapshotID       uuid.UUID
	LockVolumeID        uuid.UUID
	State               ReadOnlyState
	OperatingSagaID     *uuid.UUID
	NewRegionID         *uuid.UUID
	NewRegionVolumeID   *uuid.UUID
	OldSnapshotVolumeID *uuid.UUID
	Traceparent         string
	// EndReason says why it ended other than Complete.
	EndReason *string
	Attempts
	Order
}

const roColumns = `id, request_time, time_modified, kind, old_target_id, old_region_id, old_dataset_id,
	old_snapshot_id, lock_volume_id, state, operating_saga_id, new_region_id, new_region_volume_id,
	old_snapshot_volume_id, traceparent, end_reason, ` + attemptsColumns + `, ` + orderColumns

func scanRO(row pgx.Row) (ROReplacement, error) {
	var r ROReplacement
	err := row.Scan(&r.ID, &r.RequestTime, &r.TimeModified, &r.Kind, &r.OldTargetID, &r.OldRegionID, &r.OldDatasetID,
		&r.OldSnapshotID, &r.LockVolumeID, &r.State, &r.OperatingSagaID, &r.NewRegionID, &r.NewRegionVolumeID,
		&r.OldSnapshotVolumeID, &r.Traceparent, &r.EndReason, &r.Attempts.Attempts, &r.LastError, &r.LastErrorTime,
		&r.Priority, &r.LiveCopies)
	return r, err
}

func collectRO(rows pgx.Rows, err error) ([]ROReplacement, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (ROReplacement, error) { return scanRO(r) })
}

// InsertROReplacement creates a request in Requested and takes the repair
// lock on its lock volume (the snapshot volume) in the same transaction.
// Requests are keyed by target: if one exists for r.OldTargetID it is
// returned with created=false and nothing changes. ErrLockHeld when another
// repair holds the snapshot volume.
func (s *Store) InsertROReplacement(ctx context.Context, r ROReplacement) (ROReplacement, bool, error) {
	var out ROReplacement
	var created bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		existing, err := scanRO(tx.QueryRow(ctx, `SELECT `+roColumns+` FROM ro_replacement WHERE old_target_id = $1`, r.OldTargetID))
		if err == nil {
			out, created = existing, false
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// Queued by target: each detector pass makes a new request id.
		if err := lockVolume(ctx, tx, r.LockVolumeID, r.ID, r.OldTargetID, HolderReadOnlyReplacement); err != nil {
			return err
		}
		out, err = scanRO(tx.QueryRow(ctx, `
			INSERT INTO ro_replacement (id, kind, old_target_id, old_region_id, old_dataset_id, old_snapshot_id,
				lock_volume_id, state, traceparent)
			VALUES ($1, $2, $3, $4, $5, $6, $7, 'requested', $8)
			RETURNING `+roColumns,
			r.ID, r.Kind, r.OldTargetID, r.OldRegionID, r.OldDatasetID, r.OldSnapshotID, r.LockVolumeID, r.Traceparent))
		created = true
		return err
	})
	if errors.Is(err, ErrLockHeld) {
		s.noteWaiter(ctx, r.LockVolumeID, r.OldTargetID, HolderReadOnlyReplacement)
	}
	return out, created, err
}

// GetROReplacement returns a request by id, or ErrNotFound.
func (s *Store) GetROReplacement(ctx context.Context, id uuid.UUID) (ROReplacement, error) {
	r, err := scanRO(s.pool.QueryRow(ctx, `SELECT `+roColumns+` FROM ro_replacement WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("read-only replacement %s: %w", id, ErrNotFound)
	}
	return r, err
}

// GetROReplacementByTarget returns the request for a target (any state),
// or ErrNotFound.
func (s *Store) GetROReplacementByTarget(ctx context.Context, targetID uuid.UUID) (ROReplacement, error) {
	r, err := scanRO(s.pool.QueryRow(ctx, `SELECT `+roColumns+` FROM ro_replacement WHERE old_target_id = $1`, targetID))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("read-only replacement for target %s: %w", targetID, ErrNotFound)
	}
	return r, err
}

// ROReplacementsIn lists requests in a rest state with no operating saga
// (what the tasks drive), oldest first.
func (s *Store) ROReplacementsIn(ctx context.Context, state ReadOnlyState) ([]ROReplacement, error) {
	return collectRO(s.pool.Query(ctx, `SELECT `+roColumns+` FROM ro_replacement
		WHERE state = $1 AND operating_saga_id IS NULL ORDER BY request_time, id`, state))
}

// ListROReplacements pages through requests by id, optionally in one state.
func (s *Store) ListROReplacements(ctx context.Context, state ReadOnlyState, after uuid.UUID, limit int) ([]ROReplacement, error) {
	return collectRO(s.pool.Query(ctx, `SELECT `+roColumns+` FROM ro_replacement
		WHERE ($1 = '' OR state = $1) AND id > $2 ORDER BY id LIMIT $3`, string(state), after, limit))
}

// SetROAllocating is R1: the start saga claims a Requested request.
func (s *Store) SetROAllocating(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, roRequests, id, string(RORequested), string(ROAllocating), saga)
}

// UndoROAllocating is R2.
func (s *Store) UndoROAllocating(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(ROAllocating), to: string(RORequested),
	})
}

// SetROReplacementDone is R3: the start saga's commit, recording the new
// region, the reference volume that keeps it alive, and the stash volume.
func (s *Store) SetROReplacementDone(ctx context.Context, id, saga, newRegion, newRegionVolume, oldSnapshotVolume uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(ROAllocating), to: string(ROReplacementDone),
		set:         "new_region_id = $4, new_region_volume_id = $5, old_snapshot_volume_id = $6",
		args:        []any{newRegion, newRegionVolume, oldSnapshotVolume},
		contradicts: []string{string(RORequested)},
		verify: func(ctx context.Context, tx pgx.Tx) error {
			var ok bool
			err := tx.QueryRow(ctx, `SELECT new_region_id = $2 AND new_region_volume_id = $3 AND old_snapshot_volume_id = $4
				FROM ro_replacement WHERE id = $1`, id, newRegion, newRegionVolume, oldSnapshotVolume).Scan(&ok)
			if err == nil && !ok {
				return fmt.Errorf("%w: read-only replacement %s is replacement_done with other ids", ErrConflict, id)
			}
			return err
		},
	})
}

// SetRODataLost ends a request the start saga found without any clone
// source: terminal, releasing the lock, with the reason recorded.
func (s *Store) SetRODataLost(ctx context.Context, id, saga uuid.UUID, reason string) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(ROAllocating), to: string(RODataLost),
		set: "end_reason = $4", args: []any{reason},
		contradicts: []string{string(RORequested)},
		releaseLock: true,
	})
}

// SetROCompleteFromAllocating ends a request the start saga found with its
// target already gone (nothing references it any more: nothing to replace,
// nothing lost), releasing the lock. The Allocating-state counterpart of R10.
func (s *Store) SetROCompleteFromAllocating(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(ROAllocating), to: string(ROComplete),
		contradicts: []string{string(RORequested)},
		releaseLock: true,
	})
}

// SetRODeletingOldVolume is R4: the garbage-collect saga claims.
func (s *Store) SetRODeletingOldVolume(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, roRequests, id, string(ROReplacementDone), string(RODeletingOldVolume), saga)
}

// UndoRODeletingOldVolume is R5.
func (s *Store) UndoRODeletingOldVolume(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(RODeletingOldVolume), to: string(ROReplacementDone),
	})
}

// SetRORunning is R6: the garbage-collect saga's commit.
func (s *Store) SetRORunning(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(RODeletingOldVolume), to: string(RORunning),
		contradicts: []string{string(ROReplacementDone)},
	})
}

// SetROCompleting is R7: the finish saga claims.
func (s *Store) SetROCompleting(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, roRequests, id, string(RORunning), string(ROCompleting), saga)
}

// UndoROCompleting is R8.
func (s *Store) UndoROCompleting(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(ROCompleting), to: string(RORunning),
	})
}

// SetROComplete is R9: the finish saga's commit, releasing the snapshot
// volume's lock in the same transaction.
func (s *Store) SetROComplete(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roRequests, id, saga, exit{
		intermediate: string(ROCompleting), to: string(ROComplete),
		contradicts: []string{string(RORunning)},
		releaseLock: true,
	})
}

// SetROCompleteFromRequested is R10: the start task found the target gone
// before anything was allocated. Releases the lock in the same transaction.
func (s *Store) SetROCompleteFromRequested(ctx context.Context, id uuid.UUID) error {
	return s.shortcut(ctx, roRequests, id, string(RORequested), string(ROComplete), "new_region_volume_id IS NULL")
}
