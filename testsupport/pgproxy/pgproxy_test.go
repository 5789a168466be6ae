package pgproxy_test

import (
	"context"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
	"storagecp.dev/testsupport/pgproxy"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "proxy", Migrations: fstest.MapFS{
		"001_t.sql": {Data: []byte("create table t (id int primary key);")},
	}})
}

// The answer to the chosen COMMIT is lost after the server applied it: the
// client sees a broken connection that IsUnreachable recognises, and the
// row is there. Other transactions go through untouched.
func TestLosesTheAnswerAfterTheCommit(t *testing.T) {
	ctx := context.Background()
	dsn, proxies, err := pgproxy.WrapDSN(pgtest.NewDSN(t, "proxy"))
	if err != nil {
		t.Fatal(err)
	}
	p := proxies[0]
	t.Cleanup(p.Close)
	pool, err := db.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	insert := func(id int) error {
		return db.InTx(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.Exec(ctx, "insert into t (id) values ($1)", id)
			return err
		})
	}
	if err := insert(1); err != nil {
		t.Fatal(err)
	}
	p.SetPolicy(pgproxy.Every(1, p.Commits()+1)) // the next one
	err = insert(2)
	if err == nil {
		t.Fatal("the second insert's COMMIT answered; want its answer lost")
	}
	if !db.IsUnreachable(err) {
		t.Errorf("a lost COMMIT answer: %v, which IsUnreachable does not recognise", err)
	}
	p.SetPolicy(nil)
	// Applied all the same: a retry meets its own row.
	if err := insert(2); !db.IsUniqueViolation(err, "") {
		t.Errorf("retrying the insert: %v, want a unique violation (the first try committed)", err)
	}
	var n int
	if err := pool.QueryRow(ctx, "select count(*) from t").Scan(&n); err != nil || n != 2 {
		t.Errorf("rows: %d %v, want 2", n, err)
	}
	d := p.Dropped()
	if len(d) != 1 || !d[0].Touches("INSERT INTO t ") {
		t.Errorf("dropped %+v, want the insert's transaction", d)
	}
	// The two inserts and the count's implicit transaction; the failed
	// retry rolled back.
	if p.Commits() != 3 {
		t.Errorf("%d commits through the proxy, want 3", p.Commits())
	}
}

// A held answer arrives after the client's deadline: the client sees an
// error, and the row is there all the same.
func TestHoldsTheAnswerPastTheDeadline(t *testing.T) {
	ctx := context.Background()
	dsn, proxies, err := pgproxy.WrapDSN(pgtest.NewDSN(t, "proxy"))
	if err != nil {
		t.Fatal(err)
	}
	p := proxies[0]
	t.Cleanup(p.Close)
	pool, err := db.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	p.SetDelay(func(c pgproxy.Commit) time.Duration {
		if c.Touches("insert into t") {
			return 500 * time.Millisecond
		}
		return 0
	})
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := db.InTx(short, pool, func(tx pgx.Tx) error {
		_, err := tx.Exec(short, "insert into t (id) values (7)")
		return err
	}); err == nil {
		t.Fatal("the insert answered within its 100 ms deadline; want its answer held")
	}
	p.SetDelay(nil)
	var n int
	if err := pool.QueryRow(ctx, "select count(*) from t where id = 7").Scan(&n); err != nil || n != 1 {
		t.Errorf("rows: %d %v, want the held insert's", n, err)
	}
}

func TestEvery(t *testing.T) {
	pol := pgproxy.Every(3, 2)
	var got []int64
	for n := int64(1); n <= 10; n++ {
		if pol(pgproxy.Commit{N: n}) {
			got = append(got, n)
		}
	}
	if want := []int64{2, 5, 8}; !equal(got, want) {
		t.Errorf("Every(3, 2) picks %v, want %v", got, want)
	}
}

func equal(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestWrapDSNRefusesKeywordForm(t *testing.T) {
	if _, _, err := pgproxy.WrapDSN("host=a port=1"); err == nil {
		t.Error("keyword DSN accepted")
	}
}
