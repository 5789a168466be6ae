package db_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

// onePool is a pool of a single connection, so that every transaction of
// a test runs on the session the previous one left behind.
func onePool(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := db.Open(context.Background(), withParam(pgtest.NewDSN(t, "ids"), "pool_max_conns=1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// withParam adds key=value to a DSN, a URL or a keyword/value string.
func withParam(dsn, kv string) string {
	if strings.Contains(dsn, "?") {
		return dsn + "&" + kv
	}
	return dsn + " " + kv
}

func count(t *testing.T, pool *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM ids`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Whatever kind of statement opens the transaction (it travels with the
// BEGIN), everything runs in one transaction with the options asked for,
// and commits together.
func TestInTxFirstStatementKinds(t *testing.T) {
	ctx := context.Background()
	pool := onePool(t)
	insert := `INSERT INTO ids (id) VALUES ($1)`
	first := map[string]func(tx pgx.Tx) error{
		"Exec": func(tx pgx.Tx) error { _, err := tx.Exec(ctx, insert, uuid.New()); return err },
		"Query": func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, insert+` RETURNING id`, uuid.New())
			if err != nil {
				return err
			}
			ids, err := pgx.CollectRows(rows, pgx.RowTo[uuid.UUID])
			if err == nil && len(ids) != 1 {
				err = errors.New("want one row")
			}
			return err
		},
		"QueryRow": func(tx pgx.Tx) error {
			var id uuid.UUID
			return tx.QueryRow(ctx, insert+` RETURNING id`, uuid.New()).Scan(&id)
		},
		"SendBatch": func(tx pgx.Tx) error {
			var b pgx.Batch
			var got uuid.UUID
			want := uuid.New()
			b.Queue(insert+` RETURNING id`, want).QueryRow(func(row pgx.Row) error { return row.Scan(&got) })
			b.Queue(insert, uuid.New())
			if err := tx.SendBatch(ctx, &b).Close(); err != nil {
				return err
			}
			if got != want {
				return errors.New("batch callback did not run")
			}
			return nil
		},
	}
	for name, fn := range first {
		t.Run(name, func(t *testing.T) {
			before := count(t, pool)
			err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
				if err := fn(tx); err != nil {
					return err
				}
				var iso, ro string
				var inTx bool
				if err := tx.QueryRow(ctx, `SELECT current_setting('transaction_isolation'), current_setting('transaction_read_only'),
					now() = statement_timestamp()`).Scan(&iso, &ro, &inTx); err != nil {
					return err
				}
				if iso != "serializable" || ro != "off" || inTx {
					t.Errorf("isolation %s, read only %s, own transaction %v", iso, ro, inTx)
				}
				_, err := tx.Exec(ctx, insert, uuid.New())
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if got := count(t, pool) - before; got < 2 {
				t.Fatalf("%d rows committed", got)
			}
		})
	}
}

// A read-only transaction's first statement already runs read-only.
func TestInTxReadOnlyFirstStatement(t *testing.T) {
	ctx := context.Background()
	pool := onePool(t)
	err := db.InTxOpts(ctx, pool, db.TxOptions{ReadOnly: true, IsoLevel: pgx.RepeatableRead}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO ids (id) VALUES ($1)`, uuid.New())
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("write in a read-only transaction: %v", err)
	}
	if count(t, pool) != 0 {
		t.Fatal("row written")
	}
}

// An error — from the function, from a statement of the first pipeline or
// a later one, or a panic — rolls everything back and leaves the session
// idle for the next transaction.
func TestInTxFailuresRollBack(t *testing.T) {
	ctx := context.Background()
	pool := onePool(t)
	insert := `INSERT INTO ids (id) VALUES ($1)`
	dup := uuid.New()
	if _, err := pool.Exec(ctx, insert, dup); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	cases := map[string]func(tx pgx.Tx) error{
		"function error": func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insert, uuid.New()); err != nil {
				return err
			}
			return boom
		},
		"first statement fails": func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, insert, dup)
			return err
		},
		"first batch fails midway": func(tx pgx.Tx) error {
			var b pgx.Batch
			b.Queue(insert, uuid.New())
			b.Queue(insert, dup)
			b.Queue(insert, uuid.New())
			return tx.SendBatch(ctx, &b).Close()
		},
		"later statement fails": func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, insert, uuid.New()); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, insert, dup)
			return err
		},
		"first query abandoned": func(tx pgx.Tx) error {
			rows, err := tx.Query(ctx, `SELECT g FROM generate_series(1, 1000) g`)
			if err != nil {
				return err
			}
			rows.Next()
			rows.Close()
			if _, err := tx.Exec(ctx, insert, uuid.New()); err != nil {
				return err
			}
			return boom
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			if err := db.InTx(ctx, pool, fn); err == nil {
				t.Fatal("no error")
			}
			if n := count(t, pool); n != 1 {
				t.Fatalf("%d rows, want only the first", n)
			}
		})
	}
	t.Run("panic", func(t *testing.T) {
		func() {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			_ = db.InTx(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, insert, uuid.New()); err != nil {
					return err
				}
				panic("boom")
			})
		}()
		if n := count(t, pool); n != 1 {
			t.Fatalf("%d rows, want only the first", n)
		}
	})
	// A function that sends nothing commits nothing, without error.
	if err := db.InTx(ctx, pool, func(pgx.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	// The one connection is idle and usable after all of the above.
	if err := db.InTx(ctx, pool, func(tx pgx.Tx) error { _, err := tx.Exec(ctx, insert, uuid.New()); return err }); err != nil {
		t.Fatal(err)
	}
	if n := count(t, pool); n != 2 {
		t.Fatalf("%d rows, want 2", n)
	}
}

// The prelude goes out with the first statement, its results are in before
// that statement's result comes back, and its check's error fails the
// transaction even if the function ignores it.
func TestInTxPrelude(t *testing.T) {
	ctx := context.Background()
	pool := onePool(t)
	insert := `INSERT INTO ids (id) VALUES ($1)`
	var seen int64
	prelude := func(want int64) db.Prelude {
		return func(b *pgx.Batch) func() error {
			b.Queue(`SELECT count(*) FROM ids`).QueryRow(func(row pgx.Row) error { return row.Scan(&seen) })
			return func() error {
				if seen != want {
					return errors.New("refused by the prelude")
				}
				return nil
			}
		}
	}
	err := db.InTxOpts(ctx, pool, db.TxOptions{Prelude: prelude(0)}, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, insert, uuid.New())
		return err
	})
	if err != nil || count(t, pool) != 1 {
		t.Fatalf("accepted: %v, %d rows", err, count(t, pool))
	}
	err = db.InTxOpts(ctx, pool, db.TxOptions{Prelude: prelude(5)}, func(tx pgx.Tx) error {
		_, _ = tx.Exec(ctx, insert, uuid.New()) // error ignored on purpose
		_, err := tx.Exec(ctx, insert, uuid.New())
		return err
	})
	if err == nil || err.Error() != "refused by the prelude" {
		t.Fatalf("refused: %v", err)
	}
	if seen != 1 || count(t, pool) != 1 {
		t.Fatalf("prelude saw %d; %d rows after the refusal", seen, count(t, pool))
	}
}

