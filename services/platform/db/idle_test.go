package db_test

import (
	"context"
	"testing"

	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
)

// Every session of ours carries the idle-in-transaction bound, unless the
// DSN chose its own.
func TestOpenBoundsIdleTransactions(t *testing.T) {
	dsn := pgtest.NewDSN(t, "ids")
	show := func(dsn string) string {
		t.Helper()
		pool, err := db.Open(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		var v string
		if err := pool.QueryRow(context.Background(), `SHOW idle_in_transaction_session_timeout`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got, want := show(dsn), db.IdleInTransactionTimeout.String(); got != want {
		t.Fatalf("idle_in_transaction_session_timeout %s, want %s", got, want)
	}
	if got := show(withParam(dsn, "idle_in_transaction_session_timeout=7000")); got != "7s" {
		t.Fatalf("a DSN's own timeout: %s, want 7s", got)
	}
}
