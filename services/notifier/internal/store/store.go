// Package store holds the upstairs-notifier's SQL: attachments,
// notification attempts, and what Upstairs report about repairs and
// downstairs clients. Every mutating transaction checks the leader fence
// first; every state change is a conditional UPDATE that also accepts "already
// in the target state".
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/fence"
)

// Errors of the store; their kinds are their gRPC codes (apierr).
var (
	ErrNotFound = apierr.New(apierr.NotFound, "not found")
	// ErrConflict: a repair id reused with another type, or a contradicting
	// finish.
	ErrConflict = apierr.New(apierr.AlreadyExists, "conflict")
	// ErrAlreadyExists: an exact duplicate that must not be ignored.
	ErrAlreadyExists = apierr.New(apierr.AlreadyExists, "already exists")
	// ErrRWConsumer: another live read/write consumer holds the volume.
	ErrRWConsumer = apierr.New(apierr.Precondition, "volume already has a read/write consumer")
	// ErrOtherKind: the endpoint already runs the volume for an attachment
	// of the other kind (a Pantry and a Propolis never share one).
	ErrOtherKind = apierr.New(apierr.Precondition, "endpoint already serves the volume for another kind of consumer")
	// ErrSuperseded: the attachment moved on (new incarnation, detached, or
	// changed state) while a construction was in progress.
	ErrSuperseded = apierr.New(apierr.Precondition, "attachment superseded")
	// ErrBadTransition: a reported state the attachment cannot take.
	ErrBadTransition = apierr.New(apierr.Precondition, "state transition not allowed")
)

// Store runs the notifier's statements on its database.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a store over pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// inTx runs fn in a fenced SERIALIZABLE transaction.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return fence.InTx(ctx, s.pool, fn)
}

// CheckFence runs only the fence check, for operations whose side effects
// happen outside the database and must not start under a stale leader.
func (s *Store) CheckFence(ctx context.Context) error {
	if _, ok := fence.FromContext(ctx); !ok {
		return nil
	}
	return s.inTx(ctx, func(pgx.Tx) error { return nil })
}

// Attachment states as stored.
const (
	StateStarting  = "starting"
	StateRunning   = "running"
	StateRebooting = "rebooting"
	StateMigrating = "migrating"
	StateStopping  = "stopping"
	StateStopped   = "stopped"
	StateFailed    = "failed"
)

// Attachment is one consumer of a volume on one Upstairs endpoint.
type Attachment struct {
	ID          uuid.UUID
	VolumeID    uuid.UUID
	Kind        string
	Endpoint    string
	UpstairsID  uuid.UUID
	Incarnation int64
	State       string
	ReadOnly    bool
	Error       string
	TimeUpdated time.Time
	// UpstairsIdentity is the verified SPIFFE ID of the Upstairs server
	// that last accepted an activation of this attachment; empty if none
	// has, or the deployment runs plaintext.
	UpstairsIdentity string
}

const attachmentColumns = `attachment_id, volume_id, kind, endpoint, upstairs_id, incarnation, state, read_only, error, time_updated, coalesce(upstairs_identity, '')`

func scanAttachment(row pgx.Row) (Attachment, error) {
	var a Attachment
	err := row.Scan(&a.ID, &a.VolumeID, &a.Kind, &a.Endpoint, &a.UpstairsID, &a.Incarnation, &a.State, &a.ReadOnly, &a.Error, &a.TimeUpdated, &a.UpstairsIdentity)
	return a, err
}

// ConstructionStart is what ConstructVolume records before checking out.
type ConstructionStart struct {
	VolumeID uuid.UUID
	Kind     string
	Endpoint string
	// UpstairsID is used for a new attachment, and replaces the stored one
	// of an existing attachment when not uuid.Nil.
	UpstairsID uuid.UUID
	ReadOnly   bool
}

