package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
)

// Rebuild budgets (docs/operations.md, "Rebuild budgets"): limits on
// concurrent rebuild work, so that a mass failure does not turn into a
// rebuild storm. A rebuild is a read-only request's region clone or a rw
// request's repair; each takes one slot (a rebuild_slot row) when its
// start saga allocates the new region, and gives it back when its record
// leaves the state that holds it. Whether a slot counts is derived from the
// record's state in the same query (slotHeldSQL), never from memory, so a
// new leader sees exactly the use its predecessor left, and no exit path of
// a record (commit, unwind, abandonment, give-up) can leak a slot.

// Budget names, as operators, metrics and waits name them.
const (
	BudgetRackRebuilds       = "rack_rebuilds"
	BudgetSourceSledRebuilds = "source_sled_rebuilds"
	BudgetDestSledRebuilds   = "dest_sled_rebuilds"
	BudgetRackSteps          = "rack_steps"
)

// BudgetNames lists every budget, in the order they are shown.
var BudgetNames = []string{BudgetRackRebuilds, BudgetSourceSledRebuilds, BudgetDestSledRebuilds, BudgetRackSteps}

// Limits are the budgets' limits; 0 is unlimited.
type Limits struct {
	RackRebuilds       int
	SourceSledRebuilds int
	DestSledRebuilds   int
	RackSteps          int
}

// Get returns the named limit.
func (l Limits) Get(name string) int {
	switch name {
	case BudgetRackRebuilds:
		return l.RackRebuilds
	case BudgetSourceSledRebuilds:
		return l.SourceSledRebuilds
	case BudgetDestSledRebuilds:
		return l.DestSledRebuilds
	case BudgetRackSteps:
		return l.RackSteps
	}
	return 0
}

// With returns l with the named limit set.
func (l Limits) With(name string, v int) Limits {
	switch name {
	case BudgetRackRebuilds:
		l.RackRebuilds = v
	case BudgetSourceSledRebuilds:
		l.SourceSledRebuilds = v
	case BudgetDestSledRebuilds:
		l.DestSledRebuilds = v
	case BudgetRackSteps:
		l.RackSteps = v
	}
	return l
}

// full reports whether use has reached limit (0: never).
func full(limit, use int) bool { return limit > 0 && use >= limit }

// Order is what orders a request's admission under the budgets: the
// operator's priority (higher first), then its live copies (fewer first;
// -1 until its task counted them), then its request time.
type Order struct {
	Priority   int32
	LiveCopies int32
}

const orderColumns = `priority, live_copies`

// BudgetError says which budget held a rebuild or a step back. Its text
// begins with "rebuild budget", which waits and task statuses match on.
type BudgetError struct {
	Budget string
	// Sled is set for the per-sled budgets.
	Sled  uuid.UUID
	Limit int
	InUse int
}

// BudgetErrorPrefix begins every BudgetError's text.
const BudgetErrorPrefix = "rebuild budget "

func (e *BudgetError) Error() string {
	if e.Sled != uuid.Nil {
		return fmt.Sprintf("%s%s: sled %s is at its limit of %d (%d in use)", BudgetErrorPrefix, e.Budget, e.Sled, e.Limit, e.InUse)
	}
	return fmt.Sprintf("%s%s: at its limit of %d (%d in use)", BudgetErrorPrefix, e.Budget, e.Limit, e.InUse)
}

// Unwrap: held back by the state of the rack, not by a bad request.
func (e *BudgetError) Unwrap() error { return apierr.Precondition }

