// Package store is the orchestrator's SQL, grouped by area: volume
// repair locks, read-only replacement requests and steps, rw replacement
// requests. Every state transition is one conditional UPDATE that succeeds
// again when re-run after a crash (the rules are in transition.go and
// docs/replacement.md, "The state lock"), so a re-run saga node is harmless.
package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/fence"
)

// ErrLockHeld means another repair holds the volume (Aborted). Its text is
// the fixed message callers (and the reference's tests) match on.
var ErrLockHeld = apierr.New(apierr.Aborted, "volume repair lock")

// ErrConflict means a transition's guard did not hold and the row is not in
// the target state either: another saga owns the record, or it moved on
// (FailedPrecondition).
var ErrConflict = apierr.New(apierr.Precondition, "state conflict")

// ErrNotFound means the record does not exist.
var ErrNotFound = apierr.New(apierr.NotFound, "not found")

// HolderKind names what kind of record holds a lock.
type HolderKind string

// Lock holders.
const (
	HolderReadOnlyReplacement HolderKind = "region_snapshot_replacement"
	HolderStep                HolderKind = "step"
	HolderRegionReplacement   HolderKind = "region_replacement"
	HolderSnapshotCreate      HolderKind = "snapshot_create"
)

// Store is the orchestrator's SQL store.
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
	// lostWaiters counts refused takers whose queue place could not be
	// recorded (a database error): they lose their place, not their retry.
	lostWaiters atomic.Int64
	// configured are the rebuild budgets' limits from the process's
	// configuration (runtime values in rebuild_budget override them).
	configured Limits
	// admit serialises this process's rebuild admissions (AdmitRebuild),
	// so only one of them at a time holds a connection waiting for the
	// advisory lock.
	admit sync.Mutex
}

// Option tunes New.
type Option func(*Store)

// WithLockReleased registers fn to run after any repair lock is released.
func WithLockReleased(fn func()) Option { return func(s *Store) { s.lockReleased = fn } }

// WithRebuildLimits sets the configured rebuild budgets.
func WithRebuildLimits(l Limits) Option { return func(s *Store) { s.configured = l } }

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
// and a *LockHeldError (errors.Is ErrLockHeld) when another repair holds it
// or an older waiter is queued for it (see volume_lock_waiter): waiterID
// names the taker in that queue, stable across its retries. The caller
// records a refused taker as a waiter with noteWaiter, in a transaction of
// its own, since the refusal rolls this one back.
func lockVolume(ctx context.Context, tx pgx.Tx, volumeID, repairID, waiterID uuid.UUID, kind HolderKind) error {
	var holder uuid.UUID
	var holderKind HolderKind
	var since time.Time
	err := tx.QueryRow(ctx, `SELECT repair_id, holder_kind, time_acquired FROM volume_repair WHERE volume_id = $1`, volumeID).
		Scan(&holder, &holderKind, &since)
	switch {
	case err == nil && holder == repairID:
		return nil
	case err == nil:
		return &LockHeldError{Volume: volumeID, Holder: holder, HolderKind: holderKind, Since: since}
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	var ahead uuid.UUID
	var aheadKind HolderKind
	err = tx.QueryRow(ctx, queuedAheadSQL, volumeID, waiterID, lockWaiterLive).Scan(&ahead, &aheadKind, &since)
	switch {
	case err == nil:
		return &LockHeldError{Volume: volumeID, QueuedBehind: ahead, HolderKind: aheadKind, Since: since}
	case !errors.Is(err, pgx.ErrNoRows):
		return err
	}
	tag, err := tx.Exec(ctx, `
		INSERT INTO volume_repair (volume_id, repair_id, holder_kind) VALUES ($1, $2, $3)
		ON CONFLICT (volume_id) DO NOTHING`, volumeID, repairID, kind)
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		// A concurrent taker won it after the read above.
		return &LockHeldError{Volume: volumeID}
	}
	_, err = tx.Exec(ctx, `DELETE FROM volume_lock_waiter WHERE volume_id = $1 AND (waiter_id = $2 OR last_attempt < now() - $3::interval)`,
		volumeID, waiterID, lockWaiterForget)
	return err
}

