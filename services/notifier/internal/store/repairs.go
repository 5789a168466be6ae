package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Repair and notification types as stored.
const (
	RepairLive           = "live"
	RepairReconciliation = "reconciliation"

	RepairStarted   = "started"
	RepairSucceeded = "succeeded"
	RepairFailed    = "failed"
)

// RepairNotification is one row of upstairs_repair_notification.
type RepairNotification struct {
	Seq        int64
	Time       time.Time
	RepairID   uuid.UUID
	RepairType string
	UpstairsID uuid.UUID
	SessionID  uuid.UUID
	// RegionID is the region the Upstairs named, or the one its address
	// resolved to; empty when neither is known.
	RegionID      string
	TargetAddress string
	Type          string
	// ReportedRegion says RegionID came from the Upstairs itself. Only then
	// does it identify the downstairs within the repair; otherwise the
	// address does, so a start and a finish are keyed alike whether or not
	// the address could be resolved each time.
	ReportedRegion bool
}

// downstairsKey identifies the repaired downstairs within a repair.
func (r RepairNotification) downstairsKey() string {
	if r.ReportedRegion && r.RegionID != "" {
		return "region:" + r.RegionID
	}
	return "addr:" + r.TargetAddress
}

const repairColumns = `seq, time, repair_id, repair_type, upstairs_id, session_id, region_id, target_address, notification_type`

func scanRepair(row pgx.Row) (RepairNotification, error) {
	var r RepairNotification
	err := row.Scan(&r.Seq, &r.Time, &r.RepairID, &r.RepairType, &r.UpstairsID, &r.SessionID, &r.RegionID, &r.TargetAddress, &r.Type)
	return r, err
}

// RecordRepair stores one repair notification row in its own transaction,
// by these rules:
//  1. a repair id keeps one repair type: another type anywhere is ErrConflict;
//  2. a start is inserted, a repeated one ignored (the first row wins);
//  3. a finish (succeeded or failed) repeated with the same outcome is a
//     no-op, with the other outcome ErrConflict;
//  4. a finish without a start is accepted.
func (s *Store) RecordRepair(ctx context.Context, r RepairNotification) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		var other string
		err := tx.QueryRow(ctx, `
			SELECT repair_type FROM upstairs_repair_notification
			WHERE repair_id = $1 AND repair_type <> $2 LIMIT 1`, r.RepairID, r.RepairType).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("%w: repair %s is a %s repair, not %s", ErrConflict, r.RepairID, other, r.RepairType)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if r.Type != RepairStarted {
			var existing string
			err := tx.QueryRow(ctx, `
				SELECT notification_type FROM upstairs_repair_notification
				WHERE repair_id = $1 AND upstairs_id = $2 AND session_id = $3 AND downstairs_key = $4
				  AND notification_type IN ('succeeded', 'failed')
				LIMIT 1`, r.RepairID, r.UpstairsID, r.SessionID, r.downstairsKey()).Scan(&existing)
			switch {
			case err == nil && existing == r.Type:
				return nil
			case err == nil:
				return fmt.Errorf("%w: repair %s already finished as %s", ErrConflict, r.RepairID, existing)
			case !errors.Is(err, pgx.ErrNoRows):
				return err
			}
		}
		_, err = tx.Exec(ctx, `
			INSERT INTO upstairs_repair_notification
				(time, repair_id, repair_type, upstairs_id, session_id, region_id, target_address, downstairs_key, notification_type)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
			ON CONFLICT DO NOTHING`,
			r.Time, r.RepairID, r.RepairType, r.UpstairsID, r.SessionID, r.RegionID, r.TargetAddress, r.downstairsKey(), r.Type)
		return err
	})
}

// RecordProgress appends a progress report. ErrNotFound unless this
// Upstairs has a started row for the repair; ErrAlreadyExists for an exact
// duplicate.
func (s *Store) RecordProgress(ctx context.Context, repairID, upstairsID uuid.UUID, at time.Time, current, total int64) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, `
			SELECT 1 FROM upstairs_repair_notification
			WHERE repair_id = $1 AND upstairs_id = $2 AND notification_type = 'started'
			LIMIT 1`, repairID, upstairsID).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("%w: no started repair %s from upstairs %s", ErrNotFound, repairID, upstairsID)
		}
		if err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			INSERT INTO upstairs_repair_progress (repair_id, time, current_item, total_items)
			VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, repairID, at, current, total)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("%w: identical progress report", ErrAlreadyExists)
		}
		return nil
	})
}

// RepairProgress is one row of upstairs_repair_progress.
type RepairProgress struct {
	Time        time.Time
	CurrentItem int64
	TotalItems  int64
}

// LatestProgress returns the newest progress report of a repair.
func (s *Store) LatestProgress(ctx context.Context, repairID uuid.UUID) (RepairProgress, error) {
	var p RepairProgress
	err := s.pool.QueryRow(ctx, `
		SELECT time, current_item, total_items FROM upstairs_repair_progress
		WHERE repair_id = $1 ORDER BY time DESC LIMIT 1`, repairID).Scan(&p.Time, &p.CurrentItem, &p.TotalItems)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, ErrNotFound
	}
	return p, err
}

// RepairCursor is the position after the last row of a page.
type RepairCursor struct {
	Time time.Time
	Seq  int64
}

// ListRepairs pages through the repair notifications of a region and/or a
// target address (an empty filter is not applied), time ascending.
func (s *Store) ListRepairs(ctx context.Context, regionID, address string, after *RepairCursor, limit int) ([]RepairNotification, error) {
	var afterTime *time.Time
	var afterSeq int64
	if after != nil {
		afterTime, afterSeq = &after.Time, after.Seq
	}
	rows, err := s.pool.Query(ctx, `
		SELECT `+repairColumns+` FROM upstairs_repair_notification
		WHERE ($1 = '' OR region_id = $1) AND ($2 = '' OR target_address = $2)
		  AND ($3::timestamptz IS NULL OR (time, seq) > ($3, $4))
		ORDER BY time, seq LIMIT $5`, regionID, address, afterTime, afterSeq, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (RepairNotification, error) { return scanRepair(r) })
}

// DownstairsClientNotification is a stop request or a stopped report.
type DownstairsClientNotification struct {
	Time         time.Time
	UpstairsID   uuid.UUID
	DownstairsID uuid.UUID
	Reason       string
}

// RecordStopRequest appends a stop request; a repeat is a no-op.
func (s *Store) RecordStopRequest(ctx context.Context, n DownstairsClientNotification) error {
	return s.insertClientNotification(ctx, `downstairs_client_stop_request_notification`, n)
}

// RecordStopped appends a stopped report; a repeat is a no-op.
func (s *Store) RecordStopped(ctx context.Context, n DownstairsClientNotification) error {
	return s.insertClientNotification(ctx, `downstairs_client_stopped_notification`, n)
}

func (s *Store) insertClientNotification(ctx context.Context, table string, n DownstairsClientNotification) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO `+table+` (time, upstairs_id, downstairs_id, reason)
			VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, n.Time, n.UpstairsID, n.DownstairsID, n.Reason)
		return err
	})
}

// CountClientNotifications counts the rows of one upstairs in a stop
// table (for tests and diagnostics).
func (s *Store) CountClientNotifications(ctx context.Context, stopped bool, upstairsID uuid.UUID) (int, error) {
	table := `downstairs_client_stop_request_notification`
	if stopped {
		table = `downstairs_client_stopped_notification`
	}
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM `+table+` WHERE upstairs_id = $1`, upstairsID).Scan(&n)
	return n, err
}
