package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/apierr"
)

// ErrRefused means an operator's request cannot be carried out in the
// record's current state (FailedPrecondition); its message says why.
var ErrRefused = apierr.New(apierr.Precondition, "refused")

// Cancel ends a request an operator does not want carried out. Only a
// Requested one is cancelled (nothing was done for it yet): it ends
// Cancelled with the reason, releasing its repair lock in the same
// transaction. An already cancelled one is returned unchanged. Every other
// state is ErrRefused with the reason: a saga is working on it, or the
// new copy is already in use and the request finishes by itself.
func (s *Store) Cancel(ctx context.Context, id uuid.UUID, reason string) error {
	var released bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		released = false
		for _, t := range []recordTable{roRequests, rwRequests} {
			var state string
			var saga *uuid.UUID
			err := tx.QueryRow(ctx, `SELECT state, operating_saga_id FROM `+t.name+` WHERE id = $1`, id).Scan(&state, &saga)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return err
			}
			if err := cancellable(t, id, state, saga); err != nil {
				return err
			}
			if state == "cancelled" {
				return nil
			}
			if _, err := tx.Exec(ctx, `UPDATE `+t.name+` SET state = 'cancelled', end_reason = $2, time_modified = now()
				WHERE id = $1 AND state = 'requested' AND operating_saga_id IS NULL`, id, reason); err != nil {
				return err
			}
			released = true
			return unlockByRepair(ctx, tx, id)
		}
		return fmt.Errorf("replacement %s: %w", id, ErrNotFound)
	})
	if err == nil && released {
		s.released()
	}
	return err
}

// cancellable says why a request in state cannot be cancelled (nil when it
// can, or already is).
func cancellable(t recordTable, id uuid.UUID, state string, saga *uuid.UUID) error {
	switch {
	case state == "requested" || state == "cancelled":
		return nil
	case saga != nil:
		return fmt.Errorf("%w: %s %s is %s: saga %s is working on it; cancel once it is at rest, or abandon the saga", ErrRefused, t.what, id, state, saga)
	case t == roRequests && (state == string(ROReplacementDone) || state == string(RORunning)):
		return fmt.Errorf("%w: %s %s is %s: the snapshot already names the new copy and the old target's references are moving to it; it completes by itself", ErrRefused, t.what, id, state)
	case t == rwRequests && (state == string(RWRunning) || state == string(RWReplacementDone)):
		return fmt.Errorf("%w: %s %s is %s: the volume already names the new region; the repair finishes, or past its bounds ends the request needs_operator, by itself", ErrRefused, t.what, id, state)
	}
	return fmt.Errorf("%w: %s %s already ended %s", ErrRefused, t.what, id, state)
}

// Reconciled is a record an abandoned saga held, and where it went.
type Reconciled struct {
	What     string // "read-only replacement", "replacement step", "region replacement"
	ID       uuid.UUID
	From, To string
}

// rest is where an abandoned saga's claim leaves each intermediate state:
// the state its claim came from, from which the record's task starts the
// next saga (the claim's own undo, without the saga).
var rest = map[recordTable]map[string]string{
	roRequests: {"allocating": "requested", "deleting_old_volume": "replacement_done", "completing": "running"},
	roSteps:    {"running": "requested", "collecting": "complete"},
	rwRequests: {"allocating": "requested", "driving": "running", "completing": "replacement_done"},
}