// RebuildLimits returns the limits in force: the configured ones, each
// overridden by its runtime value if one was set, and which were.
func (s *Store) RebuildLimits(ctx context.Context) (Limits, map[string]bool, error) {
	l := s.configured
	runtime := map[string]bool{}
	rows, err := s.pool.Query(ctx, `SELECT name, value FROM rebuild_budget`)
	if err != nil {
		return l, runtime, fmt.Errorf("rebuild budgets: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var name string
		var v int
		if err := rows.Scan(&name, &v); err != nil {
			return l, runtime, err
		}
		l = l.With(name, v)
		runtime[name] = true
	}
	return l, runtime, rows.Err()
}

// ConfiguredLimits are the limits the process was started with.
func (s *Store) ConfiguredLimits() Limits { return s.configured }

// SetRebuildLimits stores runtime values (name → limit, each >= 0; the
// caller validates), after dropping every runtime value when reset, in one
// fenced transaction.
func (s *Store) SetRebuildLimits(ctx context.Context, set map[string]int, reset bool) error {
	for name, v := range set {
		if !slices.Contains(BudgetNames, name) || v < 0 {
			return apierr.Errorf(apierr.Invalid, "%s: must be a known budget with a limit >= 0", name)
		}
	}
	return s.inTx(ctx, func(tx pgx.Tx) error {
		if reset {
			if _, err := tx.Exec(ctx, `DELETE FROM rebuild_budget`); err != nil {
				return err
			}
		}
		for name, v := range set {
			if _, err := tx.Exec(ctx, `INSERT INTO rebuild_budget (name, value) VALUES ($1, $2)
				ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value, time_modified = now()`, name, v); err != nil {
				return err
			}
		}
		return nil
	})
}

// Rebuild kinds.
const (
	RebuildClone  = "clone"
	RebuildRepair = "repair"
)

// slotHeldSQL is true for a slot (alias sl) whose record still holds it: a
// clone while its read-only request is Allocating under the saga that took
// the slot; a repair while its rw request is Allocating under that saga, or
// Running or Driving (the repair under way).
const slotHeldSQL = `(
	(sl.kind = 'clone' AND EXISTS (SELECT 1 FROM ro_replacement r
		WHERE r.id = sl.record_id AND r.state = 'allocating' AND r.operating_saga_id = sl.saga_id))
	OR (sl.kind = 'repair' AND EXISTS (SELECT 1 FROM rw_replacement r
		WHERE r.id = sl.record_id AND ((r.state = 'allocating' AND r.operating_saga_id = sl.saga_id)
			OR r.state IN ('running', 'driving')))))`

// Slot is one rebuild holding its slot.
type Slot struct {
	RecordID uuid.UUID
	Kind     string
	SagaID   uuid.UUID
	DestSled uuid.UUID
	Sources  []uuid.UUID
	Since    time.Time
}

// HeldSlots lists the rebuilds holding a slot now, oldest first.
func (s *Store) HeldSlots(ctx context.Context) ([]Slot, error) {
	return heldSlots(ctx, s.pool)
}

type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func heldSlots(ctx context.Context, q querier) ([]Slot, error) {
	rows, err := q.Query(ctx, `SELECT record_id, kind, saga_id, dest_sled_id, source_sled_ids, time_acquired
		FROM rebuild_slot sl WHERE `+slotHeldSQL+` ORDER BY time_acquired, record_id`)
	if err != nil {
		return nil, fmt.Errorf("rebuild slots: %w", err)
	}
	defer rows.Close()
	var out []Slot
	for rows.Next() {
		var sl Slot
		if err := rows.Scan(&sl.RecordID, &sl.Kind, &sl.SagaID, &sl.DestSled, &sl.Sources, &sl.Since); err != nil {
			return nil, err
		}
		out = append(out, sl)
	}
	return out, rows.Err()
}

// Use is the rebuild budgets' use.
type Use struct {
	Rack     int
	BySource map[uuid.UUID]int
	ByDest   map[uuid.UUID]int
}

// UseOf counts slots, leaving out the record skip (uuid.Nil: none).
func UseOf(slots []Slot, skip uuid.UUID) Use {
	u := Use{BySource: map[uuid.UUID]int{}, ByDest: map[uuid.UUID]int{}}
	for _, sl := range slots {
		if sl.RecordID == skip {
			continue
		}
		u.Rack++
		u.ByDest[sl.DestSled]++
		for _, src := range sl.Sources {
			u.BySource[src]++
		}
	}
	return u
}

// MaxOf is the highest use over sleds (0 for none).
func MaxOf(by map[uuid.UUID]int) int {
	m := 0
	for _, n := range by {
		m = max(m, n)
	}
	return m
}

// Check says which budget (rack, then source sleds) a rebuild reading from
// sources would exceed, or nil. Destinations are left to the allocation
// (FullDestinations).
func (u Use) Check(l Limits, sources []uuid.UUID) *BudgetError {
	if full(l.RackRebuilds, u.Rack) {
		return &BudgetError{Budget: BudgetRackRebuilds, Limit: l.RackRebuilds, InUse: u.Rack}
	}
	for _, src := range sources {
		if n := u.BySource[src]; full(l.SourceSledRebuilds, n) {
			return &BudgetError{Budget: BudgetSourceSledRebuilds, Sled: src, Limit: l.SourceSledRebuilds, InUse: n}
		}
	}
	return nil
}

// FullDestinations lists the sleds at their destination limit, sorted.
func (u Use) FullDestinations(l Limits) []uuid.UUID {
	var out []uuid.UUID
	for sled, n := range u.ByDest {
		if full(l.DestSledRebuilds, n) {
			out = append(out, sled)
		}
	}
	slices.SortFunc(out, func(a, b uuid.UUID) int { return slices.Compare(a[:], b[:]) })
	return out
}

// RebuildClaim is a rebuild asking for its slot.
type RebuildClaim struct {
	RecordID uuid.UUID
	Kind     string
	SagaID   uuid.UUID
	Sources  []uuid.UUID
}

// rebuildLockKey is the advisory lock that serialises admissions across
// processes (an old leader's saga still finishing its node while the new
// leader admits).
const rebuildLockKey int64 = 0x72656275696c64 // "rebuild"

// AllocateFunc allocates the new region, never on a sled in exclude, and
// returns the sled it is on. On a replay (the region already exists) it
// returns that region's sled wherever it is.
type AllocateFunc func(ctx context.Context, exclude []uuid.UUID) (uuid.UUID, error)

// ErrDestinationsFull wraps an allocation that failed for want of room
// while sleds were excluded for their destination budget, when the same
// allocation without them would have succeeded: the caller's alloc
// reports it, and AdmitRebuild turns it into the destination BudgetError.
var ErrDestinationsFull = errors.New("every eligible sled is at its destination budget")

// AdmitRebuild is the one critical section of rebuild admission: under a
// process mutex and a database advisory lock it reads the slots that count,
// refuses (a *BudgetError) a rebuild that would exceed the rack or a source
// sled budget, allocates with the sleds at their destination budget
// excluded, and records the slot, so no two admissions can both take a
// sled's last slot. A re-run by the same saga that already holds the slot
// allocates again (a replay) and keeps it. A re-run that finds its region
// already placed on a sled that is full now (a crash between allocating and
// recording) is refused like any other: its saga unwinds and frees the
// region, and the budget is never exceeded.
func (s *Store) AdmitRebuild(ctx context.Context, c RebuildClaim, alloc AllocateFunc) (uuid.UUID, error) {
	s.admit.Lock()
	defer s.admit.Unlock()
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	defer conn.Release()
	// The lock is a session's, held across the allocation call, when the
	// session idles outside any transaction. A leader stopped there
	// (SIGSTOP, a frozen machine) would hold it for as long as it is
	// stopped, and its successor's admissions would wait on it; so while
	// the lock is held the server ends the session once it has idled for
	// db.IdleInTransactionTimeout, which frees the lock. The bound is the
	// one a stopped transaction gets, far above an allocation call.
	var idleBefore string
	if err := conn.QueryRow(ctx, `SELECT current_setting('idle_session_timeout'),
		set_config('idle_session_timeout', $2, false), pg_advisory_lock($1)`,
		rebuildLockKey, strconv.FormatInt(db.IdleInTransactionTimeout.Milliseconds(), 10)).Scan(&idleBefore, nil, nil); err != nil {
		// The answer may have been lost after the lock was taken: like
		// a failed unlock, the connection must not go back to the pool.
		_ = conn.Conn().Close(ctx)
		return uuid.Nil, fmt.Errorf("rebuild admission lock: %w", err)
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1), set_config('idle_session_timeout', $2, false)`,
			rebuildLockKey, idleBefore); err != nil {
			// A connection that may still hold the lock, or still carry
			// the bound, must not go back to the pool; closing it
			// releases the lock.
			_ = conn.Conn().Close(uctx)
		}
	}()
	limits, _, err := s.RebuildLimits(ctx)
	if err != nil {
		return uuid.Nil, err
	}
	slots, err := heldSlots(ctx, conn)
	if err != nil {
		return uuid.Nil, err
	}
	for _, sl := range slots {
		if sl.RecordID == c.RecordID && sl.SagaID == c.SagaID {
			// A re-run: the slot is ours; the allocation replays.
			dest, err := alloc(ctx, nil)
			if err != nil {
				return uuid.Nil, err
			}
			if dest != sl.DestSled {
				return uuid.Nil, fmt.Errorf("%w: rebuild of %s holds a slot on sled %s but its region is on sled %s", ErrConflict, c.RecordID, sl.DestSled, dest)
			}
			return dest, nil
		}
	}
	use := UseOf(slots, c.RecordID)
	if be := use.Check(limits, c.Sources); be != nil {
		return uuid.Nil, be
	}
	exclude := use.FullDestinations(limits)
	dest, err := alloc(ctx, exclude)
	if errors.Is(err, ErrDestinationsFull) {
		return uuid.Nil, &BudgetError{Budget: BudgetDestSledRebuilds, Limit: limits.DestSledRebuilds, InUse: limits.DestSledRebuilds}
	}
	if err != nil {
		return uuid.Nil, err
	}
	if n := use.ByDest[dest]; full(limits.DestSledRebuilds, n) {
		return uuid.Nil, &BudgetError{Budget: BudgetDestSledRebuilds, Sled: dest, Limit: limits.DestSledRebuilds, InUse: n}
	}
	sources := c.Sources
	if sources == nil {
		sources = []uuid.UUID{}
	}
	// The lock is still ours only if the session outlived the allocation:
	// one that idled past the bound (this process stopped, or an
	// allocation that slow) has been ended, and the slot is not recorded.
	if err := conn.Ping(ctx); err != nil {
		return uuid.Nil, fmt.Errorf("rebuild admission lock lost during the allocation: %w", err)
	}
	err = s.inTx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM rebuild_slot sl WHERE NOT `+slotHeldSQL); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO rebuild_slot (record_id, kind, saga_id, dest_sled_id, source_sled_ids)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (record_id) DO UPDATE SET kind = EXCLUDED.kind, saga_id = EXCLUDED.saga_id,
				dest_sled_id = EXCLUDED.dest_sled_id, source_sled_ids = EXCLUDED.source_sled_ids, time_acquired = now()`,
			c.RecordID, c.Kind, c.SagaID, dest, sources)
		return err
	})
	if err != nil {
		return uuid.Nil, err
	}
	return dest, nil
}

// RunningSteps counts the steps in flight (Running), the rack_steps
// budget's use.
func (s *Store) RunningSteps(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM ro_replacement_step WHERE state = 'running'`).Scan(&n)
	return n, err
}

