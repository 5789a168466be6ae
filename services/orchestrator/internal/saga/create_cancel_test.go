package saga_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/pgtest"
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
	// is set, holds those that complete an INSERT for a second: the saga
	// row commits at once, and its acknowledgement arrives long after a
	// 200 ms caller has gone.
	var slow atomic.Bool
	dsn := delayingProxy(t, pgtest.NewDSN(t, "orchestrator"), &slow, time.Second)
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

// delayingProxy forwards TCP connections to the server of dsn, holding
// each answer that completes an INSERT (its command tag) for delay while
// slow is set, and returns the DSN that goes through it. Other answers
// pass at once: the statement is prepared before it runs, and holding
// the preparation would only keep the INSERT from being sent.
func delayingProxy(t *testing.T, dsn string, slow *atomic.Bool, delay time.Duration) string {
	t.Helper()
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	network, addr := "tcp", net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	if strings.HasPrefix(cfg.Host, "/") {
		network, addr = "unix", filepath.Join(cfg.Host, fmt.Sprintf(".s.PGSQL.%d", cfg.Port))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			client, err := l.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial(network, addr)
			if err != nil {
				client.Close()
				continue
			}
			go func() {
				_, _ = io.Copy(server, client)
				server.Close()
			}()
			go func() {
				defer client.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						if slow.Load() && bytes.Contains(buf[:n], []byte("INSERT 0 ")) {
							time.Sleep(delay)
						}
						if _, werr := client.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						if !errors.Is(err, io.EOF) {
							server.Close()
						}
						return
					}
				}
			}()
		}
	}()
	return fmt.Sprintf("postgres://%s@%s/%s?sslmode=disable", cfg.User, l.Addr(), cfg.Database)
}
