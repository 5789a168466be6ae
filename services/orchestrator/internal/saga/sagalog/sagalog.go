// Package sagalog is the SQL of the durable saga log (docs/architecture.md,
// "The saga engine"; tables in migrations/002_saga.sql). It knows rows and
// events, not DAGs.
//
// Every write is ONE statement (data-modifying CTEs), so it is atomic, one
// round trip and one commit without an explicit transaction; that is what
// keeps the engine near one commit per saga node. Every write that advances
// a saga is conditional on ownership: the saga row must still name the
// writer's SEC and the adopt generation it loaded, and be unfinished. The
// ownership check share-locks the saga row, so an adoption (an UPDATE of that
// row) is ordered strictly before or after each append: either the append
// sees the new owner and writes nothing, or the adopter's later log load sees
// the appended events.
package sagalog

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/db"
)

// Saga states as stored.
const (
	StateRunning   = "running"
	StateUnwinding = "unwinding"
	StateDone      = "done"
	StateAbandoned = "abandoned"
)

// Abandon reasons as stored.
const (
	AbandonOperator      = "operator"
	AbandonUnrecoverable = "unrecoverable"
	AbandonOrphaned      = "orphaned"
)

// ErrNotFound means no saga has the id.
var ErrNotFound = apierr.New(apierr.NotFound, "saga not found")

// Owner identifies who may append to a saga.
type Owner struct {
	SEC        string
	Generation int64
}

// Saga is one row of the saga table.
type Saga struct {
	ID              uuid.UUID
	Name            string
	Creator         string
	TimeCreated     time.Time
	DAG             []byte
	State           string
	CurrentSEC      *string
	AdoptGeneration int64
	AdoptTime       time.Time
	AbandonTime     *time.Time
	AbandonReason   *string
	AbandonComment  *string
	// UnwindTime and UnwindComment are set once an operator asked for the
	// saga to be unwound (RequestUnwind, ResumeStuck).
	UnwindTime    *time.Time
	UnwindComment *string
	SubjectID     *string
	TraceParent   *string
	// Stuck is derived: the log holds an undo_failed event that no
	// undo_skipped of the same node answers.
	Stuck bool
	// EndSucceeded is derived: the saga is done and its end node (the
	// DAG's last) has a succeeded event, which is what makes a finished
	// saga a success rather than an unwound failure.
	EndSucceeded bool
	// LastEventTime is derived (zero without events).
	LastEventTime time.Time
}

// Event is one row of saga_node_event. Data is JSON or nil.
type Event struct {
	NodeID  int
	Type    string
	Data    []byte
	Time    time.Time
	Creator string
}

// pgUUID passes an id in pgx's native form: a uuid.UUID goes through its
// driver.Valuer (a string parsed back by pgx), which costs more CPU per
// statement than the rest of the encoding together.
func pgUUID(id uuid.UUID) pgtype.UUID { return pgtype.UUID{Bytes: id, Valid: true} }

// Store wraps the pool.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a store over pool.
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

func eventArrays(events []Event) (ids []int32, types []string, data []*string) {
	ids = make([]int32, len(events))
	types = make([]string, len(events))
	data = make([]*string, len(events))
	for i, e := range events {
		ids[i] = int32(e.NodeID)
		types[i] = e.Type
		if e.Data != nil {
			s := string(e.Data)
			data[i] = &s
		}
	}
	return ids, types, data
}

const createSQL = `
WITH s AS (
	INSERT INTO saga (id, name, creator, dag, saga_state, current_sec, adopt_generation,
	                  subject_id, subject_parent_id, traceparent)
	VALUES ($1, $2, $3, $4, $10, $3, 1, $5, $11, $6)
	ON CONFLICT (id) DO NOTHING
	RETURNING id
)
INSERT INTO saga_node_event (saga_id, node_id, event_type, data, creator)
SELECT s.id, e.node_id, e.event_type, e.data::jsonb, $3
FROM s, unnest($7::int[], $8::text[], $9::text[]) AS e(node_id, event_type, data)
ON CONFLICT DO NOTHING`

// ErrDuplicate means a different saga already has the id.
var ErrDuplicate = errors.New("saga id already in use")