// The lock queue. A taker refused because the lock is held records itself
// as a waiter; a taker that finds an older live waiter of another id stands
// back even though the lock is free, so the waiters are served in arrival
// order. Without it, a volume whose lock others keep taking and releasing
// (a user snapshotting a disk in a loop, rw replacements of its regions one
// after another) could starve a step forever: its task retries on the
// release's wake-up, but so does everyone else. A waiter keeps its place
// while it keeps trying (within lockWaiterLive of its last try), or while
// the holder that refused it still holds the lock (it had no chance to try
// again); one that stopped trying (its request ended) loses it, and one
// idle for lockWaiterForget is deleted. Only the tasks queue: they retry on
// every release and every few seconds while they wait. A user's snapshot
// neither queues nor keeps a place (it fails at once and is retried, if at
// all, under a new id), but it stands back for the queue like everyone.
const (
	lockWaiterLive   = 10 * time.Second
	lockWaiterForget = time.Hour
)

// waiterLiveSQL is the condition under which waiter row w (of
// volume_lock_waiter) holds its place; $live is the lockWaiterLive
// parameter's placeholder.
func waiterLiveSQL(live string) string {
	return `(w.last_attempt > now() - ` + live + `::interval OR EXISTS (
		SELECT 1 FROM volume_repair l WHERE l.volume_id = w.volume_id AND l.time_acquired < w.last_attempt))`
}

// queuedAheadSQL finds the oldest live waiter for volume $1 that arrived
// before waiter $2 (or before now, when $2 is not queued).
var queuedAheadSQL = `
SELECT w.waiter_id, w.kind, w.since FROM volume_lock_waiter w
WHERE w.volume_id = $1 AND w.waiter_id <> $2 AND ` + waiterLiveSQL("$3") + `
  AND w.since < coalesce((SELECT m.since FROM volume_lock_waiter m WHERE m.volume_id = $1 AND m.waiter_id = $2), now())
ORDER BY w.since, w.waiter_id LIMIT 1`

// noteWaiter records (or refreshes) a taker the lock refused, keeping its
// place: since is set once, last_attempt and attempts at every refusal.
func (s *Store) noteWaiter(ctx context.Context, volumeID, waiterID uuid.UUID, kind HolderKind) {
	err := fence.InTx(ctx, s.pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, noteWaiterSQL, []uuid.UUID{volumeID}, waiterID, kind)
		return err
	})
	if err != nil {
		// Only the queue position is lost; the taker retries anyway.
		s.lostWaiters.Add(1)
	}
}

const noteWaiterSQL = `
INSERT INTO volume_lock_waiter (volume_id, waiter_id, kind)
SELECT v, $2, $3 FROM unnest($1::uuid[]) AS v
ON CONFLICT (volume_id, waiter_id) DO UPDATE
SET last_attempt = now(), attempts = volume_lock_waiter.attempts + 1`

// LockHeldError is a refused lock taker's answer: who holds the volume's
// lock, or which older waiter it stands back for.
type LockHeldError struct {
	Volume uuid.UUID
	// Holder holds the lock (uuid.Nil when it is free but a waiter is
	// queued ahead, or when a concurrent taker won it).
	Holder uuid.UUID
	// QueuedBehind is the older waiter the taker stands back for.
	QueuedBehind uuid.UUID
	// HolderKind is the holder's (or the waiter's) kind.
	HolderKind HolderKind
	// Since is when the holder took it, or the waiter began waiting.
	Since time.Time
}

// Error is exactly ErrLockHeld's text, which the API promises (callers
// match on it); Detail says who.
func (e *LockHeldError) Error() string { return ErrLockHeld.Error() }

