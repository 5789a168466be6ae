// Package db is the PostgreSQL plumbing every service shares: a pgx pool
// instrumented with otelpgx (when traces are exported), embedded migrations
// applied with tern, and a transaction helper that retries serialization
// failures and deadlocks.
package db

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/tern/v2/migrate"

	"storagecp.dev/platform/telemetry"
)

// VersionTable records applied migrations in every service database.
const VersionTable = "schema_version"

// IdleInTransactionTimeout is how long the server lets a session of ours sit
// idle inside a transaction before it ends the session, which rolls the
// transaction back and frees its locks. A process stopped in the middle of a
// transaction (paused, its machine frozen, its link gone half-open) would
// otherwise hold its row locks for as long as it is stopped: a leader
// stopped mid-renewal would keep the lease row locked, and its standby would
// wait on that lock instead of taking the expired lease. No transaction of
// ours waits between statements on anything but its own client (none makes
// a call), so those gaps are milliseconds. The bound is far above them, and
// below the leader lease (6 s), so a stopped leader's locks are gone about
// when its lease is.
const IdleInTransactionTimeout = 5 * time.Second

const idleInTxParam = "idle_in_transaction_session_timeout"

// Open parses the DSN and creates a traced pool. It does not wait for the
// database to be reachable: pgx connects lazily.
func Open(ctx context.Context, dsn string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("invalid database DSN: %w", err)
	}
	// A span per statement only when traces are exported: nobody can see
	// them otherwise (logs take trace ids from the RPC and saga spans), and
	// at a fan-out's rate they cost a sixth of a service's CPU.
	if telemetry.Enabled() {
		cfg.ConnConfig.Tracer = otelpgx.NewTracer(otelpgx.WithTrimSQLInSpanName())
	}
	if cfg.MaxConns < 16 {
		cfg.MaxConns = 16
	}
	cfg.ConnConfig.ConnectTimeout = 5 * time.Second
	// A DSN that sets the timeout (an operator's choice) keeps it.
	if _, set := cfg.ConnConfig.RuntimeParams[idleInTxParam]; !set {
		cfg.ConnConfig.RuntimeParams[idleInTxParam] = strconv.FormatInt(IdleInTransactionTimeout.Milliseconds(), 10)
	}
	cfg.AfterConnect = func(_ context.Context, conn *pgx.Conn) error {
		registerUUID(conn.TypeMap())
		return nil
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}

// Migrate applies every migration in fsys (files named NNN_name.sql) that the
// database has not seen yet.
func Migrate(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	m, err := migrate.NewMigrator(ctx, conn.Conn(), VersionTable)
	if err != nil {
		return fmt.Errorf("migrator: %w", err)
	}
	if err := m.LoadMigrations(fsys); err != nil {
		return fmt.Errorf("load migrations: %w", err)
	}
	if err := m.Migrate(ctx); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return nil
}

// Migrated reports whether every migration in fsys has been applied.
func Migrated(ctx context.Context, pool *pgxpool.Pool, fsys fs.FS) (bool, error) {
	names, err := migrate.FindMigrations(fsys)
	if err != nil {
		return false, err
	}
	var v int32
	err = pool.QueryRow(ctx, "SELECT version FROM "+VersionTable).Scan(&v)
	if err != nil {
		return false, err
	}
	return int(v) >= len(names), nil
}

// Querier is what both a pool and a transaction offer.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// TxOptions tune InTx.
type TxOptions struct {
	// IsoLevel defaults to serializable.
	IsoLevel pgx.TxIsoLevel
	ReadOnly bool
	// MaxElapsed bounds retries (default 30 s).
	MaxElapsed time.Duration
	// Prelude, if set, queues statements that go out with BEGIN in the
	// transaction's first pipeline (e.g. the fence read of a mutating
	// transaction); its check's error fails the attempt.
	Prelude Prelude
}

