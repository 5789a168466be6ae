package store

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The batch swap's transitions (docs/replacement.md, "The batch swap"):
// SetStepRunning, UndoStepRunning and SetStepComplete for many steps of one
// request under one saga, each in one transaction, with the per-step rules
// of the state lock (transition.go) applied to every step.

// SetStepsRunning claims, for saga, Requested steps among ids, in the
// order given and at most as many as the rack_steps budget admits, and
// returns the ones it claimed. A re-run returns exactly the steps the saga
// already holds and claims no more (a step Running under saga can only
// have been claimed by it). No step claimable is a *BudgetError when the
// budget is full, else ErrConflict (every step moved on).
func (s *Store) SetStepsRunning(ctx context.Context, ids []uuid.UUID, saga uuid.UUID) ([]uuid.UUID, error) {
	var out []uuid.UUID
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = stepsHeld(ctx, tx, ids, saga, StepRunning); err != nil || len(out) > 0 {
			return err
		}
		var admit *int
		limit, err := s.rackStepsLimit(ctx, tx)
		if err != nil {
			return err
		}
		if limit > 0 {
			var n int
			if err := tx.QueryRow(ctx, `SELECT count(*) FROM ro_replacement_step WHERE state = 'running'`).Scan(&n); err != nil {
				return err
			}
			if full(limit, n) {
				return &BudgetError{Budget: BudgetRackSteps, Limit: limit, InUse: n}
			}
			left := limit - n
			admit = &left
		}
		rows, err := tx.Query(ctx, `UPDATE ro_replacement_step SET state = 'running', operating_saga_id = $2, time_modified = now()
			WHERE id IN (
				SELECT id FROM ro_replacement_step
				WHERE id = ANY($1::uuid[]) AND state = 'requested' AND operating_saga_id IS NULL
				ORDER BY array_position($1::uuid[], id) LIMIT $3)
			RETURNING id`, ids, saga, admit)
		out, err = claimedInOrder(rows, err, ids, StepRequested)
		return err
	})
	return out, err
}

// rackStepsLimit is the rack_steps budget in force (0: unlimited), as
// checkStepBudget reads it.
func (s *Store) rackStepsLimit(ctx context.Context, tx pgx.Tx) (int, error) {
	limit := s.configured.RackSteps
	var v *int
	if err := tx.QueryRow(ctx, `SELECT value FROM rebuild_budget WHERE name = $1`, BudgetRackSteps).Scan(&v); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return 0, err
	}
	if v != nil {
		limit = *v
	}
	return limit, nil
}

// inOrder returns the members of subset in the order of all.
func inOrder(all, subset []uuid.UUID) []uuid.UUID {
	out := make([]uuid.UUID, 0, len(subset))
	for _, id := range all {
		if slices.Contains(subset, id) {
			out = append(out, id)
		}
	}
	return out
}

// UndoStepsRunning returns to Requested every step among ids that saga
// holds Running; the others are left alone (never claimed by it, or
// already returned: an undo accepts every state, as UndoStepRunning does).
func (s *Store) UndoStepsRunning(ctx context.Context, ids []uuid.UUID, saga uuid.UUID) error {
	return s.undoSteps(ctx, ids, saga, StepRunning, StepRequested)
}

// claimedInOrder reads the ids a claim's UPDATE returned, in the order of
// ids; none is ErrConflict (every step had moved on from the state the
// claim takes steps in).
func claimedInOrder(rows pgx.Rows, err error, ids []uuid.UUID, from StepState) ([]uuid.UUID, error) {
	if err != nil {
		return nil, err
	}
	claimed, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	if len(claimed) == 0 {
		return nil, fmt.Errorf("%w: none of the %d replacement steps is %s", ErrConflict, len(ids), from)
	}
	return inOrder(ids, claimed), nil
}

// stepsHeld returns, in the order of ids, the steps among them that saga
// holds in state (a claim's re-run finds its own claim).
func stepsHeld(ctx context.Context, tx pgx.Tx, ids []uuid.UUID, saga uuid.UUID, state StepState) ([]uuid.UUID, error) {
	rows, err := tx.Query(ctx, `SELECT id FROM ro_replacement_step
		WHERE id = ANY($1::uuid[]) AND state = $3 AND operating_saga_id = $2`, ids, saga, string(state))
	if err != nil {
		return nil, err
	}
	mine, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil || len(mine) == 0 {
		return nil, err
	}
	return inOrder(ids, mine), nil
}

