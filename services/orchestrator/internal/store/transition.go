package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// The state lock ("operating saga id", docs/replacement.md, "The state lock")
// has three kinds of transition, and their idempotency rules follow from one
// fact: a record in an intermediate state carrying saga S can only be moved
// out of it by S itself.
//
//   - claim: rest state with no saga → intermediate state with S. Re-running
//     it succeeds only if the record is (intermediate, S); anything else is a
//     conflict (another saga owns it, or it moved on).
//   - commit / undo of a claim: (intermediate, S) → next rest state. If the
//     record is no longer (intermediate, S) when re-run, S already moved it —
//     and the record may since have been claimed by the next saga, so the
//     stricter "already in my target state" rule would turn a crash
//     between the commit and its log record into a stuck unwind. We accept
//     any state except the ones that prove the other exit was taken.
//   - shortcut (task, no saga): rest state → terminal state; re-run
//     succeeds when the record is already in the terminal state.
//
// Every mutation also goes through fence.Check (Store.inTx).

// recordTable describes one state-locked table.
type recordTable struct {
	name string // SQL table
	what string // for messages
}

var (
	roRequests = recordTable{name: "ro_replacement", what: "read-only replacement"}
	roSteps    = recordTable{name: "ro_replacement_step", what: "replacement step"}
	rwRequests = recordTable{name: "rw_replacement", what: "region replacement"}
)

// stateOf reads a record's state and operating saga inside tx.
func stateOf(ctx context.Context, tx pgx.Tx, t recordTable, id uuid.UUID) (string, *uuid.UUID, error) {
	var state string
	var saga *uuid.UUID
	err := tx.QueryRow(ctx, `SELECT state, operating_saga_id FROM `+t.name+` WHERE id = $1`, id).Scan(&state, &saga)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil, fmt.Errorf("%s %s: %w", t.what, id, ErrNotFound)
	}
	return state, saga, err
}

// claim moves (from, no saga) → (to, saga).
func (s *Store) claim(ctx context.Context, t recordTable, id uuid.UUID, from, to string, saga uuid.UUID) error {
	return s.claimChecked(ctx, t, id, from, to, saga, nil)
}

// claimChecked is claim with a check that may refuse a first claim (not a
// re-run that finds the claim made) inside its transaction.
func (s *Store) claimChecked(ctx context.Context, t recordTable, id uuid.UUID, from, to string, saga uuid.UUID, check func(pgx.Tx) error) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE `+t.name+` SET state = $3, operating_saga_id = $4, time_modified = now()
			WHERE id = $1 AND state = $2 AND operating_saga_id IS NULL`, id, from, to, saga)
		if err == nil && tag.RowsAffected() == 1 && check != nil {
			return check(tx)
		}
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		state, cur, err := stateOf(ctx, tx, t, id)
		if err != nil {
			return err
		}
		if state == to && cur != nil && *cur == saga {
			return nil
		}
		return conflictf(t.what, id, state, cur)
	})
}

// exit describes a commit or undo out of (intermediate, saga).
type exit struct {
	intermediate string
	to           string
	// set is extra "col = $n" assignments; args are their values starting
	// at $4.
	set  string
	args []any
	// contradicts lists states that prove the other exit was taken: for a
	// commit, the claim's rest state (the claim was undone instead). Undos
	// list none: after an undo lands, another saga may legitimately claim
	// and commit before the undo's re-run looks.
	contradicts []string
	// verify checks a re-run that found the record in `to`, e.g. that the
	// payload columns hold this saga's values.
	verify func(ctx context.Context, tx pgx.Tx) error
	// releaseLock releases the record's repair lock in the same transaction
	// (terminal transitions).
	releaseLock bool
}

func (s *Store) exitIntermediate(ctx context.Context, t recordTable, id, saga uuid.UUID, e exit) error {
	err := s.exitIntermediateTx(ctx, t, id, saga, e)
	if err == nil && e.releaseLock {
		s.released()
	}
	return err
}

func (s *Store) exitIntermediateTx(ctx context.Context, t recordTable, id, saga uuid.UUID, e exit) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		q := `UPDATE ` + t.name + ` SET state = $3, operating_saga_id = NULL, time_modified = now()`
		if e.set != "" {
			q += ", " + e.set
		}
		q += ` WHERE id = $1 AND state = $2 AND operating_saga_id = ` + fmt.Sprintf("$%d", 4+len(e.args))
		args := append([]any{id, e.intermediate, e.to}, e.args...)
		args = append(args, saga)
		tag, err := tx.Exec(ctx, q, args...)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 1 {
			if e.releaseLock {
				return unlockByRepair(ctx, tx, id)
			}
			return nil
		}
		state, cur, err := stateOf(ctx, tx, t, id)
		if err != nil {
			return err
		}
		for _, c := range e.contradicts {
			if state == c && cur == nil {
				return conflictf(t.what, id, state, cur)
			}
		}
		if state == e.to && e.verify != nil {
			return e.verify(ctx, tx)
		}
		return nil
	})
}

// shortcut moves (from, no saga, extra guard) → terminal `to`, releasing the
// record's lock in the same transaction.
func (s *Store) shortcut(ctx context.Context, t recordTable, id uuid.UUID, from, to, guard string) error {
	err := s.shortcutTx(ctx, t, id, from, to, guard)
	if err == nil {
		s.released()
	}
	return err
}

func (s *Store) shortcutTx(ctx context.Context, t recordTable, id uuid.UUID, from, to, guard string) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		q := `UPDATE ` + t.name + ` SET state = $3, time_modified = now()
			WHERE id = $1 AND state = $2 AND operating_saga_id IS NULL`
		if guard != "" {
			q += " AND " + guard
		}
		tag, err := tx.Exec(ctx, q, id, from, to)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			state, cur, err := stateOf(ctx, tx, t, id)
			if err != nil {
				return err
			}
			if state != to {
				return conflictf(t.what, id, state, cur)
			}
		}
		return unlockByRepair(ctx, tx, id)
	})
}
