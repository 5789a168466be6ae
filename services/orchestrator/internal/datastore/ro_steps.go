package datastore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// StepState is a replacement step's state.
type StepState string

// Step states (spec/replacement.md §2.2) with Collecting, the step garbage
// collect's claim (§9.4).
const (
	StepRequested     StepState = "requested"
	StepRunning       StepState = "running"
	StepComplete      StepState = "complete"
	StepCollecting    StepState = "collecting"
	StepVolumeDeleted StepState = "volume_deleted"
)

// Step is one volume's part of a read-only replacement.
type Step struct {
	ID                  uuid.UUID
	RequestID           uuid.UUID
	RequestTime         time.Time
	TimeModified        time.Time
	VolumeID            uuid.UUID
	OldSnapshotVolumeID *uuid.UUID
	State               StepState
	OperatingSagaID     *uuid.UUID
}

const stepColumns = `id, request_id, request_time, time_modified, volume_id, old_snapshot_volume_id, state, operating_saga_id`

func scanStep(row pgx.Row) (Step, error) {
	var st Step
	err := row.Scan(&st.ID, &st.RequestID, &st.RequestTime, &st.TimeModified, &st.VolumeID, &st.OldSnapshotVolumeID, &st.State, &st.OperatingSagaID)
	return st, err
}

func collectSteps(rows pgx.Rows, err error) ([]Step, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Step, error) { return scanStep(r) })
}

// StepInsertResult says what InsertStep did.
type StepInsertResult struct {
	// Inserted is true when a new step was created.
	Inserted bool
	// Existing is the step that already handles the volume (when not
	// inserted).
	Existing uuid.UUID
}

// InsertStep creates a step for a volume still referencing a request's old
// target, taking the volume's repair lock in the same transaction
// (spec/replacement.md §2.5). It refuses, without error:
//   - a volume that is some step's stash (replacing inside a stash would
//     chase the target from stash to stash forever);
//   - a volume that already has a step in progress (any non-terminal step,
//     not only the first one found).
//
// ErrLockHeld when another repair holds the volume.
func (s *Store) InsertStep(ctx context.Context, st Step) (StepInsertResult, error) {
	var res StepInsertResult
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		res = StepInsertResult{}
		var existing uuid.UUID
		err := tx.QueryRow(ctx, `SELECT id FROM ro_replacement_step WHERE old_snapshot_volume_id = $1 LIMIT 1`, st.VolumeID).Scan(&existing)
		if err == nil {
			res.Existing = existing
			return nil
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		err = tx.QueryRow(ctx, `SELECT id FROM ro_replacement_step
			WHERE volume_id = $1 AND state IN ('requested', 'running') ORDER BY request_time LIMIT 1`, st.VolumeID).Scan(&existing)
		if err == nil {
			res.Existing = existing
			return nil
		} else if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		if err := lockVolume(ctx, tx, st.VolumeID, st.ID, HolderStep); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO ro_replacement_step (id, request_id, volume_id, state) VALUES ($1, $2, $3, 'requested')`,
			st.ID, st.RequestID, st.VolumeID)
		res.Inserted = err == nil
		return err
	})
	return res, err
}

// GetStep returns a step, or ErrNotFound.
func (s *Store) GetStep(ctx context.Context, id uuid.UUID) (Step, error) {
	st, err := scanStep(s.pool.QueryRow(ctx, `SELECT `+stepColumns+` FROM ro_replacement_step WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return st, fmt.Errorf("step %s: %w", id, ErrNotFound)
	}
	return st, err
}

// StepsIn lists up to limit steps in a rest state with no operating saga,
// oldest first.
func (s *Store) StepsIn(ctx context.Context, state StepState, limit int) ([]Step, error) {
	return collectSteps(s.pool.Query(ctx, `SELECT `+stepColumns+` FROM ro_replacement_step
		WHERE state = $1 AND operating_saga_id IS NULL ORDER BY request_time, id LIMIT $2`, state, limit))
}

// StepsOfRequest lists a request's steps, optionally in one state.
func (s *Store) StepsOfRequest(ctx context.Context, requestID uuid.UUID, state StepState) ([]Step, error) {
	return collectSteps(s.pool.Query(ctx, `SELECT `+stepColumns+` FROM ro_replacement_step
		WHERE request_id = $1 AND ($2 = '' OR state = $2) ORDER BY request_time, id`, requestID, string(state)))
}