// undoSteps moves every step among ids that saga holds in from back to
// to, unclaimed; the others are left alone.
func (s *Store) undoSteps(ctx context.Context, ids []uuid.UUID, saga uuid.UUID, from, to StepState) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE ro_replacement_step SET state = $4, operating_saga_id = NULL, time_modified = now()
			WHERE id = ANY($1::uuid[]) AND state = $3 AND operating_saga_id = $2`, ids, saga, string(from), string(to))
		return err
	})
}

// SetStepsComplete is SetStepComplete for each of steps (with the stash at
// the same index), in one transaction: Running under saga → Complete with
// its stash, releasing its volume's lock. A step found already moved on is
// accepted as SetStepComplete accepts it, except Requested with no saga
// (its claim was undone) and Complete with another stash: ErrConflict, and
// nothing is written.
func (s *Store) SetStepsComplete(ctx context.Context, saga uuid.UUID, steps, stashes []uuid.UUID) error {
	if len(steps) != len(stashes) {
		return fmt.Errorf("%d steps, %d stashes", len(steps), len(stashes))
	}
	var released bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		released = false
		rows, err := tx.Query(ctx, `UPDATE ro_replacement_step s
			SET state = 'complete', operating_saga_id = NULL, old_snapshot_volume_id = c.stash, time_modified = now()
			FROM unnest($1::uuid[], $2::uuid[]) AS c(id, stash)
			WHERE s.id = c.id AND s.state = 'running' AND s.operating_saga_id = $3
			RETURNING s.id`, steps, stashes, saga)
		if err != nil {
			return err
		}
		done, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		if len(done) < len(steps) {
			// A re-run: each step the update missed must show this
			// saga's commit, not its undo.
			rows, err := tx.Query(ctx, `SELECT c.id, s.state, s.operating_saga_id, s.old_snapshot_volume_id, c.stash
				FROM unnest($1::uuid[], $2::uuid[]) AS c(id, stash) LEFT JOIN ro_replacement_step s ON s.id = c.id
				WHERE NOT (c.id = ANY($3::uuid[]))`, steps, stashes, done)
			if err != nil {
				return err
			}
			var id, want uuid.UUID
			var state *string
			var cur, got *uuid.UUID
			_, err = pgx.ForEachRow(rows, []any{&id, &state, &cur, &got, &want}, func() error {
				switch {
				case state == nil:
					return fmt.Errorf("%s %s: %w", roSteps.what, id, ErrNotFound)
				case *state == string(StepRequested) && cur == nil:
					return conflictf(roSteps.what, id, *state, cur)
				case *state == string(StepComplete) && (got == nil || *got != want):
					return fmt.Errorf("%w: step %s is complete with another stash", ErrConflict, id)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		if len(done) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM volume_repair WHERE repair_id = ANY($1::uuid[])`, done); err != nil {
				return err
			}
			if _, err := tx.Exec(ctx, `DELETE FROM volume_lock_waiter WHERE waiter_id = ANY($1::uuid[])`, done); err != nil {
				return err
			}
			released = true
		}
		return nil
	})
	if err == nil && released {
		s.released()
	}
	return err
}

// The batch collect's transitions (docs/replacement.md, "The batch
// collect"): SetStepCollecting, UndoStepCollecting and SetStepVolumeDeleted
// for many Complete steps of one request under one saga, each in one
// transaction.

// SetStepsCollecting claims, for saga, the Complete steps among ids whose
// stash is the one at the same index of stashes, and returns the ones it
// claimed, in the order given. A re-run returns exactly the steps the saga
// already holds and claims no more. None claimable is ErrConflict.
func (s *Store) SetStepsCollecting(ctx context.Context, ids, stashes []uuid.UUID, saga uuid.UUID) ([]uuid.UUID, error) {
	if len(ids) != len(stashes) {
		return nil, fmt.Errorf("%d steps, %d stashes", len(ids), len(stashes))
	}
	var out []uuid.UUID
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = stepsHeld(ctx, tx, ids, saga, StepCollecting); err != nil || len(out) > 0 {
			return err
		}
		rows, err := tx.Query(ctx, `UPDATE ro_replacement_step s
			SET state = 'collecting', operating_saga_id = $3, time_modified = now()
			FROM unnest($1::uuid[], $2::uuid[]) AS c(id, stash)
			WHERE s.id = c.id AND s.state = 'complete' AND s.operating_saga_id IS NULL
				AND s.old_snapshot_volume_id = c.stash
			RETURNING s.id`, ids, stashes, saga)
		out, err = claimedInOrder(rows, err, ids, StepComplete)
		return err
	})
	return out, err
}

// UndoStepsCollecting returns to Complete every step among ids that saga
// holds Collecting; the others are left alone (an undo accepts every
// state, as UndoStepCollecting does).
func (s *Store) UndoStepsCollecting(ctx context.Context, ids []uuid.UUID, saga uuid.UUID) error {
	return s.undoSteps(ctx, ids, saga, StepCollecting, StepComplete)
}

// SetStepsCollected is the batch collect's commit, in one transaction:
// each of collected, held Collecting by saga, → VolumeDeleted (as
// SetStepVolumeDeleted); each of back → Complete again, unclaimed, for the
// per-step collect. A re-run finds its own commit: a collected step must
// be VolumeDeleted (Complete with no saga is this saga's undo, and
// ErrConflict with nothing written); a step sent back may have moved on
// since.
func (s *Store) SetStepsCollected(ctx context.Context, saga uuid.UUID, collected, back []uuid.UUID) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE ro_replacement_step
			SET state = CASE WHEN id = ANY($1::uuid[]) THEN 'volume_deleted' ELSE 'complete' END,
				operating_saga_id = NULL, time_modified = now()
			WHERE (id = ANY($1::uuid[]) OR id = ANY($2::uuid[])) AND state = 'collecting' AND operating_saga_id = $3
			RETURNING id`, collected, back, saga)
		if err != nil {
			return err
		}
		done, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		if err != nil {
			return err
		}
		var missed []uuid.UUID
		for _, id := range collected {
			if !slices.Contains(done, id) {
				missed = append(missed, id)
			}
		}
		if len(missed) == 0 {
			return nil
		}
		rows, err = tx.Query(ctx, `SELECT c.id, s.state, s.operating_saga_id
			FROM unnest($1::uuid[]) AS c(id) LEFT JOIN ro_replacement_step s ON s.id = c.id`, missed)
		if err != nil {
			return err
		}
		var id uuid.UUID
		var state *string
		var cur *uuid.UUID
		_, err = pgx.ForEachRow(rows, []any{&id, &state, &cur}, func() error {
			switch {
			case state == nil:
				return fmt.Errorf("%s %s: %w", roSteps.what, id, ErrNotFound)
			case *state != string(StepVolumeDeleted):
				return conflictf(roSteps.what, id, *state, cur)
			}
			return nil
		})
		return err
	})
}
