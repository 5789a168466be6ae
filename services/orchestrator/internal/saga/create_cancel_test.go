package saga_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
	"storagecp.dev/testsupport/pgproxy"
)

// A caller that stops waiting while its saga's first write is on the wire
// must not leave the saga durable and never run: the server may have
// committed it, and nothing but the next leader's recovery would drive it
// (WaitIdle waiting on it meanwhile). Lifecycle RPCs whose client deadline
// passed at that moment left such sagas.
func TestCreateOutlivesItsCaller(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// The server's answers reach the SEC through a proxy that, while slow
	// is set, holds the answer to a committed INSERT for a second: the
	// saga row commits at once, and its acknowledgement arrives long after
	// a 200 ms caller has gone.
	var slow atomic.Bool
	dsn, proxies, err := pgproxy.WrapDSN(pgtest.NewDSN(t, "orchestrator"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range proxies {
		t.Cleanup(p.Close)
		p.SetDelay(func(c pgproxy.Commit) time.Duration {
			if slow.Load() && c.Touches("insert ") {
				return time.Second
			}
			return 0
		})
	}
	pool, err := db.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	if err := createEffects(ctx, pool); err != nil {
		t.Fatal(err)
	}
	app := newSampleApp()
	sec := saga.NewSEC(pool, "sec-1", app.registry(t), pool, testLogger(t))
	t.Cleanup(func() {
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := sec.Shutdown(c); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	id := uuid.New()
	short, stop := context.WithTimeout(ctx, 200*time.Millisecond)
	slow.Store(true)
	_, err = sec.Create(short, app.sample, sampleParams{Key: "k"}, saga.WithID(id))
	slow.Store(false)
	stop()
	// Whatever Create answered, a saga in the log must run to its end.
	if _, gerr := sec.Get(ctx, id); gerr != nil {
		if err == nil {
			t.Fatalf("created, but saga %s is not in the log: %v", id, gerr)
		}
		t.Fatalf("the write did not commit, so the test proved nothing (create: %v): %v", err, gerr)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	o, werr := sec.Wait(wctx, id)
	if werr != nil {
		t.Fatalf("saga %s is in the log but nothing runs it (create answered %v): %v", id, err, werr)
	}
	if o.Kind != saga.Succeeded {
		t.Fatal(o.Error())
	}
}