// HeldBy lists the records saga sagaID holds now (From is each one's
// state; To is empty).
func (s *Store) HeldBy(ctx context.Context, sagaID uuid.UUID) ([]Reconciled, error) {
	var out []Reconciled
	for _, t := range []recordTable{roRequests, roSteps, rwRequests} {
		rows, err := s.pool.Query(ctx, `SELECT id, state FROM `+t.name+` WHERE operating_saga_id = $1 ORDER BY id`, sagaID)
		if err != nil {
			return nil, err
		}
		var r Reconciled
		_, err = pgx.ForEachRow(rows, []any{&r.ID, &r.From}, func() error {
			r.What = t.what
			out = append(out, r)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// WhereNow fills each record's To with its state now (empty when it is
// gone), for an operator to see where a saga's unwind left what it held.
func (s *Store) WhereNow(ctx context.Context, recs []Reconciled) error {
	tables := map[string]recordTable{roRequests.what: roRequests, roSteps.what: roSteps, rwRequests.what: rwRequests}
	for i := range recs {
		t, ok := tables[recs[i].What]
		if !ok {
			return fmt.Errorf("unknown record kind %q", recs[i].What)
		}
		err := s.pool.QueryRow(ctx, `SELECT state FROM `+t.name+` WHERE id = $1`, recs[i].ID).Scan(&recs[i].To)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
	}
	return nil
}

// ReconcileAbandoned puts every record an abandoned saga held back in the
// rest state its claim came from, with the saga id cleared and the
// abandonment counted as an attempt with note as its error: the record's
// task then starts a new saga, and its repair lock keeps a live holder. An
// abandoned saga's remaining effects are the operator's to have repaired
// (that is what abandoning says); the record no longer waits on a saga
// that will never move again. Idempotent: a second call finds nothing.
func (s *Store) ReconcileAbandoned(ctx context.Context, sagaID uuid.UUID, note string) ([]Reconciled, error) {
	if len(note) > maxErrorLen {
		note = note[:maxErrorLen] + "…"
	}
	var out []Reconciled
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		for _, t := range []recordTable{roRequests, roSteps, rwRequests} {
			rows, err := tx.Query(ctx, `SELECT id, state FROM `+t.name+` WHERE operating_saga_id = $1`, sagaID)
			if err != nil {
				return err
			}
			var id uuid.UUID
			var state string
			var found []Reconciled
			_, err = pgx.ForEachRow(rows, []any{&id, &state}, func() error {
				to, ok := rest[t][state]
				if !ok {
					return fmt.Errorf("%s %s is %s under saga %s: not an intermediate state", t.what, id, state, sagaID)
				}
				found = append(found, Reconciled{What: t.what, ID: id, From: state, To: to})
				return nil
			})
			if err != nil {
				return err
			}
			for _, r := range found {
				if _, err := tx.Exec(ctx, `UPDATE `+t.name+` SET state = $3, operating_saga_id = NULL, time_modified = now(),
					attempts = attempts + 1, last_error = $4, last_error_time = now()
					WHERE id = $1 AND operating_saga_id = $2`, r.ID, sagaID, r.To, note); err != nil {
					return err
				}
			}
			out = append(out, found...)
		}
		return nil
	})
	return out, err
}

// ReconcileOrphans applies ReconcileAbandoned to every record whose
// operating saga is abandoned: recovery abandons a saga whose log it cannot
// understand, and its records must not wait on it for ever. It returns
// what it put back.
func (s *Store) ReconcileOrphans(ctx context.Context) ([]Reconciled, error) {
	rows, err := s.pool.Query(ctx, `SELECT s.id FROM saga s WHERE s.saga_state = 'abandoned' AND s.id IN (
			SELECT operating_saga_id FROM ro_replacement
			UNION SELECT operating_saga_id FROM ro_replacement_step
			UNION SELECT operating_saga_id FROM rw_replacement)`)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	var out []Reconciled
	for _, id := range ids {
		r, err := s.ReconcileAbandoned(ctx, id, fmt.Sprintf("saga %s was abandoned (its log could not be recovered); its effects are left for an operator", id))
		if err != nil {
			return out, err
		}
		out = append(out, r...)
	}
	return out, nil
}

// Reopen takes a cancelled request back to Requested (an operator asked
// for its target again), retaking its repair lock in the same transaction:
// ErrLockHeld when another repair holds it (the operator retries). The
// attempts and last error stay; the end reason goes. A request that is not
// cancelled is returned unchanged.
func (s *Store) Reopen(ctx context.Context, id uuid.UUID) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var state string
		var volume, waiter uuid.UUID
		var t recordTable
		var kind HolderKind
		err := tx.QueryRow(ctx, `SELECT state, lock_volume_id, old_target_id FROM ro_replacement WHERE id = $1`, id).Scan(&state, &volume, &waiter)
		t, kind = roRequests, HolderReadOnlyReplacement
		if errors.Is(err, pgx.ErrNoRows) {
			err = tx.QueryRow(ctx, `SELECT state, volume_id, old_region_id FROM rw_replacement WHERE id = $1`, id).Scan(&state, &volume, &waiter)
			t, kind = rwRequests, HolderRegionReplacement
		}
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("replacement %s: %w", id, ErrNotFound)
		}
		if err != nil || state != "cancelled" {
			return err
		}
		if err := lockVolume(ctx, tx, volume, id, waiter, kind); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE `+t.name+` SET state = 'requested', end_reason = NULL, time_modified = now()
			WHERE id = $1 AND state = 'cancelled'`, id)
		return err
	})
	return err
}

// IsRecord reports whether id names a request or step (whose lock belongs
// to the record, not to any one saga of it).
func (s *Store) IsRecord(ctx context.Context, id uuid.UUID) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ro_replacement WHERE id = $1)
		OR EXISTS (SELECT 1 FROM ro_replacement_step WHERE id = $1)
		OR EXISTS (SELECT 1 FROM rw_replacement WHERE id = $1)`, id).Scan(&ok)
	return ok, err
}