// checkStepBudget refuses, inside a step's claim, a step that would exceed
// the rack_steps budget. The claim's transaction is SERIALIZABLE, so two
// claims that each saw one slot left cannot both commit.
func (s *Store) checkStepBudget(ctx context.Context, tx pgx.Tx, step uuid.UUID) error {
	limit := s.configured.RackSteps
	var v *int
	if err := tx.QueryRow(ctx, `SELECT value FROM rebuild_budget WHERE name = $1`, BudgetRackSteps).Scan(&v); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	if v != nil {
		limit = *v
	}
	if limit <= 0 {
		return nil
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM ro_replacement_step WHERE state = 'running' AND id <> $1`, step).Scan(&n); err != nil {
		return err
	}
	if full(limit, n) {
		return &BudgetError{Budget: BudgetRackSteps, Limit: limit, InUse: n}
	}
	return nil
}

// SetPriority sets a request's priority, read-only or rw. ErrNotFound for
// an unknown id.
func (s *Store) SetPriority(ctx context.Context, id uuid.UUID, priority int32) error {
	return s.inTx(ctx, func(tx pgx.Tx) error {
		for _, table := range []string{"ro_replacement", "rw_replacement"} {
			tag, err := tx.Exec(ctx, `UPDATE `+table+` SET priority = $2 WHERE id = $1`, id, priority)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 1 {
				return nil
			}
		}
		return fmt.Errorf("replacement %s: %w", id, ErrNotFound)
	})
}

// LiveCopies is a request's live-copies figure.
type LiveCopies struct {
	ID     uuid.UUID
	Copies int32
}

// SetLiveCopies records the live copies each request's task counted, one
// statement per table in one fenced transaction.
func (s *Store) SetLiveCopies(ctx context.Context, ro, rw []LiveCopies) error {
	return s.inTx(ctx, func(tx pgx.Tx) error { return setLiveCopies(ctx, tx, ro, rw) })
}

func setLiveCopies(ctx context.Context, tx pgx.Tx, ro, rw []LiveCopies) error {
	for table, list := range map[string][]LiveCopies{"ro_replacement": ro, "rw_replacement": rw} {
		if len(list) == 0 {
			continue
		}
		ids := make([]uuid.UUID, len(list))
		n := make([]int32, len(list))
		for i, l := range list {
			ids[i], n[i] = l.ID, l.Copies
		}
		if _, err := tx.Exec(ctx, `UPDATE `+table+` t SET live_copies = u.n
			FROM unnest($1::uuid[], $2::int[]) AS u(id, n) WHERE t.id = u.id AND t.live_copies <> u.n`, ids, n); err != nil {
			return fmt.Errorf("live copies: %w", err)
		}
	}
	return nil
}

// RebuildsStarting lists the requests in a start saga's Allocating state,
// read-only and rw: each either holds a slot already or is on its way to
// its allocation, where it will ask for one. Planning counts the second
// kind as taken, so a new leader does not admit past the budget while its
// adopted sagas are still before their allocation.
func (s *Store) RebuildsStarting(ctx context.Context) ([]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT id FROM ro_replacement WHERE state = 'allocating'
		UNION ALL SELECT id FROM rw_replacement WHERE state = 'allocating'`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
}

// RequestedStepsByRequest lists Requested steps with no saga, at most per
// of each request (oldest first): a fan-out of any size cannot push a
// small request's steps out of the list a pass looks at.
func (s *Store) RequestedStepsByRequest(ctx context.Context, per int) ([]Step, error) {
	return collectSteps(s.pool.Query(ctx, `SELECT `+stepColumns+` FROM (
		SELECT *, row_number() OVER (PARTITION BY request_id ORDER BY request_time, id) AS n
		FROM ro_replacement_step WHERE state = 'requested' AND operating_saga_id IS NULL) s
		WHERE n <= $1 ORDER BY request_time, id`, per))
}

// RunningStepRequests maps each Running step to its request.
func (s *Store) RunningStepRequests(ctx context.Context) (map[uuid.UUID]uuid.UUID, error) {
	rows, err := s.pool.Query(ctx, `SELECT id, request_id FROM ro_replacement_step WHERE state = 'running'`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[uuid.UUID]uuid.UUID{}
	for rows.Next() {
		var id, req uuid.UUID
		if err := rows.Scan(&id, &req); err != nil {
			return nil, err
		}
		out[id] = req
	}
	return out, rows.Err()
}