// CreateSaga writes the saga row (in state, normally running; owned by sec
// at generation 1) together with its first events, atomically. Re-running it
// after an ambiguous failure is harmless: a row this SEC already wrote with
// the same DAG, still in the state it was created in, counts as created; any
// other row with the id is ErrDuplicate — a saga that has since finished,
// been abandoned or started unwinding included, since the caller would
// otherwise drive it again from its first node (re-running, say, a lock
// whose release is long done).
func (s *Store) CreateSaga(ctx context.Context, id uuid.UUID, name, sec, state string, dag []byte, subjectID, subjectParentID, traceParent *string, events []Event) error {
	ids, types, data := eventArrays(events)
	tag, err := s.pool.Exec(ctx, createSQL, pgUUID(id), name, sec, dag, subjectID, traceParent, ids, types, data, state, subjectParentID)
	if err != nil {
		return err
	}
	if tag.RowsAffected() > 0 {
		return nil
	}
	var same bool
	err = s.pool.QueryRow(ctx, `SELECT creator = $2 AND dag = $3::jsonb AND saga_state = $4 FROM saga WHERE id = $1`,
		pgUUID(id), sec, dag, state).Scan(&same)
	if err != nil {
		return err
	}
	if !same {
		return fmt.Errorf("%w: %s", ErrDuplicate, id)
	}
	return nil
}

const appendSQL = `
WITH owner AS (
	SELECT id FROM saga
	WHERE id = $1 AND current_sec = $2 AND adopt_generation = $3
	  AND saga_state IN ('running', 'unwinding')
	FOR SHARE
), ins AS (
	INSERT INTO saga_node_event (saga_id, node_id, event_type, data, creator)
	SELECT owner.id, e.node_id, e.event_type, e.data::jsonb, $2
	FROM owner, unnest($4::int[], $5::text[], $6::text[]) AS e(node_id, event_type, data)
	ON CONFLICT DO NOTHING
), upd AS (
	UPDATE saga SET saga_state = $7
	WHERE $7 <> '' AND id IN (SELECT id FROM owner)
)
SELECT count(*) FROM owner`

// Append inserts events (idempotently) and, when newState is not empty,
// moves the saga to it, all in one statement and only while owner still owns
// the unfinished saga. owned=false means nothing was written: the saga was
// adopted, abandoned or finished by someone else.
func (s *Store) Append(ctx context.Context, id uuid.UUID, owner Owner, events []Event, newState string) (owned bool, err error) {
	ids, types, data := eventArrays(events)
	var n int
	err = s.pool.QueryRow(ctx, appendSQL, pgUUID(id), owner.SEC, owner.Generation, ids, types, data, newState).Scan(&n)
	if err != nil {
		return false, err
	}
	return n == 1, nil
}

// appendManySQL writes a group; appendManyNewSQL is the same for events never
// written before, the normal case: without ON CONFLICT each event costs an
// index probe fewer. An event sent again (a retry after an ambiguous
// failure, a recovery) makes that statement fail whole with a unique
// violation, having written nothing, and the group goes again as
// appendManySQL.
var (
	appendManySQL    = appendManyQuery("ON CONFLICT DO NOTHING")
	appendManyNewSQL = appendManyQuery("")
)

func appendManyQuery(onConflict string) string {
	return `
WITH req AS (
	SELECT * FROM unnest($1::uuid[], $2::bigint[], $3::text[]) AS r(saga_id, gen, new_state)
), owner AS (
	SELECT s.id, req.new_state FROM saga s JOIN req ON s.id = req.saga_id
	-- id = ANY lets the unfinished-by-SEC index find just these rows; without
	-- it every group commit walked the SEC's whole in-flight set (a heap
	-- fetch each). A generic plan made while the table was small still
	-- filters on it instead, which costs no more than before.
	WHERE s.id = ANY($1::uuid[])
	  AND s.current_sec = $4 AND s.adopt_generation = req.gen
	  AND s.saga_state IN ('running', 'unwinding')
	ORDER BY s.id
	FOR SHARE OF s
), ins AS (
	INSERT INTO saga_node_event (saga_id, node_id, event_type, data, creator)
	SELECT e.saga_id, e.node_id, e.event_type, e.data::jsonb, $4
	FROM unnest($5::uuid[], $6::int[], $7::text[], $8::text[]) AS e(saga_id, node_id, event_type, data)
	JOIN owner ON owner.id = e.saga_id
	` + onConflict + `
), upd AS (
	UPDATE saga SET saga_state = owner.new_state FROM owner
	WHERE saga.id = owner.id AND owner.new_state <> ''
)
SELECT id FROM owner`
}

// AppendRequest is one saga's share of AppendMany.
type AppendRequest struct {
	ID         uuid.UUID
	Generation int64
	Events     []Event
	NewState   string
}

