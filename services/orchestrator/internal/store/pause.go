package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Pause is an operator's hold on one request, or on the rack (RequestID
// uuid.Nil): docs/operations.md, "Pausing and resuming".
type Pause struct {
	RequestID uuid.UUID
	By        string
	Time      time.Time
	Reason    string
}

// Rack reports whether the hold is the rack's.
func (p Pause) Rack() bool { return p.RequestID == uuid.Nil }

// Pauses are the holds in force: the rack's, if any, and each held
// request's own.
type Pauses struct {
	Rack     *Pause
	Requests map[uuid.UUID]Pause
}

// Of is the hold that keeps request from starting anything: its own, else
// the rack's, else nil. Of(uuid.Nil) is the rack's alone.
func (p Pauses) Of(request uuid.UUID) *Pause {
	if own, ok := p.Requests[request]; ok && request != uuid.Nil {
		return &own
	}
	return p.Rack
}

// LoadPauses reads every hold in force. A request's hold counts while the
// request has not ended.
func (s *Store) LoadPauses(ctx context.Context) (Pauses, error) {
	out := Pauses{Requests: map[uuid.UUID]Pause{}}
	var rack Pause
	err := s.pool.QueryRow(ctx, `SELECT paused_by, paused_time, reason FROM rack_pause`).Scan(&rack.By, &rack.Time, &rack.Reason)
	switch {
	case err == nil:
		out.Rack = &rack
	case !errors.Is(err, pgx.ErrNoRows):
		return Pauses{}, err
	}
	rows, err := s.pool.Query(ctx, `
		SELECT p.request_id, p.paused_by, p.paused_time, p.reason FROM replacement_pause p WHERE `+holdOnOpenRequestSQL)
	if err != nil {
		return Pauses{}, err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Pause, error) {
		var p Pause
		err := r.Scan(&p.RequestID, &p.By, &p.Time, &p.Reason)
		return p, err
	})
	if err != nil {
		return Pauses{}, err
	}
	for _, p := range list {
		out.Requests[p.RequestID] = p
	}
	return out, nil
}

// holdOnOpenRequestSQL is true for a row p of replacement_pause whose
// request has not ended: only those holds count.
var holdOnOpenRequestSQL = `(EXISTS (SELECT 1 FROM ro_replacement r WHERE r.id = p.request_id AND r.state NOT IN ` + roTerminalSQL + `)
	OR EXISTS (SELECT 1 FROM rw_replacement r WHERE r.id = p.request_id AND r.state NOT IN ` + rwTerminalSQL + `))`

// The terminal states of each request table, as SQL lists.
const (
	roTerminalSQL = `('complete', 'data_lost', 'cancelled')`
	rwTerminalSQL = `('complete', 'data_lost', 'needs_operator', 'cancelled')`
)

// PauseRequest holds a request: it inserts the hold (keeping an existing
// one's author and time) and withdraws what the request's waiting work
// holds, in one transaction: its Requested steps with their volume locks,
// and its places in lock queues (a request's steps wait under its id). It
// returns the hold in force and how many steps were withdrawn. A request
// that ended is ErrRefused; an unknown one ErrNotFound.
func (s *Store) PauseRequest(ctx context.Context, id uuid.UUID, by, reason string) (Pause, int64, error) {
	var p Pause
	var withdrawn int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		withdrawn = 0
		t, state, err := requestState(ctx, tx, id)
		if err != nil {
			return err
		}
		if ended(t, state) {
			return fmt.Errorf("%w: %s %s already ended %s: there is nothing to pause", ErrRefused, t.what, id, state)
		}
		p = Pause{RequestID: id}
		err = tx.QueryRow(ctx, `
			INSERT INTO replacement_pause (request_id, paused_by, reason) VALUES ($1, $2, $3)
			ON CONFLICT (request_id) DO UPDATE SET request_id = EXCLUDED.request_id
			RETURNING paused_by, paused_time, reason`, id, by, reason).Scan(&p.By, &p.Time, &p.Reason)
		if err != nil {
			return err
		}
		withdrawn, err = withdrawWaiting(ctx, tx, &id)
		return err
	})
	if err == nil && withdrawn > 0 {
		s.released()
	}
	return p, withdrawn, err
}

