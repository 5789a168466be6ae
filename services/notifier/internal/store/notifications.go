package store

import (
	"context"
	"errors"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
)

// Notification outcomes as stored.
const (
	OutcomeNoUpstairs = "no_upstairs"
	OutcomeNotified   = "notified"
	OutcomeFailed     = "failed"
	// OutcomeVolumeDeleted: the volume was being deleted; nothing was told.
	OutcomeVolumeDeleted = "volume_deleted"
)

// Notification is one recorded NotifyReplacement attempt or outcome.
type Notification struct {
	Seq           int64
	ID            uuid.UUID
	VolumeID      uuid.UUID
	StepKey       string
	AttachmentID  *uuid.UUID
	Incarnation   int64
	VCRGeneration uint64
	Outcome       string
	// Result is the Upstairs' answer (an upstairs.v1 ReplaceResult name),
	// empty when there was none.
	Result string
	Error  string
	Time   time.Time
}

const notificationColumns = `seq, notification_id, volume_id, step_key, attachment_id, incarnation, vcr_generation, outcome, result, error, time`

func scanNotification(row pgx.Row) (Notification, error) {
	var n Notification
	var gen int64
	err := row.Scan(&n.Seq, &n.ID, &n.VolumeID, &n.StepKey, &n.AttachmentID, &n.Incarnation, &gen, &n.Outcome, &n.Result, &n.Error, &n.Time)
	n.VCRGeneration = uint64(gen)
	return n, err
}

// FindNotified returns the recorded successful notification of one
// attachment incarnation at one VCR generation for a step key.
func (s *Store) FindNotified(ctx context.Context, stepKey string, attachmentID uuid.UUID, incarnation int64, gen uint64) (Notification, bool, error) {
	n, err := scanNotification(s.pool.QueryRow(ctx, `
		SELECT `+notificationColumns+` FROM notification
		WHERE step_key = $1 AND attachment_id = $2 AND incarnation = $3 AND vcr_generation = $4
		  AND outcome = 'notified'`, stepKey, attachmentID, incarnation, int64(gen)))
	if errors.Is(err, pgx.ErrNoRows) {
		return n, false, nil
	}
	return n, err == nil, err
}

// RecordNotifications appends attempts in one transaction. A successful
// outcome already recorded for the same (step key, attachment, incarnation,
// generation) — a concurrent duplicate — is kept, not doubled.
func (s *Store) RecordNotifications(ctx context.Context, ns []Notification) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		for _, n := range ns {
			_, err := tx.Exec(ctx, `
				INSERT INTO notification (notification_id, volume_id, step_key, attachment_id, incarnation, vcr_generation, outcome, result, error)
				VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
				ON CONFLICT (step_key, attachment_id, incarnation, vcr_generation) WHERE outcome = 'notified' DO NOTHING`,
				uuid.New(), n.VolumeID, n.StepKey, n.AttachmentID, n.Incarnation, int64(n.VCRGeneration), n.Outcome, n.Result, n.Error)
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// ListNotifications pages through attempts in recording order after seq
// `after`, optionally of one volume.
func (s *Store) ListNotifications(ctx context.Context, volumeID *uuid.UUID, after int64, limit int) ([]Notification, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT `+notificationColumns+` FROM notification
		WHERE seq > $1 AND ($2::uuid IS NULL OR volume_id = $2)
		ORDER BY seq LIMIT $3`, after, volumeID, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Notification, error) { return scanNotification(r) })
}
