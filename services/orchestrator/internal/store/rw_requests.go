package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// RegionState is a rw region replacement request's state.
type RegionState string

// States (docs/replacement.md, "rw request"): Requested → Allocating →
// Running ⇄ Driving → ReplacementDone → Completing → Complete, and Requested
// → Complete when the volume is gone. A drive that gives up (no copy left to
// repair from, or the repair not finished within its bounds) marks the
// Running request, and the finish saga ends it DataLost or NeedsOperator
// instead of Complete; an operator may cancel a Requested one.
const (
	RWRequested       RegionState = "requested"
	RWAllocating      RegionState = "allocating"
	RWRunning         RegionState = "running"
	RWDriving         RegionState = "driving"
	RWReplacementDone RegionState = "replacement_done"
	RWCompleting      RegionState = "completing"
	RWComplete        RegionState = "complete"
	RWDataLost        RegionState = "data_lost"
	RWNeedsOperator   RegionState = "needs_operator"
	RWCancelled       RegionState = "cancelled"
)

// RWStates lists every rw request state, in the order above.
var RWStates = []RegionState{RWRequested, RWAllocating, RWRunning, RWDriving, RWReplacementDone, RWCompleting, RWComplete, RWDataLost, RWNeedsOperator, RWCancelled}

// Terminal reports whether nothing will move a request in this state again.
func (s RegionState) Terminal() bool {
	return s == RWComplete || s == RWDataLost || s == RWNeedsOperator || s == RWCancelled
}

// RWReplacement replaces one rw region of a volume.
type RWReplacement struct {
	ID                uuid.UUID
	RequestTime       time.Time
	TimeModified      time.Time
	OldRegionID       uuid.UUID
	VolumeID          uuid.UUID
	State             RegionState
	OperatingSagaID   *uuid.UUID
	NewRegionID       *uuid.UUID
	OldRegionVolumeID *uuid.UUID
	Traceparent       string
	// GiveUp, set on a Running request the drive gave up on, is the state
	// its finish ends it in (RWDataLost or RWNeedsOperator) instead of
	// Complete; EndReason says why.
	GiveUp    *RegionState
	EndReason *string
	Attempts
	Order
}

const rwColumns = `id, request_time, time_modified, old_region_id, volume_id, state, operating_saga_id,
	new_region_id, old_region_volume_id, traceparent, give_up, end_reason, ` + attemptsColumns + `, ` + orderColumns

func scanRW(row pgx.Row) (RWReplacement, error) {
	var r RWReplacement
	err := row.Scan(&r.ID, &r.RequestTime, &r.TimeModified, &r.OldRegionID, &r.VolumeID, &r.State, &r.OperatingSagaID,
		&r.NewRegionID, &r.OldRegionVolumeID, &r.Traceparent, &r.GiveUp, &r.EndReason, &r.Attempts.Attempts, &r.LastError, &r.LastErrorTime,
		&r.Priority, &r.LiveCopies)
	return r, err
}

func collectRW(rows pgx.Rows, err error) ([]RWReplacement, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (RWReplacement, error) { return scanRW(r) })
}

// InsertRWReplacement creates a request and takes the lock on its volume in
// the same transaction. Keyed by region: an existing request for the region
// is returned with created=false. ErrLockHeld when another repair holds the
// volume.
func (s *Store) InsertRWReplacement(ctx context.Context, r RWReplacement) (RWReplacement, bool, error) {
	var out RWReplacement
	var created bool
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		existing, err := scanRW(tx.QueryRow(ctx, `SELECT `+rwColumns+` FROM rw_replacement WHERE old_region_id = $1`, r.OldRegionID))
		if err == nil {
			out, created = existing, false
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		// Queued by region: each detector pass makes a new request id.
		if err := lockVolume(ctx, tx, r.VolumeID, r.ID, r.OldRegionID, HolderRegionReplacement); err != nil {
			return err
		}
		out, err = scanRW(tx.QueryRow(ctx, `
			INSERT INTO rw_replacement (id, old_region_id, volume_id, state, traceparent)
			VALUES ($1, $2, $3, 'requested', $4) RETURNING `+rwColumns, r.ID, r.OldRegionID, r.VolumeID, r.Traceparent))
		created = true
		return err
	})
	if errors.Is(err, ErrLockHeld) {
		s.noteWaiter(ctx, r.VolumeID, r.OldRegionID, HolderRegionReplacement)
	}
	return out, created, err
}

