package fence_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/pgtest"
)

const method = "/storage.test.v1.Test/Write"

// logged is a JSON log captured on a buffer.
type logged struct{ bytes.Buffer }

func (l *logged) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// lines are the log's lines with message msg.
func (l *logged) lines(t *testing.T, msg string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// want checks that the log has exactly one line msg, at level, with attrs.
func (l *logged) want(t *testing.T, msg, level string, attrs map[string]any) {
	t.Helper()
	got := l.lines(t, msg)
	if len(got) != 1 {
		t.Fatalf("%d lines %q, want 1; log:\n%s", len(got), msg, l.String())
	}
	if got[0]["level"] != level {
		t.Errorf("%q at level %v, want %s", msg, got[0]["level"], level)
	}
	for k, v := range attrs {
		if got[0][k] != v {
			t.Errorf("%q: %s = %v (%T), want %v; line %v", msg, k, got[0][k], got[0][k], v, got[0])
		}
	}
}

func (l *logged) none(t *testing.T, msgs ...string) {
	t.Helper()
	for _, msg := range msgs {
		if got := l.lines(t, msg); len(got) != 0 {
			t.Errorf("%d lines %q, want none; log:\n%s", len(got), msg, l.String())
		}
	}
}

// incoming is the context of a call from addr carrying epoch in its
// metadata, as the gRPC server hands it to the interceptors.
func incoming(epoch string, p *peer.Peer) context.Context {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(fence.MetadataKey, epoch))
	return peer.NewContext(ctx, p)
}

func plainPeer() *peer.Peer {
	return &peer.Peer{Addr: &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 4242}}
}

// tlsPeer is a peer that presented an SVID of id.
func tlsPeer(t *testing.T, id string) *peer.Peer {
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	cert := &x509.Certificate{URIs: []*url.URL{u}}
	return &peer.Peer{
		Addr:     &net.TCPAddr{IP: net.IPv4(10, 0, 0, 8), Port: 4343},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}},
	}
}

// call runs handler behind the unary interceptor as a call of method.
func call(ctx context.Context, logger *slog.Logger, handler grpc.UnaryHandler) error {
	_, err := fence.UnaryServerInterceptor(logger)(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, handler)
	return err
}

// write is a handler making one fenced write with fence.InTx, then
// returning after (nil: success).
func write(pool *pgxpool.Pool, inTx func(tx pgx.Tx) error) grpc.UnaryHandler {
	return func(ctx context.Context, _ any) (any, error) {
		return nil, fence.InTx(ctx, pool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, `INSERT INTO writes (n) VALUES (1)`); err != nil {
				return err
			}
			if inTx != nil {
				return inTx(tx)
			}
			return nil
		})
	}
}

// A fenced write carrying a newer epoch logs one "fence raised" from the
// fence's epoch to its own, with the method and the caller's SPIFFE ID;
// the next write at that epoch logs nothing; an older one logs one "fence
// refused stale epoch".
func TestLogRaiseAndRefusal(t *testing.T) {
	pool := pgtest.NewPool(t, "fenced")
	var log logged
	caller := "spiffe://storagecp.local/replacement-orchestrator"
	p := tlsPeer(t, caller)

	if err := call(incoming("3", p), log.logger(), write(pool, nil)); err != nil {
		t.Fatal(err)
	}
	log.want(t, "fence raised", "INFO", map[string]any{"from": 0.0, "to": 3.0, "method": method, "caller": caller})

	log.Reset()
	if err := call(incoming("3", p), log.logger(), write(pool, nil)); err != nil {
		t.Fatal(err)
	}
	log.none(t, "fence raised", "fence refused stale epoch")

	log.Reset()
	err := call(incoming("2", plainPeer()), log.logger(), write(pool, nil))
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale write: %v", err)
	}
	log.want(t, "fence refused stale epoch", "WARN", map[string]any{"epoch": 2.0, "newest": 3.0, "method": method, "caller": "10.0.0.7:4242"})
	log.none(t, "fence raised")

	// Check inside a transaction of the handler's own refuses alike.
	log.Reset()
	err = call(incoming("1", plainPeer()), log.logger(), func(ctx context.Context, _ any) (any, error) {
		tx, err := pool.Begin(ctx)
		if err != nil {
			return nil, err
		}
		defer tx.Rollback(ctx)
		return nil, fence.Check(ctx, tx)
	})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale Check: %v", err)
	}
	log.want(t, "fence refused stale epoch", "WARN", map[string]any{"epoch": 1.0, "newest": 3.0})
}

