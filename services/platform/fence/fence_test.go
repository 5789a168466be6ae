package fence_test

import (
	"context"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "fenced", Migrations: fence.Migrations(fstest.MapFS{
		"002_writes.sql": {Data: []byte(`CREATE TABLE writes (n int NOT NULL);`)},
	})})
}

func state(t *testing.T, pool *pgxpool.Pool) (epoch int64, writes int) {
	t.Helper()
	err := pool.QueryRow(context.Background(), `SELECT (SELECT epoch FROM fence), (SELECT count(*) FROM writes)`).Scan(&epoch, &writes)
	if err != nil {
		t.Fatal(err)
	}
	return epoch, writes
}

// Both ways of fencing a transaction — Check as its first statement, and
// InTx's prelude in the first pipeline — record a newer epoch with the
// write, accept the current one, refuse an older one with
// FailedPrecondition leaving nothing written, and do nothing without one.
func TestFencedTransactions(t *testing.T) {
	ways := map[string]func(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error{
		"InTx": fence.InTx,
		"Check": func(ctx context.Context, pool *pgxpool.Pool, fn func(pgx.Tx) error) error {
			return db.InTx(ctx, pool, func(tx pgx.Tx) error {
				if err := fence.Check(ctx, tx); err != nil {
					return err
				}
				return fn(tx)
			})
		},
	}
	for name, inTx := range ways {
		t.Run(name, func(t *testing.T) {
			pool := pgtest.NewPool(t, "fenced")
			bg := context.Background()
			write := func(ctx context.Context) error {
				return inTx(ctx, pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `INSERT INTO writes (n) VALUES (1)`)
					return err
				})
			}
			if err := write(fence.NewContext(bg, 5)); err != nil {
				t.Fatal(err)
			}
			if e, n := state(t, pool); e != 5 || n != 1 {
				t.Fatalf("newer epoch: fence %d, %d writes", e, n)
			}
			if err := write(fence.NewContext(bg, 5)); err != nil {
				t.Fatal(err)
			}
			err := write(fence.NewContext(bg, 4))
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("stale epoch: %v", err)
			}
			if e, n := state(t, pool); e != 5 || n != 2 {
				t.Fatalf("after the stale write: fence %d, %d writes", e, n)
			}
			if err := write(bg); err != nil {
				t.Fatal(err)
			}
			if e, n := state(t, pool); e != 5 || n != 3 {
				t.Fatalf("unfenced write: fence %d, %d writes", e, n)
			}
		})
	}
}
