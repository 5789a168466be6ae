package pgtest_test

import (
	"context"
	"os"
	"testing"

	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "widgets", Migrations: os.DirFS("testdata/migrations")})
}

// Each test gets its own migrated database: a row written in one is not
// visible in another.
func TestDatabasesAreIsolated(t *testing.T) {
	ctx := context.Background()
	a := pgtest.NewPool(t, "widgets")
	b := pgtest.NewPool(t, "widgets")
	if _, err := a.Exec(ctx, `INSERT INTO widget VALUES (1, 'a')`); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := b.QueryRow(ctx, `SELECT count(*) FROM widget`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("second database sees %d rows of the first", n)
	}
}

func TestParallelDatabases(t *testing.T) {
	for i := 0; i < 8; i++ {
		t.Run("", func(t *testing.T) {
			t.Parallel()
			p := pgtest.NewPool(t, "widgets")
			if _, err := p.Exec(context.Background(), `INSERT INTO widget VALUES (1, 'x')`); err != nil {
				t.Fatal(err)
			}
		})
	}
}