// StartConstruction records the attachment of (volume, endpoint) as STARTING
// with a new incarnation: a fresh attachment gets incarnation 1, an existing
// one (a restart on the same endpoint) the next number. A read/write
// consumer is refused with ErrRWConsumer while another read/write
// attachment of the volume on another endpoint is neither STOPPED nor
// FAILED. A construction of the other kind than the endpoint's attachment
// is refused with ErrOtherKind, whatever that attachment's state: a Pantry
// taking over a user's Propolis record (or the reverse) would have the
// replacement's detach end the user's consumer.
func (s *Store) StartConstruction(ctx context.Context, in ConstructionStart) (Attachment, error) {
	var out Attachment
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var other uuid.UUID
		var kind string
		err := tx.QueryRow(ctx, `
			SELECT attachment_id, kind FROM attachment
			WHERE volume_id = $1 AND endpoint = $2 AND kind <> $3
			FOR UPDATE`, in.VolumeID, in.Endpoint, in.Kind).Scan(&other, &kind)
		switch {
		case err == nil:
			return fmt.Errorf("%w: %s attachment %s at %s", ErrOtherKind, strings.ToUpper(kind), other, in.Endpoint)
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		if !in.ReadOnly {
			err := tx.QueryRow(ctx, `
				SELECT attachment_id FROM attachment
				WHERE volume_id = $1 AND endpoint <> $2 AND NOT read_only
				  AND state NOT IN ('stopped', 'failed')
				LIMIT 1`, in.VolumeID, in.Endpoint).Scan(&other)
			switch {
			case err == nil:
				return fmt.Errorf("%w: attachment %s", ErrRWConsumer, other)
			case !errors.Is(err, pgx.ErrNoRows):
				return err
			}
		}
		upstairsID := in.UpstairsID
		if upstairsID == uuid.Nil {
			upstairsID = uuid.New()
		}
		out, err = scanAttachment(tx.QueryRow(ctx, `
			INSERT INTO attachment (attachment_id, volume_id, kind, endpoint, upstairs_id, incarnation, state, read_only)
			VALUES ($1, $2, $3, $4, $5, 1, 'starting', $6)
			ON CONFLICT ON CONSTRAINT attachment_volume_endpoint DO UPDATE SET
				upstairs_id = CASE WHEN $7 THEN excluded.upstairs_id ELSE attachment.upstairs_id END,
				incarnation = attachment.incarnation + 1,
				state = 'starting',
				read_only = excluded.read_only,
				error = '',
				time_updated = now()
			RETURNING `+attachmentColumns,
			uuid.New(), in.VolumeID, in.Kind, in.Endpoint, upstairsID, in.ReadOnly, in.UpstairsID != uuid.Nil))
		return err
	})
	return out, err
}

// FinishConstruction moves a STARTING attachment of the given incarnation to
// state (RUNNING or FAILED) with errText. identity, when not empty, is the
// verified SPIFFE ID of the Upstairs that accepted the activation and
// replaces the recorded one; empty keeps it (a failed activation, or a
// plaintext deployment). ErrSuperseded when the attachment is gone, has a
// newer incarnation, or left STARTING for another state.
func (s *Store) FinishConstruction(ctx context.Context, id uuid.UUID, incarnation int64, state, errText, identity string) (Attachment, error) {
	var out Attachment
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		var err error
		out, err = scanAttachment(tx.QueryRow(ctx, `
			UPDATE attachment SET state = $3, error = $4, time_updated = now(),
				upstairs_identity = coalesce(nullif($5, ''), upstairs_identity)
			WHERE attachment_id = $1 AND incarnation = $2 AND state IN ('starting', $3)
			RETURNING `+attachmentColumns, id, incarnation, state, errText, identity))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrSuperseded
		}
		return err
	})
	return out, err
}