// A raise in a transaction that rolls back did not happen and logs
// nothing; nor does the attempt of a transaction that is retried: only the
// attempt that commits is logged, once.
func TestLogRolledBackRaise(t *testing.T) {
	pool := pgtest.NewPool(t, "fenced")
	var log logged
	boom := errors.New("boom")
	err := call(incoming("4", plainPeer()), log.logger(), write(pool, func(pgx.Tx) error { return boom }))
	if !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if e, n := state(t, pool); e != 0 || n != 0 {
		t.Fatalf("rolled back: fence %d, %d writes", e, n)
	}
	log.none(t, "fence raised", "fence refused stale epoch")

	attempts := 0
	err = call(incoming("4", plainPeer()), log.logger(), write(pool, func(pgx.Tx) error {
		attempts++
		if attempts == 1 {
			return &pgconn.PgError{Code: "40001"} // serialization failure: retried
		}
		return nil
	}))
	if err != nil || attempts != 2 {
		t.Fatalf("retried write: %v after %d attempts", err, attempts)
	}
	log.want(t, "fence raised", "INFO", map[string]any{"from": 0.0, "to": 4.0})
}

// A transaction the fence cannot watch commit (Check in the handler's own
// transaction) has its raise logged when the handler succeeds, and not
// when it fails.
func TestLogRaiseOutsideInTx(t *testing.T) {
	pool := pgtest.NewPool(t, "fenced")
	var log logged
	own := func(commit bool) grpc.UnaryHandler {
		return func(ctx context.Context, _ any) (any, error) {
			tx, err := pool.Begin(ctx)
			if err != nil {
				return nil, err
			}
			defer tx.Rollback(ctx)
			if err := fence.Check(ctx, tx); err != nil {
				return nil, err
			}
			if !commit {
				return nil, errors.New("handler failed")
			}
			return nil, tx.Commit(ctx)
		}
	}
	if err := call(incoming("5", plainPeer()), log.logger(), own(false)); err == nil {
		t.Fatal("handler did not fail")
	}
	log.none(t, "fence raised")
	if err := call(incoming("5", plainPeer()), log.logger(), own(true)); err != nil {
		t.Fatal(err)
	}
	log.want(t, "fence raised", "INFO", map[string]any{"from": 0.0, "to": 5.0})
}

// AdvanceEpoch through a gRPC server with the interceptors logs its raise
// once, as the interceptor's call, and its refusal; called directly,
// without them, it logs on the server's own logger.
func TestLogAdvanceEpoch(t *testing.T) {
	pool := pgtest.NewPool(t, "fenced")
	var log logged
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(fence.UnaryServerInterceptor(log.logger())),
		grpc.ChainStreamInterceptor(fence.StreamServerInterceptor(log.logger())),
	)
	var direct logged
	commonv1.RegisterFenceServiceServer(gs, fence.NewServer(pool, direct.logger()))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := commonv1.NewFenceServiceClient(conn)
	ctx := context.Background()

	// As the orchestrator calls it: the epoch in the metadata too.
	if _, err := client.AdvanceEpoch(fence.WithEpoch(ctx, 6), &commonv1.AdvanceEpochRequest{Epoch: 6}); err != nil {
		t.Fatal(err)
	}
	log.want(t, "fence raised", "INFO", map[string]any{"from": 0.0, "to": 6.0, "method": commonv1.FenceService_AdvanceEpoch_FullMethodName})
	if c, _ := log.lines(t, "fence raised")[0]["caller"].(string); !strings.HasPrefix(c, "127.0.0.1:") {
		t.Errorf("caller %q, want the peer's address", c)
	}
	// Without the epoch in the metadata.
	log.Reset()
	if _, err := client.AdvanceEpoch(ctx, &commonv1.AdvanceEpochRequest{Epoch: 7}); err != nil {
		t.Fatal(err)
	}
	log.want(t, "fence raised", "INFO", map[string]any{"from": 6.0, "to": 7.0})
	log.Reset()
	if _, err := client.AdvanceEpoch(ctx, &commonv1.AdvanceEpochRequest{Epoch: 7}); err != nil {
		t.Fatal(err)
	}
	log.none(t, "fence raised", "fence refused stale epoch")
	_, err = client.AdvanceEpoch(ctx, &commonv1.AdvanceEpochRequest{Epoch: 5})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("stale AdvanceEpoch: %v", err)
	}
	log.want(t, "fence refused stale epoch", "WARN", map[string]any{"epoch": 5.0, "newest": 7.0, "method": commonv1.FenceService_AdvanceEpoch_FullMethodName})
	direct.none(t, "fence raised", "fence refused stale epoch")

	// Directly.
	srv := fence.NewServer(pool, direct.logger())
	if _, err := srv.AdvanceEpoch(peer.NewContext(ctx, plainPeer()), &commonv1.AdvanceEpochRequest{Epoch: 8}); err != nil {
		t.Fatal(err)
	}
	direct.want(t, "fence raised", "INFO", map[string]any{"from": 7.0, "to": 8.0, "method": commonv1.FenceService_AdvanceEpoch_FullMethodName, "caller": "10.0.0.7:4242"})
}
