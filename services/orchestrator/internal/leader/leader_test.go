package leader_test

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"storagecp.dev/orchestrator/internal/leader"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "orchestrator", Migrations: migrations.FS})
}

type elections struct {
	mu    sync.Mutex
	terms []*leader.Term
}

func (e *elections) add(t *leader.Term) {
	e.mu.Lock()
	e.terms = append(e.terms, t)
	e.mu.Unlock()
}

func (e *elections) last() *leader.Term {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.terms) == 0 {
		return nil
	}
	return e.terms[len(e.terms)-1]
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// One of two campaigners leads; when it stops renewing, the other takes over
// with a higher epoch, and writes fenced with the old epoch are refused.
func TestFailoverRaisesEpochAndFencesTheOldLeader(t *testing.T) {
	pool := pgtest.NewPool(t, "orchestrator")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := leader.Config{TTL: 600 * time.Millisecond, RenewEvery: 100 * time.Millisecond, MinRemaining: 100 * time.Millisecond}
	a, b := leader.New(pool, "a", cfg, logger), leader.New(pool, "b", cfg, logger)
	var ea, eb elections
	ctxA, stopA := context.WithCancel(context.Background())
	ctxB, stopB := context.WithCancel(context.Background())
	defer stopB()
	doneA := make(chan struct{})
	go func() { a.Run(ctxA, ea.add); close(doneA) }()
	waitFor(t, "a elected", func() bool { return ea.last() != nil })
	go b.Run(ctxB, eb.add)
	// b stays a standby while a renews: watch a renew three times past the
	// point b started campaigning.
	seen := map[time.Time]bool{}
	waitFor(t, "three renewals by a", func() bool {
		info, err := a.Read(context.Background())
		if err == nil && info.Holder == "a" {
			seen[info.ExpiresAt] = true
		}
		return len(seen) >= 4
	})
	if eb.last() != nil {
		t.Fatal("b elected while a holds a live lease")
	}
	first := ea.last()
	if !first.Valid() {
		t.Fatal("a's term not valid")
	}
	// a stops renewing (as if paused): b takes over after expiry.
	stopA()
	<-doneA
	if first.Ctx.Err() == nil {
		t.Fatal("a's term not ended at shutdown")
	}
	waitFor(t, "b elected", func() bool { return eb.last() != nil })
	second := eb.last()
	if second.Epoch <= first.Epoch {
		t.Fatalf("epoch did not rise: %d then %d", first.Epoch, second.Epoch)
	}
	// Writes carrying a's epoch are refused; b's are accepted.
	write := func(epoch int64) error {
		ctx := fence.NewContext(context.Background(), epoch)
		return db.InTx(ctx, pool, func(tx pgx.Tx) error { return fence.Check(ctx, tx) })
	}
	if err := write(first.Epoch); err == nil {
		t.Fatal("write with the old epoch accepted")
	}
	if err := write(second.Epoch); err != nil {
		t.Fatalf("write with the new epoch refused: %v", err)
	}
	info, err := b.Read(context.Background())
	if err != nil || info.Holder != "b" || info.Epoch != second.Epoch {
		t.Fatalf("lease row %+v, %v", info, err)
	}
}

// A leader stopped in the middle of renewing (SIGSTOP, a frozen machine)
// holds the lease row's lock in a transaction it will not finish. Its
// standby must still take the lease once it has expired: the server ends
// the stopped session after db.IdleInTransactionTimeout, and with it the
// lock. Without that timeout the standby waits on the lock for as long as
// the leader is stopped.
func TestStandbyTakesOverFromALeaderPausedMidRenewal(t *testing.T) {
	pool := pgtest.NewPool(t, "orchestrator")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := leader.Config{TTL: 600 * time.Millisecond, RenewEvery: 100 * time.Millisecond, MinRemaining: 100 * time.Millisecond}
	ctx := context.Background()

	a := leader.New(pool, "a", cfg, logger)
	var ea elections
	ctxA, stopA := context.WithCancel(ctx)
	doneA := make(chan struct{})
	go func() { a.Run(ctxA, ea.add); close(doneA) }()
	waitFor(t, "a elected", func() bool { return ea.last() != nil })
	stopA()
	<-doneA

	// a's renewal, stopped after its first statement: the row is locked
	// by a session of the services' own configuration (db.Open's).
	paused, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer paused.Rollback(context.Background()) //nolint:errcheck // the session is gone
	var holder string
	if err := paused.QueryRow(ctx, `SELECT holder FROM leader_lease WHERE id = 1 FOR UPDATE`).Scan(&holder); err != nil || holder != "a" {
		t.Fatalf("lease holder %q, %v", holder, err)
	}

	b := leader.New(pool, "b", cfg, logger)
	var eb elections
	ctxB, stopB := context.WithCancel(ctx)
	defer stopB()
	began := time.Now()
	go b.Run(ctxB, eb.add)
	deadline := began.Add(db.IdleInTransactionTimeout + 20*time.Second)
	for eb.last() == nil {
		if time.Now().After(deadline) {
			t.Fatalf("b not elected %s after a stopped mid-renewal: the stopped session still holds the lease row", time.Since(began).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("b elected after %s", time.Since(began).Round(time.Millisecond))

	// a, resumed, finds its session ended: an error its callers retry on a
	// new connection, not one that means the request was wrong.
	_, err = paused.Exec(ctx, `UPDATE leader_lease SET expires_at = now() WHERE id = 1`)
	if err == nil {
		t.Fatal("the stopped session's transaction went on after the server ended it")
	}
	if !db.IsUnreachable(err) {
		t.Fatalf("a resumed session's error is not one to retry elsewhere: %v", err)
	}
	info, err := b.Read(ctx)
	if err != nil || info.Holder != "b" {
		t.Fatalf("lease row %+v, %v", info, err)
	}
}