// SetState records a state an instance manager reports. RUNNING and
// REBOOTING are only reachable from RUNNING, REBOOTING or MIGRATING: an
// Upstairs that is starting, stopped or failed has to be constructed again
// (a fresh checkout) to run.
func (s *Store) SetState(ctx context.Context, id uuid.UUID, state string) (Attachment, error) {
	var out Attachment
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		cur, err := scanAttachment(tx.QueryRow(ctx, `SELECT `+attachmentColumns+` FROM attachment WHERE attachment_id = $1`, id))
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		if state == StateRunning || state == StateRebooting {
			switch cur.State {
			case StateRunning, StateRebooting, StateMigrating:
			default:
				return fmt.Errorf("%w: %s to %s (construct the volume again)", ErrBadTransition, cur.State, state)
			}
		}
		out, err = scanAttachment(tx.QueryRow(ctx, `
			UPDATE attachment SET state = $2,
				time_updated = CASE WHEN state = $2 THEN time_updated ELSE now() END
			WHERE attachment_id = $1
			RETURNING `+attachmentColumns, id, state))
		return err
	})
	return out, err
}

// GetAttachment reads one attachment.
func (s *Store) GetAttachment(ctx context.Context, id uuid.UUID) (Attachment, error) {
	a, err := scanAttachment(s.pool.QueryRow(ctx, `SELECT `+attachmentColumns+` FROM attachment WHERE attachment_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, ErrNotFound
	}
	return a, err
}

// AttachmentAt reads the attachment of a volume on an endpoint.
func (s *Store) AttachmentAt(ctx context.Context, volumeID uuid.UUID, endpoint string) (Attachment, error) {
	a, err := scanAttachment(s.pool.QueryRow(ctx, `SELECT `+attachmentColumns+` FROM attachment WHERE volume_id = $1 AND endpoint = $2`, volumeID, endpoint))
	if errors.Is(err, pgx.ErrNoRows) {
		return a, ErrNotFound
	}
	return a, err
}

// DeleteAttachment forgets an attachment; a missing one is fine.
func (s *Store) DeleteAttachment(ctx context.Context, id uuid.UUID) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM attachment WHERE attachment_id = $1`, id)
		return err
	})
}

// VolumeAttachments lists every attachment of a volume.
//
// It reads under the fence check (one transaction, not two: a
// notification per volume of a fan-out), so a stale leader's
// NotifyReplacement stops here, before any Upstairs is called.
func (s *Store) VolumeAttachments(ctx context.Context, volumeID uuid.UUID) ([]Attachment, error) {
	var out []Attachment
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+attachmentColumns+` FROM attachment WHERE volume_id = $1 ORDER BY attachment_id`, volumeID)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Attachment, error) { return scanAttachment(r) })
		return err
	})
	return out, err
}

// UpstairsIdentities returns the distinct identities recorded for the
// attachments running upstairsID (none: no attachment has it, or none has
// had a verified activation).
func (s *Store) UpstairsIdentities(ctx context.Context, upstairsID uuid.UUID) ([]string, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT DISTINCT upstairs_identity FROM attachment
		WHERE upstairs_id = $1 AND upstairs_identity IS NOT NULL
		ORDER BY upstairs_identity`, upstairsID)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

// ListAttachments pages through attachments ordered by id, after `after`
// (uuid.Nil for the first page), optionally of one volume.
func (s *Store) ListAttachments(ctx context.Context, volumeID *uuid.UUID, after uuid.UUID, limit int) ([]Attachment, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT `+attachmentColumns+` FROM attachment
		WHERE attachment_id > $1 AND ($2::uuid IS NULL OR volume_id = $2)
		ORDER BY attachment_id LIMIT $3`, after, volumeID, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Attachment, error) { return scanAttachment(r) })
}

// AttachedVolumes returns which of volumeIDs have an attachment recorded,
// in any state, each once. An attachment is recorded (STARTING) before
// its construction checks the VCR out, so a read here that begins after a
// swap committed sees every consumer that could hold the VCR from before
// it. It reads under the fence check, as VolumeAttachments does.
func (s *Store) AttachedVolumes(ctx context.Context, volumeIDs []uuid.UUID) ([]uuid.UUID, error) {
	var out []uuid.UUID
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT volume_id FROM attachment WHERE volume_id = ANY($1::uuid[])`, volumeIDs)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	return out, err
}