// AppendMany is Append for several sagas of one SEC in one statement (group
// commit): each saga's events and state change are written only if sec
// still owns it at the generation given. It returns the ids that were
// owned (and so written). Saga rows are share-locked in id order, the same
// order Reassign locks them in, so the two cannot deadlock.
func (s *Store) AppendMany(ctx context.Context, sec string, reqs []AppendRequest) (map[uuid.UUID]bool, error) {
	sagaIDs := make([]pgtype.UUID, len(reqs))
	gens := make([]int64, len(reqs))
	states := make([]string, len(reqs))
	var evSaga []pgtype.UUID
	var evNode []int32
	var evType []string
	var evData []*string
	for i, r := range reqs {
		sagaIDs[i], gens[i], states[i] = pgUUID(r.ID), r.Generation, r.NewState
		ids, types, data := eventArrays(r.Events)
		for range r.Events {
			evSaga = append(evSaga, sagaIDs[i])
		}
		evNode = append(evNode, ids...)
		evType = append(evType, types...)
		evData = append(evData, data...)
	}
	if evSaga == nil {
		evSaga, evNode, evType, evData = []pgtype.UUID{}, []int32{}, []string{}, []*string{}
	}
	owned, err := s.appendMany(ctx, appendManyNewSQL, len(reqs), sagaIDs, gens, states, sec, evSaga, evNode, evType, evData)
	if db.IsUniqueViolation(err, "saga_node_event_pkey") {
		owned, err = s.appendMany(ctx, appendManySQL, len(reqs), sagaIDs, gens, states, sec, evSaga, evNode, evType, evData)
	}
	return owned, err
}

func (s *Store) appendMany(ctx context.Context, sql string, n int, args ...any) (map[uuid.UUID]bool, error) {
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	owned := make(map[uuid.UUID]bool, n)
	var id pgtype.UUID
	_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
		owned[uuid.UUID(id.Bytes)] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	return owned, nil
}

// stuckUndos selects the undo_failed events (alias u) that no undo_skipped
// of the same node answers: the undos that leave a saga stuck. An operator
// who dealt with a failed undo's effect records undo_skipped (ResumeStuck);
// the undo_failed stays in the log, which is append-only.
const stuckUndos = `SELECT u.saga_id, u.node_id, u.data FROM saga_node_event u
	WHERE u.event_type = 'undo_failed' AND NOT EXISTS (SELECT 1 FROM saga_node_event k
		WHERE k.saga_id = u.saga_id AND k.node_id = u.node_id AND k.event_type = 'undo_skipped')`

const sagaColumns = `s.id, s.name, s.creator, s.time_created, s.dag, s.saga_state, s.current_sec,
	s.adopt_generation, s.adopt_time, s.abandon_time, s.abandon_reason, s.abandon_comment,
	s.unwind_time, s.unwind_comment, s.subject_id, s.traceparent,
	EXISTS (` + stuckUndos + ` AND u.saga_id = s.id),
	-- One index probe per saga (the event table's primary key), so a list
	-- of thousands costs no query per saga. The CASE keeps a malformed DAG
	-- from failing the whole list.
	s.saga_state = 'done' AND EXISTS (SELECT 1 FROM saga_node_event o WHERE o.saga_id = s.id
		AND o.node_id = CASE WHEN jsonb_typeof(s.dag->'nodes') = 'array' THEN jsonb_array_length(s.dag->'nodes') - 1 END
		AND o.event_type = 'succeeded'),
	COALESCE((SELECT max(event_time) FROM saga_node_event l WHERE l.saga_id = s.id), 'epoch'::timestamptz)`

func scanSaga(row pgx.Row) (Saga, error) {
	var r Saga
	err := row.Scan(&r.ID, &r.Name, &r.Creator, &r.TimeCreated, &r.DAG, &r.State, &r.CurrentSEC,
		&r.AdoptGeneration, &r.AdoptTime, &r.AbandonTime, &r.AbandonReason, &r.AbandonComment,
		&r.UnwindTime, &r.UnwindComment, &r.SubjectID, &r.TraceParent, &r.Stuck, &r.EndSucceeded, &r.LastEventTime)
	return r, err
}

