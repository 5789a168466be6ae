package pgformation

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The formation comes up with a primary and a synchronous standby; killing
// the primary's postmaster makes pg_auto_failover promote the standby, and
// the multi-host DSN finds it with no change; the old primary rejoins as
// the standby.
func TestFailoverKeepsAcknowledgedWrites(t *testing.T) {
	if !Installed() {
		t.Fatal(ErrNotInstalled) // make unit and make integration install it (make ha-deps)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	f, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Registered after Close's defer, so it runs first, while the logs and
	// the monitor are still there.
	defer func() {
		if !t.Failed() {
			return
		}
		st, err := f.State(context.Background())
		t.Logf("formation state: %+v (%v)", st, err)
		for _, name := range []string{"monitor", "node1", "node2"} {
			t.Logf("---- %s (last lines of its pg_autoctl log)\n%s", name, f.LogTail(name, 40))
		}
	}()
	if err := f.CreateDatabase(ctx, "probe", ""); err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) error {
		c, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		conn, err := pgx.Connect(c, f.DSN("probe"))
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(c, sql, args...)
		return err
	}
	if err := exec("CREATE TABLE acked (n int PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		if err := exec("INSERT INTO acked VALUES ($1)", i); err != nil {
			t.Fatal(err)
		}
	}
	old, err := f.Primary(ctx)
	if err != nil || old == nil {
		t.Fatalf("primary: %v %v", old, err)
	}
	killed := time.Now()
	if err := syscall.Kill(old.Postmaster(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var first time.Duration
	for {
		// A try whose answer was lost may have committed all the same
		// (on the node promoted since): the retry then meets its row,
		// which is as good an acknowledgement.
		err := exec("INSERT INTO acked VALUES ($1)", 100)
		var pgErr *pgconn.PgError
		if err == nil || errors.As(err, &pgErr) && pgErr.Code == "23505" {
			first = time.Since(killed)
			break
		} else if time.Since(killed) > 90*time.Second {
			t.Fatalf("no write accepted 90 s after the kill: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("first write accepted %s after the primary's postmaster was killed", first.Round(time.Millisecond))
	now, err := f.WaitFailover(ctx, old.Name, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	promoted := time.Since(killed)
	if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s → %s %s after the kill; formation healthy again after %s", old.Name, now.Name, promoted.Round(time.Millisecond), time.Since(killed).Round(time.Millisecond))
	// Every acknowledged row is on the new primary (read there, retrying
	// while connections to the demoted node are refused).
	var n int
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, cancelQ := context.WithTimeout(ctx, 3*time.Second)
		conn, err := pgx.Connect(c, f.DSN("probe"))
		if err == nil {
			err = conn.QueryRow(c, "SELECT count(*) FROM acked").Scan(&n)
			conn.Close(ctx)
		}
		cancelQ()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("count after the failover: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n != 101 {
		t.Fatalf("%d rows after the failover, want all 101 acknowledged", n)
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Fatal("timed out")
	}
}
