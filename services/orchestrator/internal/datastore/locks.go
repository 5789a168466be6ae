// Package datastore is the orchestrator's SQL, grouped by area: volume
// repair locks, read-only replacement requests and steps, rw replacement
// requests. Every state transition is one conditional UPDATE that succeeds
// when the row is already in the transition's target state (spec
// replacement.md §2.3–§2.4), so a re-run saga node is harmless.
package datastore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/fence"
)

// ErrLockHeld means another repair holds the volume. Its text is the fixed
// message callers (and the reference's tests) match on.
var ErrLockHeld = errors.New("volume repair lock")

// ErrConflict means a transition's guard did not hold and the row is not in
// the target state either: another saga owns the record, or it moved on.
var ErrConflict = errors.New("state conflict")

// ErrNotFound means the record does not exist.
var ErrNotFound = errors.New("not found")

// HolderKind names what kind of record holds a lock.
type HolderKind string

// Lock holders.
const (
	HolderReadOnlyReplacement HolderKind = "region_snapshot_replacement"
	HolderStep                HolderKind = "step"
	HolderRegionReplacement   HolderKind = "region_replacement"
	HolderSnapshotCreate      HolderKind = "snapshot_create"
)

// Store is the orchestrator's datastore.
type Store struct {
	pool *pgxpool.Pool
	// lockReleased runs after a transaction that released a repair lock
	// commits, if a lock contention was lost since the last run: whoever
	// lost it retries "on the next pass", and this is what makes that pass
	// happen now. Without a lost contention nobody waits, and a fan-out
	// releasing one lock per volume would run every waiter's task for each.
	lockReleased func()
	// contended: a contention was lost and no release has reported it yet.
	contended atomic.Bool
	// releases counts lock releases, so that a contention lost while a
	// release was reporting is not missed (see inTx).
	releases atomic.Int64
}

// Option tunes New.
type Option func(*Store)

// WithLockReleased registers fn to run after any repair lock is released.
func WithLockReleased(fn func()) Option { return func(s *Store) { s.lockReleased = fn } }

// New returns a Store over the orchestrator database.
func New(pool *pgxpool.Pool, opts ...Option) *Store {
	s := &Store{pool: pool}
	for _, o := range opts {
		o(s)
	}
	return s
}

func (s *Store) released() {
	s.releases.Add(1)
	if s.lockReleased != nil && s.contended.Swap(false) {
		s.lockReleased()
	}
}

// lostContention records a lost lock contention from a transaction that
// began when the release count was before. A release that committed after
// that transaction saw the lock held either sees the flag, or has already
// counted itself and this reports it.
func (s *Store) lostContention(before int64) {
	s.contended.Store(true)
	if s.releases.Load() != before && s.lockReleased != nil && s.contended.Swap(false) {
		s.lockReleased()
	}
}

// Pool exposes the pool for callers composing their own transactions.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// inTx runs fn in a fenced SERIALIZABLE transaction.
func (s *Store) inTx(ctx context.Context, fn func(pgx.Tx) error) error {
	before := s.releases.Load()
	err := fence.InTx(ctx, s.pool, fn)
	if errors.Is(err, ErrLockHeld) {
		s.lostContention(before)
	}
	return err
}

// lockVolume takes the repair lock on volumeID for repairID inside tx. It is
// re-entrant for the same repair id, allowed for a volume that does not exist
// (yet, or any more — the lock serialises allocation on the id, not the row),
// and ErrLockHeld when another repair holds it.
func lockVolume(ctx context.Context, tx pgx.Tx, volumeID, repairID uuid.UUID, kind HolderKind) error {
	tag, err := tx.Exec(ctx, `
		INSERT INTO volume_repair (volume_id, repair_id, holder_kind) VALUES ($1, $2, $3)
		ON CONFLICT (volume_id) DO NOTHING`, volumeID, repairID, kind)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 1 {
		return nil
	}
	var holder uuid.UUID
	if err := tx.QueryRow(ctx, `SELECT repair_id FROM volume_repair WHERE volume_id = $1`, volumeID).Scan(&holder); err != nil {
		return err
	}
	if holder == repairID {
		return nil
	}
	return ErrLockHeld
}

// unlockByRepair releases every lock a repair id holds. Zero rows is fine.
func unlockByRepair(ctx context.Context, tx pgx.Tx, repairID uuid.UUID) error {
	_, err := tx.Exec(ctx, `DELETE FROM volume_repair WHERE repair_id = $1`, repairID)
	return err
}

// LockVolume takes a lock in its own transaction (snapshot creation).
func (s *Store) LockVolume(ctx context.Context, volumeID, repairID uuid.UUID, kind HolderKind) error {
	return s.inTx(ctx, func(tx pgx.Tx) error { return lockVolume(ctx, tx, volumeID, repairID, kind) })
}

// UnlockVolume releases (volumeID, repairID). A non-matching id or no lock
// is a silent success: a caller can never release someone else's lock.
func (s *Store) UnlockVolume(ctx context.Context, volumeID, repairID uuid.UUID) error {
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM volume_repair WHERE volume_id = $1 AND repair_id = $2`, volumeID, repairID)
		return err
	})
	if err == nil {
		s.released()
	}
	return err
}

// ReleaseLocksOf releases every lock a repair id holds (operator repair of an
// abandoned saga) and returns the volumes freed.
func (s *Store) ReleaseLocksOf(ctx context.Context, repairID uuid.UUID) ([]uuid.UUID, error) {
	var out []uuid.UUID
	err := s.inTx(ctx, func(tx pgx.Tx) error {
		out = out[:0]
		rows, err := tx.Query(ctx, `DELETE FROM volume_repair WHERE repair_id = $1 RETURNING volume_id`, repairID)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
		return err
	})
	if err == nil && len(out) > 0 {
		s.released()
	}
	return out, err
}

// Lock is one volume repair lock.
type Lock struct {
	VolumeID     uuid.UUID
	RepairID     uuid.UUID
	HolderKind   HolderKind
	TimeAcquired time.Time
}

// GetLock returns the lock on a volume, or ErrNotFound.
func (s *Store) GetLock(ctx context.Context, volumeID uuid.UUID) (Lock, error) {
	var l Lock
	err := s.pool.QueryRow(ctx, `SELECT volume_id, repair_id, holder_kind, time_acquired FROM volume_repair WHERE volume_id = $1`, volumeID).
		Scan(&l.VolumeID, &l.RepairID, &l.HolderKind, &l.TimeAcquired)
	if errors.Is(err, pgx.ErrNoRows) {
		return Lock{}, ErrNotFound
	}
	return l, err
}

// ListLocks pages through locks by volume id.
func (s *Store) ListLocks(ctx context.Context, after uuid.UUID, limit int) ([]Lock, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT volume_id, repair_id, holder_kind, time_acquired FROM volume_repair
		WHERE volume_id > $1 ORDER BY volume_id LIMIT $2`, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Lock, error) {
		var l Lock
		err := r.Scan(&l.VolumeID, &l.RepairID, &l.HolderKind, &l.TimeAcquired)
		return l, err
	})
}

// conflictf builds the error of a transition whose guard failed, naming the
// state the record is actually in.
func conflictf(what string, id uuid.UUID, state string, saga *uuid.UUID) error {
	s := "none"
	if saga != nil {
		s = saga.String()
	}
	return fmt.Errorf("%w: %s %s is %s (operating saga %s)", ErrConflict, what, id, state, s)
}