// AfterCommit's function runs once the transaction commits: not for an
// attempt that is retried, not for one that fails, and never for a
// transaction InTx did not make.
func TestAfterCommit(t *testing.T) {
	ctx := context.Background()
	pool := onePool(t)
	insert := `INSERT INTO ids (id) VALUES ($1)`
	var ran []int
	attempt := 0
	err := db.InTx(ctx, pool, func(tx pgx.Tx) error {
		attempt++
		n := attempt
		if _, err := tx.Exec(ctx, insert, uuid.New()); err != nil {
			return err
		}
		if !db.AfterCommit(tx, func() { ran = append(ran, n) }) {
			t.Fatal("AfterCommit refused InTx's transaction")
		}
		if n == 1 {
			return &pgconn.PgError{Code: "40001"} // retried
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(ran) != 1 || ran[0] != 2 {
		t.Fatalf("after a retried attempt and a committed one, ran %v; want [2]", ran)
	}

	ran = nil
	boom := errors.New("boom")
	err = db.InTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, insert, uuid.New()); err != nil {
			return err
		}
		db.AfterCommit(tx, func() { ran = append(ran, 1) })
		return boom
	})
	if !errors.Is(err, boom) || len(ran) != 0 {
		t.Fatalf("rolled back: err %v, ran %v", err, ran)
	}

	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if db.AfterCommit(tx, func() {}) {
		t.Fatal("AfterCommit accepted a transaction InTx did not make")
	}
}
