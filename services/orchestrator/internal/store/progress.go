package store

import (
	"context"
	"time"

	"github.com/google/uuid"
)

// StepsDoneSince counts a request's steps that ended (VolumeDeleted) after
// since, and says when its oldest step was made (zero without steps): the
// rate an estimate of the request's remaining time is made from.
func (s *Store) StepsDoneSince(ctx context.Context, requestID uuid.UUID, since time.Time) (done int64, firstStep time.Time, err error) {
	var first *time.Time
	err = s.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE state = 'volume_deleted' AND time_modified > $2), min(request_time)
		FROM ro_replacement_step WHERE request_id = $1`, requestID, since).Scan(&done, &first)
	if first != nil {
		firstStep = *first
	}
	return done, firstStep, err
}

// RecentRWDurations is how long the rw requests that completed after since
// took from request to completion, on average, and how many there were.
func (s *Store) RecentRWDurations(ctx context.Context, since time.Time) (time.Duration, int64, error) {
	var avg *time.Duration
	var n int64
	err := s.pool.QueryRow(ctx, `SELECT avg(time_modified - request_time), count(*) FROM rw_replacement
		WHERE state = 'complete' AND time_modified > $1`, since).Scan(&avg, &n)
	if avg == nil {
		return 0, n, err
	}
	return *avg, n, err
}

// Stalled is how long the longest-idle non-terminal request that no
// operator holds has gone without progress: no change to it, to any of its
// steps, or to its drive steps. Zero when none is open, or while the rack
// is held.
func (s *Store) Stalled(ctx context.Context) (time.Duration, error) {
	var d *time.Duration
	err := s.pool.QueryRow(ctx, `
		WITH open AS (
			SELECT r.id, greatest(r.time_modified,
				(SELECT max(st.time_modified) FROM ro_replacement_step st WHERE st.request_id = r.id)) AS progress
			FROM ro_replacement r WHERE r.state NOT IN `+roTerminalSQL+`
			UNION ALL
			SELECT r.id, greatest(r.time_modified,
				(SELECT max(d.time) FROM rw_replacement_drive_step d WHERE d.request_id = r.id)) AS progress
			FROM rw_replacement r WHERE r.state NOT IN `+rwTerminalSQL+`)
		SELECT max(now() - o.progress) FROM open o
		WHERE NOT EXISTS (SELECT 1 FROM rack_pause)
		  AND NOT EXISTS (SELECT 1 FROM replacement_pause p WHERE p.request_id = o.id)`).Scan(&d)
	if err != nil || d == nil {
		return 0, err
	}
	return *d, nil
}

// PausedRequests counts the non-terminal requests an operator holds by
// their own pause, and whether the rack is held.
func (s *Store) PausedRequests(ctx context.Context) (int64, bool, error) {
	var n int64
	var rack bool
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM replacement_pause p WHERE `+holdOnOpenRequestSQL+`),
		EXISTS (SELECT 1 FROM rack_pause)`).Scan(&n, &rack)
	return n, rack, err
}