// GetRegionRequest returns a request, or ErrNotFound.
func (s *Store) GetRWReplacement(ctx context.Context, id uuid.UUID) (RWReplacement, error) {
	r, err := scanRW(s.pool.QueryRow(ctx, `SELECT `+rwColumns+` FROM rw_replacement WHERE id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("region replacement %s: %w", id, ErrNotFound)
	}
	return r, err
}

// RWReplacementsIn lists requests in a rest state with no operating saga.
func (s *Store) RWReplacementsIn(ctx context.Context, state RegionState) ([]RWReplacement, error) {
	return collectRW(s.pool.Query(ctx, `SELECT `+rwColumns+` FROM rw_replacement
		WHERE state = $1 AND operating_saga_id IS NULL ORDER BY request_time, id`, state))
}

// RegionsWithRWRequest returns which of regions have a rw request, in any
// state (a region has at most one over its lifetime).
func (s *Store) RegionsWithRWRequest(ctx context.Context, regions []uuid.UUID) (map[uuid.UUID]bool, error) {
	out := make(map[uuid.UUID]bool, len(regions))
	if len(regions) == 0 {
		return out, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT old_region_id FROM rw_replacement WHERE old_region_id = ANY($1::uuid[])`, regions)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	for _, id := range ids {
		out[id] = true
	}
	return out, err
}

// ListRWReplacements pages through requests by id, optionally in one state.
func (s *Store) ListRWReplacements(ctx context.Context, state RegionState, after uuid.UUID, limit int) ([]RWReplacement, error) {
	return collectRW(s.pool.Query(ctx, `SELECT `+rwColumns+` FROM rw_replacement
		WHERE ($1 = '' OR state = $1) AND id > $2 ORDER BY id LIMIT $3`, string(state), after, limit))
}

// SetRWAllocating: the start saga claims.
func (s *Store) SetRWAllocating(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, rwRequests, id, string(RWRequested), string(RWAllocating), saga)
}

// UndoRWAllocating returns the request to Requested.
func (s *Store) UndoRWAllocating(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, rwRequests, id, saga, exit{intermediate: string(RWAllocating), to: string(RWRequested)})
}

// SetRWRunning is the start saga's commit, recording the new region and the
// stash volume that now owns the old one.
func (s *Store) SetRWRunning(ctx context.Context, id, saga, newRegion, oldRegionVolume uuid.UUID) error {
	return s.exitIntermediate(ctx, rwRequests, id, saga, exit{
		intermediate: string(RWAllocating), to: string(RWRunning),
		set: "new_region_id = $4, old_region_volume_id = $5", args: []any{newRegion, oldRegionVolume},
		contradicts: []string{string(RWRequested)},
	})
}

// SetRWDriving: the drive saga claims a Running request.
func (s *Store) SetRWDriving(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, rwRequests, id, string(RWRunning), string(RWDriving), saga)
}

// UndoRWDriving returns the request to Running.
func (s *Store) UndoRWDriving(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, rwRequests, id, saga, exit{intermediate: string(RWDriving), to: string(RWRunning)})
}

// FinishRWDriving is the drive saga's commit: back to Running to be driven
// again, or ReplacementDone when the Upstairs reported the repair finished
// (or the volume is gone).
func (s *Store) FinishRWDriving(ctx context.Context, id, saga uuid.UUID, done bool) error {
	to := RWRunning
	if done {
		to = RWReplacementDone
	}
	return s.exitIntermediate(ctx, rwRequests, id, saga, exit{intermediate: string(RWDriving), to: string(to)})
}

// SetRWReplacementDoneFromRunning: the drive task saw a successful repair
// finish for the new region.
func (s *Store) SetRWReplacementDoneFromRunning(ctx context.Context, id uuid.UUID) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE rw_replacement SET state = 'replacement_done', time_modified = now()
			WHERE id = $1 AND state = 'running' AND operating_saga_id IS NULL`, id)
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		state, cur, err := stateOf(ctx, tx, rwRequests, id)
		if err != nil {
			return err
		}
		if state == string(RWReplacementDone) || state == string(RWCompleting) || state == string(RWComplete) {
			return nil
		}
		return conflictf(rwRequests.what, id, state, cur)
	})
}

// SetRWCompleting: the finish saga claims.
func (s *Store) SetRWCompleting(ctx context.Context, id, saga uuid.UUID) error {
	return s.claim(ctx, rwRequests, id, string(RWReplacementDone), string(RWCompleting), saga)
}

// UndoRWCompleting returns the request to ReplacementDone.
func (s *Store) UndoRWCompleting(ctx context.Context, id, saga uuid.UUID) error {
	return s.exitIntermediate(ctx, rwRequests, id, saga, exit{intermediate: string(RWCompleting), to: string(RWReplacementDone)})
}

// SetRWComplete is the finish saga's commit; releases the volume's lock.
// A request the drive gave up on ends in its give-up state instead
// (DataLost or NeedsOperator), its reason already recorded.
func (s *Store) SetRWComplete(ctx context.Context, id, saga uuid.UUID) error {
	r, err := s.GetRWReplacement(ctx, id)
	if err != nil {
		return err
	}
	to := RWComplete
	if r.GiveUp != nil {
		to = *r.GiveUp
	}
	return s.exitIntermediate(ctx, rwRequests, id, saga, exit{
		intermediate: string(RWCompleting), to: string(to),
		contradicts: []string{string(RWReplacementDone)},
		releaseLock: true,
	})
}

// UnrepairedRegions lists the new regions that replacements of a volume put
// in its region sets and gave up on: they were never repaired, so they hold
// no data a later repair could copy.
func (s *Store) UnrepairedRegions(ctx context.Context, volumeID uuid.UUID) (map[uuid.UUID]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT new_region_id FROM rw_replacement
		WHERE volume_id = $1 AND new_region_id IS NOT NULL AND give_up IS NOT NULL`, volumeID)
	if err != nil {
		return nil, err
	}
	out := map[uuid.UUID]bool{}
	var id uuid.UUID
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
		out[id] = true
		return nil
	})
	return out, err
}