// ResumeRequest lifts a request's own hold (none is fine). An unknown
// request is ErrNotFound.
func (s *Store) ResumeRequest(ctx context.Context, id uuid.UUID) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if _, _, err := requestState(ctx, tx, id); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `DELETE FROM replacement_pause WHERE request_id = $1`, id)
		return err
	})
}

// PauseRack holds every request (keeping an existing hold's author and
// time) and withdraws what waiting work holds across the rack: every
// Requested step with its volume lock, and every place in a lock queue
// (only the tasks queue, and none of them runs while the rack is held).
func (s *Store) PauseRack(ctx context.Context, by, reason string) (Pause, int64, error) {
	var p Pause
	var withdrawn int64
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		withdrawn = 0
		err := tx.QueryRow(ctx, `
			INSERT INTO rack_pause (paused_by, reason) VALUES ($1, $2)
			ON CONFLICT (singleton) DO UPDATE SET singleton = true
			RETURNING paused_by, paused_time, reason`, by, reason).Scan(&p.By, &p.Time, &p.Reason)
		if err != nil {
			return err
		}
		withdrawn, err = withdrawWaiting(ctx, tx, nil)
		return err
	})
	if err == nil && withdrawn > 0 {
		s.released()
	}
	return p, withdrawn, err
}

// ResumeRack lifts the rack's hold (none is fine).
func (s *Store) ResumeRack(ctx context.Context) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM rack_pause`)
		return err
	})
}

// withdrawWaiting deletes the Requested steps of one request (or of every
// request, when request is nil) with the volume locks they hold, and the
// lock-queue places their request waits in. A Requested step has no saga
// and has changed nothing: it is only a lock and a promise to run, and the
// request's next scan makes it again once the hold is lifted. A step a
// saga claimed meanwhile is Running and stays.
func withdrawWaiting(ctx context.Context, tx pgx.Tx, request *uuid.UUID) (int64, error) {
	rows, err := tx.Query(ctx, `
		DELETE FROM ro_replacement_step WHERE state = 'requested' AND operating_saga_id IS NULL
		  AND ($1::uuid IS NULL OR request_id = $1) RETURNING id`, request)
	if err != nil {
		return 0, err
	}
	steps, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return 0, err
	}
	if len(steps) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM volume_repair WHERE repair_id = ANY($1)`, steps); err != nil {
			return 0, err
		}
	}
	if request == nil {
		_, err = tx.Exec(ctx, `DELETE FROM volume_lock_waiter`)
	} else {
		_, err = tx.Exec(ctx, `DELETE FROM volume_lock_waiter WHERE waiter_id = $1`, *request)
	}
	return int64(len(steps)), err
}

// WithdrawStep deletes one Requested step with its volume lock, as a pause
// withdraws its request's: a step whose saga unwound while its request was
// held came back to Requested holding its lock, and a held request holds
// none by waiting. It reports whether the step was withdrawn (false when a
// saga claimed it or it moved on).
func (s *Store) WithdrawStep(ctx context.Context, id uuid.UUID) (bool, error) {
	var done bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM ro_replacement_step WHERE id = $1 AND state = 'requested' AND operating_saga_id IS NULL`, id)
		if err != nil {
			return err
		}
		done = tag.RowsAffected() == 1
		if !done {
			return nil
		}
		_, err = tx.Exec(ctx, `DELETE FROM volume_repair WHERE repair_id = $1`, id)
		return err
	})
	if err == nil && done {
		s.released()
	}
	return done, err
}

// requestState finds a request in either request table.
func requestState(ctx context.Context, tx pgx.Tx, id uuid.UUID) (recordTable, string, error) {
	for _, t := range []recordTable{roRequests, rwRequests} {
		var state string
		err := tx.QueryRow(ctx, `SELECT state FROM `+t.name+` WHERE id = $1`, id).Scan(&state)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		return t, state, err
	}
	return recordTable{}, "", fmt.Errorf("replacement %s: %w", id, ErrNotFound)
}

// ended reports whether a request of table t in state has ended.
func ended(t recordTable, state string) bool {
	if t == roRequests {
		return ReadOnlyState(state).Terminal()
	}
	return RegionState(state).Terminal()
}
