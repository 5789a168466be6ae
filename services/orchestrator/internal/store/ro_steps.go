package store

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

// Step states (docs/replacement.md, "Step") with Collecting, the step
// garbage collect's claim.
const (
	StepRequested     StepState = "requested"
	StepRunning       StepState = "running"
	StepComplete      StepState = "complete"
	StepCollecting    StepState = "collecting"
	StepVolumeDeleted StepState = "volume_deleted"
)

// StepStates lists every step state, in the order above.
var StepStates = []StepState{StepRequested, StepRunning, StepComplete, StepCollecting, StepVolumeDeleted}

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
	Attempts
}

const stepColumns = `id, request_id, request_time, time_modified, volume_id, old_snapshot_volume_id, state, operating_saga_id, ` + attemptsColumns

func scanStep(row pgx.Row) (Step, error) {
	var st Step
	err := row.Scan(&st.ID, &st.RequestID, &st.RequestTime, &st.TimeModified, &st.VolumeID, &st.OldSnapshotVolumeID, &st.State, &st.OperatingSagaID,
		&st.Attempts.Attempts, &st.LastError, &st.LastErrorTime)
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
	// LockHeld: another repair holds the volume (InsertSteps only;
	// InsertStep returns ErrLockHeld).
	LockHeld bool
}

// InsertStep creates a step for a volume still referencing a request's old
// target, taking the volume's repair lock in the same transaction
// (docs/replacement.md, "Records and the state lock"). It refuses, without
// error:
//   - a volume that is some step's stash (replacing inside a stash would
//     chase the target from stash to stash forever);
//   - a volume that already has a step in progress (any non-terminal step,
//     not only the first one found).
//
// ErrLockHeld when another repair holds the volume.
func (s *Store) InsertStep(ctx context.Context, st Step) (StepInsertResult, error) {
	res, err := s.InsertSteps(ctx, st.RequestID, []Step{st})
	if err != nil {
		return StepInsertResult{}, err
	}
	if res[0].LockHeld {
		return StepInsertResult{}, ErrLockHeld
	}
	return res[0], nil
}

// insertStepsSQL is InsertStep for many volumes in one statement: each
// candidate is refused if it is a stash or has a step in progress, then
// locked (a held lock, or an older waiter queued for the volume, refuses
// it too, and it joins the queue under its request's id), then inserted. One row per
// candidate, in input order: the existing step, whether it was inserted.
var insertStepsSQL = `
WITH cand AS (
	SELECT c.ord, c.id, c.volume_id FROM unnest($2::uuid[], $3::uuid[]) WITH ORDINALITY AS c(id, volume_id, ord)
), existing AS (
	SELECT c.ord, coalesce(
		(SELECT s.id FROM ro_replacement_step s WHERE s.old_snapshot_volume_id = c.volume_id),
		(SELECT s.id FROM ro_replacement_step s
		 WHERE s.volume_id = c.volume_id AND s.state IN ('requested', 'running') ORDER BY s.request_time LIMIT 1)
	) AS step_id
	FROM cand c
), locked AS (
	INSERT INTO volume_repair (volume_id, repair_id, holder_kind)
	SELECT c.volume_id, c.id, $4 FROM cand c JOIN existing e USING (ord)
	WHERE e.step_id IS NULL AND NOT EXISTS (
		SELECT 1 FROM volume_lock_waiter w
		WHERE w.volume_id = c.volume_id AND w.waiter_id <> $1 AND ` + waiterLiveSQL("$5") + `
		  AND w.since < coalesce((SELECT m.since FROM volume_lock_waiter m WHERE m.volume_id = c.volume_id AND m.waiter_id = $1), now()))
	ON CONFLICT (volume_id) DO NOTHING
	RETURNING repair_id, volume_id
), inserted AS (
	INSERT INTO ro_replacement_step (id, request_id, volume_id, state)
	SELECT repair_id, $1, volume_id, 'requested' FROM locked
	RETURNING id
), queued AS (
	INSERT INTO volume_lock_waiter (volume_id, waiter_id, kind)
	SELECT c.volume_id, $1, $4 FROM cand c JOIN existing e USING (ord)
	WHERE e.step_id IS NULL AND c.volume_id NOT IN (SELECT volume_id FROM locked)
	ON CONFLICT (volume_id, waiter_id) DO UPDATE
	SET last_attempt = now(), attempts = volume_lock_waiter.attempts + 1
	RETURNING volume_id
), served AS (
	DELETE FROM volume_lock_waiter w USING locked l
	WHERE w.volume_id = l.volume_id AND w.waiter_id = $1
	RETURNING w.volume_id
)
SELECT e.step_id, c.id IN (SELECT id FROM inserted)
FROM cand c JOIN existing e USING (ord) ORDER BY c.ord`

// InsertSteps is InsertStep for several volumes of one request in one
// transaction (the step task creates a fan-out's steps in batches): one
// result per step given, in order; a volume whose lock another repair holds
// comes back LockHeld (and counts as a lost contention) instead of failing
// the batch.
func (s *Store) InsertSteps(ctx context.Context, requestID uuid.UUID, steps []Step) ([]StepInsertResult, error) {
	ids := make([]uuid.UUID, len(steps))
	volumes := make([]uuid.UUID, len(steps))
	for i, st := range steps {
		ids[i], volumes[i] = st.ID, st.VolumeID
	}
	before := s.releases.Load()
	out := make([]StepInsertResult, 0, len(steps))
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		rows, err := tx.Query(ctx, insertStepsSQL, requestID, ids, volumes, HolderStep, lockWaiterLive)
		if err != nil {
			return err
		}
		var existing *uuid.UUID
		var inserted bool
		_, err = pgx.ForEachRow(rows, []any{&existing, &inserted}, func() error {
			r := StepInsertResult{Inserted: inserted}
			switch {
			case inserted:
			case existing != nil:
				r.Existing = *existing
			default:
				r.LockHeld = true
			}
			out = append(out, r)
			return nil
		})
		return err
	})
	if err != nil {
		return nil, err
	}
	for _, r := range out {
		if r.LockHeld {
			s.lostContention(before)
			break
		}
	}
	return out, nil
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
func (s *Store) ListSteps(ctx context.Context, f StepFilter, after uuid.UUID, limit int) ([]Step, error) {
	return collectSteps(s.pool.Query(ctx, `SELECT `+stepColumns+` FROM ro_replacement_step
		WHERE ($1::uuid IS NULL OR request_id = $1) AND ($2 = '' OR state = $2)
		  AND ($5::uuid IS NULL OR volume_id = $5) AND id > $3 ORDER BY id LIMIT $4`,
		f.RequestID, string(f.State), after, limit, f.VolumeID))
}

// StepFilter narrows ListSteps; every field is optional and they narrow
// together.
type StepFilter struct {
	RequestID *uuid.UUID
	State     StepState
	// VolumeID keeps the steps of one referencing volume
	// (ro_replacement_step_by_volume).
	VolumeID *uuid.UUID
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
// Complete step still counts until its stash is collected
// (docs/replacement.md, "Step").
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
//
// A first claim is refused with a *BudgetError when the rack_steps budget
// is full: the task admits steps within it, and this check keeps it exact
// whatever the task believed (a saga adopted from an old leader, say).
func (s *Store) SetStepRunning(ctx context.Context, id, saga uuid.UUID) error {
	return s.claimChecked(ctx, roSteps, id, string(StepRequested), string(StepRunning), saga, func(tx pgx.Tx) error {
		return s.checkStepBudget(ctx, tx, id)
	})
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
