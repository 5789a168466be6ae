package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Attempts is what requests and steps keep of the sagas that worked on them
// and did not move them on: an unwound saga, or one an operator abandoned.
// The task that starts the next saga waits a backoff that grows with the
// count, and operators see the last error without reading the saga log.
type Attempts struct {
	Attempts      int
	LastError     string
	LastErrorTime *time.Time
}

const attemptsColumns = `attempts, last_error, last_error_time`

// maxErrorLen bounds a stored error: saga errors nest RPC errors, and a
// record is read by every list.
const maxErrorLen = 2000

// RecordAttempt counts a failed attempt at a request or step (its saga
// unwound) with the error. Records are told apart by id; an unknown id is
// ErrNotFound.
func (s *Store) RecordAttempt(ctx context.Context, id uuid.UUID, cause string) (Attempts, error) {
	if len(cause) > maxErrorLen {
		cause = cause[:maxErrorLen] + "…"
	}
	var out Attempts
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		for _, t := range []recordTable{roRequests, roSteps, rwRequests} {
			err := tx.QueryRow(ctx, `UPDATE `+t.name+` SET attempts = attempts + 1, last_error = $2, last_error_time = now()
				WHERE id = $1 RETURNING `+attemptsColumns, id, cause).Scan(&out.Attempts, &out.LastError, &out.LastErrorTime)
			if err == nil {
				return nil
			}
			if !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
		}
		return fmt.Errorf("request or step %s: %w", id, ErrNotFound)
	})
	return out, err
}