// Get loads one saga row.
func (s *Store) Get(ctx context.Context, id uuid.UUID) (Saga, error) {
	r, err := scanSaga(s.pool.QueryRow(ctx, `SELECT `+sagaColumns+` FROM saga s WHERE s.id = $1`, pgUUID(id)))
	if errors.Is(err, pgx.ErrNoRows) {
		return Saga{}, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	return r, err
}

// Exists reports whether a saga has the id (in any state).
func (s *Store) Exists(ctx context.Context, id uuid.UUID) (bool, error) {
	var ok bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM saga WHERE id = $1)`, pgUUID(id)).Scan(&ok)
	return ok, err
}

// Filter narrows List.
type Filter struct {
	// States, when not empty, keeps only these states.
	States []string
	// CurrentSEC, when not empty, keeps only sagas owned by it.
	CurrentSEC string
	// SubjectID, when not empty, keeps only sagas acting on it.
	SubjectID string
	// Name, when not empty, keeps only sagas of that template.
	Name string
	// SubjectOrParent, when not empty, keeps only sagas whose subject is it
	// or belongs to it (subject_parent_id): a request's sagas and its
	// steps'.
	SubjectOrParent string
	// After pages: only ids greater than it (zero: from the start).
	After uuid.UUID
	// Limit defaults to 100.
	Limit int
}

// List returns sagas ordered by id. Only the filters given become
// conditions, so each filtered listing is planned against its own index
// (saga_by_subject, saga_by_subject_parent, saga_by_name,
// saga_by_state_time) rather than a catch-all plan.
func (s *Store) List(ctx context.Context, f Filter) ([]Saga, error) {
	limit := f.Limit
	if limit <= 0 {
		limit = 100
	}
	args := []any{pgUUID(f.After), limit}
	where := "s.id > $1"
	and := func(cond string, v any) {
		args = append(args, v)
		where += fmt.Sprintf(" AND "+cond, len(args))
	}
	if len(f.States) > 0 {
		and("s.saga_state = ANY($%d::text[])", f.States)
	}
	if f.CurrentSEC != "" {
		and("s.current_sec = $%d", f.CurrentSEC)
	}
	if f.SubjectID != "" {
		and("s.subject_id = $%d", f.SubjectID)
	}
	if f.Name != "" {
		and("s.name = $%d", f.Name)
	}
	if f.SubjectOrParent != "" {
		args = append(args, f.SubjectOrParent)
		where += fmt.Sprintf(" AND (s.subject_id = $%[1]d OR s.subject_parent_id = $%[1]d)", len(args))
	}
	rows, err := s.pool.Query(ctx, `SELECT `+sagaColumns+` FROM saga s WHERE `+where+` ORDER BY s.id LIMIT $2`, args...)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Saga, error) { return scanSaga(r) })
}

// RecoveryCandidates lists every unfinished saga owned by sec.
func (s *Store) RecoveryCandidates(ctx context.Context, sec string) ([]Saga, error) {
	var all []Saga
	after := uuid.UUID{}
	for {
		page, err := s.List(ctx, Filter{States: []string{StateRunning, StateUnwinding}, CurrentSEC: sec, After: after, Limit: 200})
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if len(page) < 200 {
			return all, nil
		}
		after = page[len(page)-1].ID
	}
}

// Events loads a saga's whole log (in no meaningful order: replay sorts).
func (s *Store) Events(ctx context.Context, id uuid.UUID) ([]Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT node_id, event_type, data, event_time, creator
		FROM saga_node_event WHERE saga_id = $1 ORDER BY node_id, event_time`, pgUUID(id))
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Event, error) {
		var e Event
		err := r.Scan(&e.NodeID, &e.Type, &e.Data, &e.Time, &e.Creator)
		return e, err
	})
}