// Detail names the holder, or the waiter queued ahead.
func (e *LockHeldError) Detail() string {
	switch {
	case e.Holder != uuid.Nil:
		return fmt.Sprintf("volume %s held by %s %s since %s", e.Volume, e.HolderKind, e.Holder, e.Since.UTC().Format(time.RFC3339))
	case e.QueuedBehind != uuid.Nil:
		return fmt.Sprintf("volume %s free, but %s %s waits for it since %s", e.Volume, e.HolderKind, e.QueuedBehind, e.Since.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("volume %s just taken by another repair", e.Volume)
}

// LockDetail is err's Detail when it is a *LockHeldError, else its text.
func LockDetail(err error) string {
	var lh *LockHeldError
	if errors.As(err, &lh) {
		return lh.Detail()
	}
	return err.Error()
}

// Unwrap is ErrLockHeld: errors.Is(err, ErrLockHeld) holds, and the error
// has ErrLockHeld's kind (Aborted).
func (e *LockHeldError) Unwrap() error { return ErrLockHeld }

// unlockByRepair releases every lock a repair id holds, and gives up the
// places it waits in (a request's steps wait under its id). Zero rows is
// fine.
func unlockByRepair(ctx context.Context, tx pgx.Tx, repairID uuid.UUID) error {
	if _, err := tx.Exec(ctx, `DELETE FROM volume_repair WHERE repair_id = $1`, repairID); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, `DELETE FROM volume_lock_waiter WHERE waiter_id = $1`, repairID)
	return err
}

// LockVolume takes a lock in its own transaction (snapshot creation, a
// user's: it stands back for the lock queue but takes no place in it).
func (s *Store) LockVolume(ctx context.Context, volumeID, repairID uuid.UUID, kind HolderKind) error {
	return s.inTx(ctx, func(tx pgx.Tx) error { return lockVolume(ctx, tx, volumeID, repairID, repairID, kind) })
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

// LockWait is a taker waiting in a volume's lock queue.
type LockWait struct {
	VolumeID uuid.UUID
	WaiterID uuid.UUID
	Kind     HolderKind
	Since    time.Time
	Attempts int
	// Holder holds the volume's lock now (nil when it is free: the waiter
	// is about to get it, or stands back for an older one).
	Holder     *uuid.UUID
	HolderKind *HolderKind
}

// LockWaitsOf lists the live places a waiter holds in lock queues (a
// request's steps wait under the request's id), oldest first.
func (s *Store) LockWaitsOf(ctx context.Context, waiterID uuid.UUID) ([]LockWait, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT w.volume_id, w.waiter_id, w.kind, w.since, w.attempts, l.repair_id, l.holder_kind
		FROM volume_lock_waiter w LEFT JOIN volume_repair l ON l.volume_id = w.volume_id
		WHERE w.waiter_id = $1 AND `+waiterLiveSQL("$2")+`
		ORDER BY w.since, w.volume_id`, waiterID, lockWaiterLive)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (LockWait, error) {
		var w LockWait
		err := r.Scan(&w.VolumeID, &w.WaiterID, &w.Kind, &w.Since, &w.Attempts, &w.Holder, &w.HolderKind)
		return w, err
	})
}

// VolumesWithLockWaiters returns the volumes whose repair lock has a live
// waiter.
func (s *Store) VolumesWithLockWaiters(ctx context.Context) (map[uuid.UUID]bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT w.volume_id FROM volume_lock_waiter w
		WHERE `+waiterLiveSQL("$1"), lockWaiterLive)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
	if err != nil {
		return nil, err
	}
	out := make(map[uuid.UUID]bool, len(ids))
	for _, id := range ids {
		out[id] = true
	}
	return out, nil
}

// OldestLockWait is how long the longest live lock waiter has waited, and
// how many wait (0, 0 when nobody does).
func (s *Store) OldestLockWait(ctx context.Context) (time.Duration, int, error) {
	var oldest *time.Duration
	var n int
	err := s.pool.QueryRow(ctx, `SELECT max(now() - w.since), count(*) FROM volume_lock_waiter w
		WHERE `+waiterLiveSQL("$1"), lockWaiterLive).Scan(&oldest, &n)
	if err != nil || oldest == nil {
		return 0, n, err
	}
	return *oldest, n, nil
}