// GiveUpRW is the drive task's end of a Running request whose repair
// cannot or did not finish: no copy is left to repair from (RWDataLost),
// or it did not finish within its bounds (RWNeedsOperator). The request
// goes to ReplacementDone marked with the end, so the finish saga cleans up
// (the stash owning the old region, a Pantry attachment) and releases the
// volume's lock, ending it in that state. Idempotent for the same end.
func (s *Store) GiveUpRW(ctx context.Context, id uuid.UUID, end RegionState, reason string) error {
	if end != RWDataLost && end != RWNeedsOperator {
		return fmt.Errorf("give up a region replacement as %q: want %s or %s", end, RWDataLost, RWNeedsOperator)
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE rw_replacement SET state = 'replacement_done', give_up = $2, end_reason = $3, time_modified = now()
			WHERE id = $1 AND state = 'running' AND operating_saga_id IS NULL`, id, end, reason)
		if err != nil || tag.RowsAffected() == 1 {
			return err
		}
		var state string
		var cur *uuid.UUID
		var giveUp *string
		err = tx.QueryRow(ctx, `SELECT state, operating_saga_id, give_up FROM rw_replacement WHERE id = $1`, id).Scan(&state, &cur, &giveUp)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%s %s: %w", rwRequests.what, id, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if giveUp != nil && *giveUp == string(end) {
			return nil
		}
		return conflictf(rwRequests.what, id, state, cur)
	})
}

// SetRWCompleteFromRequested: the volume was deleted before anything was
// allocated. Releases the lock.
func (s *Store) SetRWCompleteFromRequested(ctx context.Context, id uuid.UUID) error {
	return s.shortcut(ctx, rwRequests, id, string(RWRequested), string(RWComplete), "new_region_id IS NULL")
}

// DriveStep is one attempt at driving a rw replacement.
type DriveStep struct {
	ID           uuid.UUID
	RequestID    uuid.UUID
	Time         time.Time
	StepType     string // "propolis" or "pantry"
	AttachmentID *uuid.UUID
	Incarnation  *int64
	Endpoint     string
}

// RecordDriveStep records an attempt; idempotent on its id.
func (s *Store) RecordDriveStep(ctx context.Context, d DriveStep) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO rw_replacement_drive_step (id, request_id, step_type, attachment_id, incarnation, endpoint)
			VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING`,
			d.ID, d.RequestID, d.StepType, d.AttachmentID, d.Incarnation, d.Endpoint)
		return err
	})
}

// DriveSteps lists a request's attempts, oldest first.
func (s *Store) DriveSteps(ctx context.Context, requestID uuid.UUID) ([]DriveStep, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, request_id, time, step_type, attachment_id, incarnation, endpoint
		FROM rw_replacement_drive_step WHERE request_id = $1 ORDER BY time, id`, requestID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (DriveStep, error) {
		var d DriveStep
		err := r.Scan(&d.ID, &d.RequestID, &d.Time, &d.StepType, &d.AttachmentID, &d.Incarnation, &d.Endpoint)
		return d, err
	})
}

// GetRWReplacementByRegion returns the request for a region, or
// ErrNotFound.
func (s *Store) GetRWReplacementByRegion(ctx context.Context, regionID uuid.UUID) (RWReplacement, error) {
	r, err := scanRW(s.pool.QueryRow(ctx, `SELECT `+rwColumns+` FROM rw_replacement WHERE old_region_id = $1`, regionID))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("region replacement of %s: %w", regionID, ErrNotFound)
	}
	return r, err
}
