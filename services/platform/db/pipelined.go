package db

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Prelude queues statements that every attempt of a transaction runs first
// (TxOptions.Prelude); the returned check sees their results before the
// transaction's own first statement returns, and its error fails the
// transaction.
type Prelude func(b *pgx.Batch) (check func() error)

// pipelinedTx is the pgx.Tx that InTx hands to its function. BEGIN is not a
// round trip of its own: it goes out in one pipeline with the prelude and
// the transaction's first statement (or batch). A fenced transaction that
// used to cost BEGIN, fence read, statement and COMMIT — four round trips,
// each a wake-up of this process and of a PostgreSQL backend — costs two.
//
// Every statement still runs inside the transaction: the pipeline's first
// item is the BEGIN, and a failure anywhere in it leaves the session in a
// failed transaction that Rollback ends.
type pipelinedTx struct {
	conn    *pgx.Conn
	opts    pgx.TxOptions
	prelude Prelude
	// tx is pgx's transaction once the first pipeline has been sent.
	tx     pgx.Tx
	closed bool
	// preludeErr is the prelude check's verdict; InTx returns it whatever
	// the function made of the failed statement.
	preludeErr error
	// afterCommit runs once COMMIT has succeeded (AfterCommit).
	afterCommit []func()
}

var _ pgx.Tx = (*pipelinedTx)(nil)

// open sends the first pipeline — BEGIN, the prelude, then first — and
// consumes BEGIN and the prelude, running the prelude's callbacks and
// check. On error the batch results are closed and the error returned.
func (t *pipelinedTx) open(ctx context.Context, first []*pgx.QueuedQuery) (pgx.BatchResults, error) {
	b := &pgx.Batch{}
	b.BeginTx(t.opts)
	var check func() error
	if t.prelude != nil {
		check = t.prelude(b)
	}
	n := len(b.QueuedQueries)
	b.QueuedQueries = append(b.QueuedQueries, first...)
	br := t.conn.SendBatch(ctx, b)
	t.tx = br.Tx()
	for i := 0; i < n; i++ {
		var err error
		if fn := b.QueuedQueries[i].Fn; fn != nil {
			err = fn(br)
		} else {
			_, err = br.Exec()
		}
		if err != nil {
			_ = br.Close()
			return nil, err
		}
	}
	if check != nil {
		if err := check(); err != nil {
			t.preludeErr = err
			_ = br.Close()
			return nil, err
		}
	}
	return br, nil
}

func (t *pipelinedTx) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	if t.tx != nil || t.closed {
		return t.opened().Exec(ctx, sql, args...)
	}
	br, err := t.open(ctx, []*pgx.QueuedQuery{{SQL: sql, Arguments: args}})
	if err != nil {
		return pgconn.CommandTag{}, err
	}
	tag, err := br.Exec()
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	return tag, err
}

func (t *pipelinedTx) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if t.tx != nil || t.closed {
		return t.opened().Query(ctx, sql, args...)
	}
	br, err := t.open(ctx, []*pgx.QueuedQuery{{SQL: sql, Arguments: args}})
	if err != nil {
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		_ = br.Close()
		return nil, err
	}
	return &batchRows{Rows: rows, br: br}, nil
}

func (t *pipelinedTx) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	rows, err := t.Query(ctx, sql, args...)
	return &row{rows: rows, err: err}
}

func (t *pipelinedTx) SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults {
	if t.tx != nil || t.closed {
		return t.opened().SendBatch(ctx, b)
	}
	br, err := t.open(ctx, b.QueuedQueries)
	if err != nil {
		return pgx.FailedBatchResults(b, err)
	}
	return br
}

// opened is the transaction for every statement after the first pipeline
// (a closed one once Commit or Rollback ran).
func (t *pipelinedTx) opened() pgx.Tx {
	if t.tx == nil {
		return closedTx{}
	}
	return t.tx
}

func (t *pipelinedTx) Commit(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	t.closed = true
	if t.tx == nil {
		return nil // nothing was sent: nothing to commit
	}
	if err := t.tx.Commit(ctx); err != nil {
		return err
	}
	for _, fn := range t.afterCommit {
		fn()
	}
	return nil
}