// ListSteps pages through steps by id, optionally filtered.
func (s *Store) ListSteps(ctx context.Context, requestID *uuid.UUID, state StepState, after uuid.UUID, limit int) ([]Step, error) {
	return collectSteps(s.pool.Query(ctx, `SELECT `+stepColumns+` FROM ro_replacement_step
		WHERE ($1::uuid IS NULL OR request_id = $1) AND ($2 = '' OR state = $2) AND id > $3 ORDER BY id LIMIT $4`,
		requestID, string(state), after, limit))
}

// StepCounts counts a request's steps by state (every request when nil).
func (s *Store) StepCounts(ctx context.Context, requestID *uuid.UUID) (map[StepState]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT state, count(*) FROM ro_replacement_step
		WHERE $1::uuid IS NULL OR request_id = $1 GROUP BY state`, requestID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[StepState]int64{}
	for rows.Next() {
		var st StepState
		var n int64
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[st] = n
	}
	return out, rows.Err()
}

// InProgressSteps counts a request's steps that are not VolumeDeleted: a
// Complete step still counts until its stash is collected (§8.3).
func (s *Store) InProgressSteps(ctx context.Context, requestID uuid.UUID) (int64, error) {
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM ro_replacement_step
		WHERE request_id = $1 AND state IN ('requested', 'running', 'complete', 'collecting')`, requestID).Scan(&n)
	return n, err
}

// HasStepsInProgress is InProgressSteps > 0 at the cost of one index probe
// (the finish task asks after every collected step of a fan-out).
func (s *Store) HasStepsInProgress(ctx context.Context, requestID uuid.UUID) (bool, error) {
	var any bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ro_replacement_step
		WHERE request_id = $1 AND state IN ('requested', 'running', 'complete', 'collecting'))`, requestID).Scan(&any)
	return any, err
}

// SetStepRunning is S1: the step saga claims a Requested step.
func (s *Store) SetStepRunning(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, roSteps, id, string(StepRequested), string(StepRunning), saga)
}

// UndoStepRunning is S2.
func (s *Store) UndoStepRunning(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roSteps, id, saga, exit{intermediate: string(StepRunning), to: string(StepRequested)})
}

// SetStepComplete is S3: the step saga's commit, recording the stash and
// releasing the volume's lock in the same transaction.
func (s *Store) SetStepComplete(ctx context.Context, id, saga, stash uuid.UUID) error {
	return s.exitIntermediate(ctx, roSteps, id, saga, exit{
		intermediate: string(StepRunning), to: string(StepComplete),
		set: "old_snapshot_volume_id = $4", args: []any{stash},
		contradicts: []string{string(StepRequested)},
		releaseLock: true,
		verify: func(ctx context.Context, tx pgx.Tx) error {
			var got *uuid.UUID
			if err := tx.QueryRow(ctx, `SELECT old_snapshot_volume_id FROM ro_replacement_step WHERE id = $1`, id).Scan(&got); err != nil {
				return err
			}
			if got == nil || *got != stash {
				return fmt.Errorf("%w: step %s is complete with another stash", ErrConflict, id)
			}
			return nil
		},
	})
}

// SetStepCollecting claims a Complete step for the step garbage collect, so
// two task passes never collect the same stash concurrently.
func (s *Store) SetStepCollecting(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, roSteps, id, string(StepComplete), string(StepCollecting), saga)
}

// UndoStepCollecting returns a Collecting step to Complete.
func (s *Store) UndoStepCollecting(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roSteps, id, saga, exit{intermediate: string(StepCollecting), to: string(StepComplete)})
}

// SetStepVolumeDeleted is S4: the step garbage collect's commit.
func (s *Store) SetStepVolumeDeleted(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, roSteps, id, saga, exit{
		intermediate: string(StepCollecting), to: string(StepVolumeDeleted),
		contradicts: []string{string(StepComplete)},
	})
}

// SetStepVolumeDeletedFromRequested is S5: the step task retires a step whose
// volume is gone or no longer references the target, releasing its lock.
func (s *Store) SetStepVolumeDeletedFromRequested(ctx context.Context, id uuid.UUID) error {
	return s.shortcut(ctx, roSteps, id, string(StepRequested), string(StepVolumeDeleted), "old_snapshot_volume_id IS NULL")
}