// Reassign hands every unfinished saga of from to to, bumping the adopt
// generation so that from's in-flight appends are refused from now on.
func (s *Store) Reassign(ctx context.Context, from, to string) (int64, error) {
	// Rows are locked in id order, as AppendMany locks them.
	tag, err := s.pool.Exec(ctx, `UPDATE saga
		SET current_sec = $2, adopt_generation = adopt_generation + 1, adopt_time = now()
		WHERE id IN (
			SELECT id FROM saga
			WHERE current_sec = $1 AND saga_state IN ('running', 'unwinding')
			ORDER BY id FOR UPDATE)
		  AND current_sec = $1 AND saga_state IN ('running', 'unwinding')`, from, to)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

// Claim makes the caller the only driver of an unfinished saga it owns:
// it bumps adopt_generation from gen, so a stale driver of the same SEC id
// (an earlier incarnation whose shutdown did not complete) can no longer
// append. It returns the new generation; ok=false means the row changed
// meanwhile (adopted, abandoned, finished or claimed already).
func (s *Store) Claim(ctx context.Context, id uuid.UUID, sec string, gen int64) (newGen int64, ok bool, err error) {
	err = s.pool.QueryRow(ctx, `UPDATE saga SET adopt_generation = adopt_generation + 1, adopt_time = now()
		WHERE id = $1 AND current_sec = $2 AND adopt_generation = $3
		  AND saga_state IN ('running', 'unwinding')
		RETURNING adopt_generation`, pgUUID(id), sec, gen).Scan(&newGen)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	return newGen, err == nil, err
}

// Abandon marks an unfinished saga abandoned. With expectedSEC it only does
// so while that SEC owns it (recovery giving up on its own saga). It
// reports whether the row changed; an already abandoned saga counts as
// changed, so retries are harmless.
func (s *Store) Abandon(ctx context.Context, id uuid.UUID, reason, comment string, expectedSEC *string) (bool, error) {
	var n int
	err := s.pool.QueryRow(ctx, `WITH upd AS (
			UPDATE saga SET saga_state = 'abandoned', abandon_time = now(),
				abandon_reason = $2, abandon_comment = $3
			WHERE id = $1 AND ($4::text IS NULL OR current_sec = $4)
			  AND (saga_state IN ('running', 'unwinding')
			       -- A stuck saga is done in the log; abandoning it without
			       -- unwinding is how an operator acknowledges having repaired
			       -- every effect it left.
			       OR (saga_state = 'done' AND EXISTS (`+stuckUndos+` AND u.saga_id = $1)))
			RETURNING id
		)
		SELECT (SELECT count(*) FROM upd) + (SELECT count(*) FROM saga WHERE id = $1 AND saga_state = 'abandoned')`,
		pgUUID(id), reason, comment, expectedSEC).Scan(&n)
	if err != nil {
		return false, err
	}
	return n > 0, nil
}

// RequestUnwind records that an operator asked for an unfinished saga owned
// by sec to be unwound, with their comment, before the engine acts on it:
// whoever drives the saga from then on (this SEC, or the one that recovers
// it after a crash) unwinds it. A second request keeps the first one's time
// and comment. ok=false means nothing was written: the saga is not
// unfinished, or not sec's.
func (s *Store) RequestUnwind(ctx context.Context, id uuid.UUID, sec, comment string) (ok bool, err error) {
	tag, err := s.pool.Exec(ctx, `UPDATE saga
		SET unwind_time = COALESCE(unwind_time, now()), unwind_comment = COALESCE(unwind_comment, $3)
		WHERE id = $1 AND current_sec = $2 AND saga_state IN ('running', 'unwinding')`, pgUUID(id), sec, comment)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// ResumeStuck takes a stuck saga (done, with an undo_failed no operator has
// skipped) back to unwinding, owned by sec, in one statement: it appends an
// undo_skipped event, whose data is skipData, for every such node, records
// the operator's comment as the saga's unwind request, and makes sec its
// owner at the next adopt generation, which it returns with the skipped
// nodes. ok=false means nothing was written: the saga is not stuck (any
// more: a concurrent resume won).
func (s *Store) ResumeStuck(ctx context.Context, id uuid.UUID, sec, comment string, skipData []byte) (gen int64, skipped []int, ok bool, err error) {
	var g *int64
	var nodes []int32
	err = s.pool.QueryRow(ctx, `WITH sg AS (
			SELECT id FROM saga WHERE id = $1 AND saga_state = 'done' FOR UPDATE
		), stuck AS (
			`+stuckUndos+` AND u.saga_id IN (SELECT id FROM sg)
		), ins AS (
			INSERT INTO saga_node_event (saga_id, node_id, event_type, data, creator)
			SELECT saga_id, node_id, 'undo_skipped', $4::jsonb, $2 FROM stuck
			ON CONFLICT DO NOTHING
			RETURNING node_id
		), upd AS (
			UPDATE saga SET saga_state = 'unwinding', current_sec = $2,
				adopt_generation = adopt_generation + 1, adopt_time = now(),
				unwind_time = now(), unwind_comment = $3
			WHERE id IN (SELECT saga_id FROM stuck)
			RETURNING adopt_generation
		)
		SELECT (SELECT adopt_generation FROM upd), ARRAY(SELECT node_id FROM ins ORDER BY node_id)`,
		pgUUID(id), sec, comment, string(skipData)).Scan(&g, &nodes)
	if err != nil || g == nil {
		return 0, nil, false, err
	}
	for _, n := range nodes {
		skipped = append(skipped, int(n))
	}
	return *g, skipped, true, nil
}

// CountStuckUndos counts the undo_failed events of the whole log that no
// operator has skipped.
func (s *Store) CountStuckUndos(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM (`+stuckUndos+`) stuck`).Scan(&n)
	return n, err
}

// CountUnfinished counts running or unwinding sagas.
func (s *Store) CountUnfinished(ctx context.Context) (int, error) {
	var n int
	err := s.pool.QueryRow(ctx, `SELECT count(*) FROM saga WHERE saga_state IN ('running', 'unwinding')`).Scan(&n)
	return n, err
}