// AfterCommit arranges for fn to run once tx, a transaction InTx handed to
// its function, has committed; not at all if it rolls back (an attempt
// that is retried included). It reports false, and does nothing, for any
// other pgx.Tx. This is how something a transaction did is reported only
// when it happened, e.g. the fence's "fence raised" log line. A nil fn
// only asks whether tx is such a transaction.
func AfterCommit(tx pgx.Tx, fn func()) bool {
	t, ok := tx.(*pipelinedTx)
	if !ok || t.closed {
		return false
	}
	if fn != nil {
		t.afterCommit = append(t.afterCommit, fn)
	}
	return true
}

func (t *pipelinedTx) Rollback(ctx context.Context) error {
	if t.closed {
		return pgx.ErrTxClosed
	}
	t.closed = true
	if t.tx == nil {
		return nil
	}
	// pgx closes the transaction itself when its BEGIN never ran.
	if err := t.tx.Rollback(ctx); err != nil && !errors.Is(err, pgx.ErrTxClosed) {
		return err
	}
	return nil
}

// The rest of pgx.Tx is not on InTx's hot paths: these open the
// transaction on a round trip of its own where they need it.

func (t *pipelinedTx) ensureOpen(ctx context.Context) error {
	if t.tx != nil || t.closed {
		return nil
	}
	br, err := t.open(ctx, nil)
	if err != nil {
		return err
	}
	return br.Close()
}

func (t *pipelinedTx) Begin(ctx context.Context) (pgx.Tx, error) {
	if err := t.ensureOpen(ctx); err != nil {
		return nil, err
	}
	return t.opened().Begin(ctx)
}

func (t *pipelinedTx) CopyFrom(ctx context.Context, table pgx.Identifier, columns []string, src pgx.CopyFromSource) (int64, error) {
	if err := t.ensureOpen(ctx); err != nil {
		return 0, err
	}
	return t.opened().CopyFrom(ctx, table, columns, src)
}

// LargeObjects needs the transaction open: call it after a statement.
func (t *pipelinedTx) LargeObjects() pgx.LargeObjects { return t.opened().LargeObjects() }

func (t *pipelinedTx) Prepare(ctx context.Context, name, sql string) (*pgconn.StatementDescription, error) {
	return t.conn.Prepare(ctx, name, sql)
}

func (t *pipelinedTx) Conn() *pgx.Conn { return t.conn }

// closedTx is what a pipelinedTx delegates to once finished without ever
// having sent anything.
type closedTx struct{ pgx.Tx }

func (closedTx) Exec(context.Context, string, ...any) (pgconn.CommandTag, error) {
	return pgconn.CommandTag{}, pgx.ErrTxClosed
}
func (closedTx) Query(context.Context, string, ...any) (pgx.Rows, error) { return nil, pgx.ErrTxClosed }
func (closedTx) SendBatch(_ context.Context, b *pgx.Batch) pgx.BatchResults {
	return pgx.FailedBatchResults(b, pgx.ErrTxClosed)
}
func (closedTx) Begin(context.Context) (pgx.Tx, error) { return nil, pgx.ErrTxClosed }
func (closedTx) CopyFrom(context.Context, pgx.Identifier, []string, pgx.CopyFromSource) (int64, error) {
	return 0, pgx.ErrTxClosed
}

// batchRows are the first statement's rows; closing them also reads the
// end of the pipeline.
type batchRows struct {
	pgx.Rows
	br       pgx.BatchResults
	done     bool
	closeErr error
}

func (r *batchRows) Next() bool {
	if r.Rows.Next() {
		return true
	}
	r.Close()
	return false
}

func (r *batchRows) Close() {
	r.Rows.Close()
	if !r.done {
		r.done = true
		r.closeErr = r.br.Close()
	}
}

func (r *batchRows) Err() error {
	if err := r.Rows.Err(); err != nil {
		return err
	}
	return r.closeErr
}

// row is QueryRow's result, as pgx's own: the first row or ErrNoRows.
type row struct {
	rows pgx.Rows
	err  error
}

func (r *row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	defer r.rows.Close()
	if !r.rows.Next() {
		if err := r.rows.Err(); err != nil {
			return err
		}
		return pgx.ErrNoRows
	}
	if err := r.rows.Scan(dest...); err != nil {
		return err
	}
	r.rows.Close()
	return r.rows.Err()
}