// InTx runs fn in a SERIALIZABLE transaction and commits it, retrying the
// whole function on serialization failures (40001) and deadlocks (40P01).
// fn must therefore be safe to run more than once: no side effects outside
// the transaction.
func InTx(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
	return InTxOpts(ctx, pool, TxOptions{}, fn)
}

// InTxOpts is InTx with options.
func InTxOpts(ctx context.Context, pool *pgxpool.Pool, o TxOptions, fn func(pgx.Tx) error) error {
	iso := o.IsoLevel
	if iso == "" {
		iso = pgx.Serializable
	}
	access := pgx.ReadWrite
	if o.ReadOnly {
		access = pgx.ReadOnly
	}
	maxElapsed := o.MaxElapsed
	if maxElapsed == 0 {
		maxElapsed = 30 * time.Second
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 2 * time.Millisecond
	b.MaxInterval = 200 * time.Millisecond
	retries, _ := ctx.Value(retryCounterKey{}).(*atomic.Int64)
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		err := runTx(ctx, pool, pgx.TxOptions{IsoLevel: iso, AccessMode: access}, o.Prelude, fn)
		if err != nil && !IsRetryable(err) {
			return struct{}{}, backoff.Permanent(err)
		}
		if err != nil && retries != nil {
			retries.Add(1)
		}
		return struct{}{}, err
	}, backoff.WithBackOff(b), backoff.WithMaxElapsedTime(maxElapsed))
	return err
}

// runTx is one attempt: fn in a pipelinedTx on a pooled connection,
// committed if it succeeds and rolled back otherwise (a panic too).
func runTx(ctx context.Context, pool *pgxpool.Pool, opts pgx.TxOptions, prelude Prelude, fn func(pgx.Tx) error) (err error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	// The pool destroys a connection released inside a transaction, so a
	// failed rollback cannot leak one into the next caller.
	defer conn.Release()
	tx := &pipelinedTx{conn: conn.Conn(), opts: opts, prelude: prelude}
	defer func() {
		if !tx.closed {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	err = fn(tx)
	if tx.preludeErr != nil {
		return tx.preludeErr
	}
	if err != nil {
		return err
	}
	return tx.Commit(ctx)
}

type retryCounterKey struct{}

// WithRetryCounter returns a context under which every InTx adds its
// retried attempts (serialization failures and deadlocks) to n: how
// benchmarks see contention that the retries otherwise hide.
func WithRetryCounter(ctx context.Context, n *atomic.Int64) context.Context {
	return context.WithValue(ctx, retryCounterKey{}, n)
}

// IsRetryable reports a serialization failure or deadlock.
func IsRetryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "40001" || pgErr.Code == "40P01"
	}
	return false
}

// IsUnreachable reports an error that says the database could not be used
// at all for the moment: no connection could be made, the connection broke,
// or the server is shutting down, starting, or read-only (a standby, or a
// primary just demoted by a failover). A later try, on a new connection,
// can succeed: the pool drops broken connections, and a multi-host DSN
// with target_session_attrs=read-write finds the new primary.
//
// A connection lost during COMMIT leaves the outcome unknown. Callers may
// still retry because every storagecp RPC is idempotent: the retry finds
// its own effect and answers as the first call would have.
func IsUnreachable(err error) bool {
	if err == nil {
		return false
	}
	var ce *pgconn.ConnectError
	if errors.As(err, &ce) || errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "57P01", "57P02", "57P03", // admin or crash shutdown, cannot connect now
			"57P05", "25P03", // the server ended our idle session (IdleInTransactionTimeout)
			"25006": // read_only_sql_transaction: a standby answered
			return true
		}
		return strings.HasPrefix(pgErr.Code, "08") // connection exception
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE)
}

// IsUniqueViolation reports a unique_violation (23505), optionally on a
// named constraint.
func IsUniqueViolation(err error, constraint string) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return constraint == "" || pgErr.ConstraintName == constraint
	}
	return false
}
