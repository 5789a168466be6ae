package saga

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The table of the package comment, row by row.
func TestClassify(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	// An action's context after an operator's unwind (SEC.Unwind).
	unwound, unwind := context.WithCancelCause(context.Background())
	unwind(unwindCause{operatorError("test")})
	pg := func(code string) error { return fmt.Errorf("update: %w", &pgconn.PgError{Code: code, Message: "x"}) }
	grpcErr := func(c codes.Code) error { return fmt.Errorf("call: %w", status.Error(c, "x")) }
	errInvalidState := errors.New("invalid state")
	for _, c := range []struct {
		name      string
		ctx       context.Context
		err       error
		retryable bool
		reason    string
	}{
		{"unavailable", live, grpcErr(codes.Unavailable), true, "grpc:Unavailable"},
		{"deadline exceeded", live, grpcErr(codes.DeadlineExceeded), true, "grpc:DeadlineExceeded"},
		{"aborted", live, grpcErr(codes.Aborted), true, "grpc:Aborted"},
		{"remote cancel", live, grpcErr(codes.Canceled), true, "grpc:Canceled"},
		{"lock contention marked permanent", live, Permanent(status.Error(codes.Aborted, "volume repair lock")), false, "marked_permanent"},
		{"resource exhausted", live, grpcErr(codes.ResourceExhausted), false, "grpc:ResourceExhausted"},
		{"invalid argument", live, grpcErr(codes.InvalidArgument), false, "grpc:InvalidArgument"},
		{"not found", live, grpcErr(codes.NotFound), false, "grpc:NotFound"},
		{"failed precondition", live, grpcErr(codes.FailedPrecondition), false, "grpc:FailedPrecondition"},
		{"internal", live, grpcErr(codes.Internal), false, "grpc:Internal"},
		{"unimplemented", live, grpcErr(codes.Unimplemented), false, "grpc:Unimplemented"},
		{"permission denied", live, grpcErr(codes.PermissionDenied), false, "grpc:PermissionDenied"},
		{"context deadline, saga alive", live, fmt.Errorf("query: %w", context.DeadlineExceeded), true, "deadline_exceeded"},
		{"context canceled, saga alive", live, fmt.Errorf("query: %w", context.Canceled), true, "canceled"},
		{"unavailable, saga context done", done, grpcErr(codes.Unavailable), false, "saga_context_done"},
		{"canceled, saga context done", done, context.Canceled, false, "saga_context_done"},
		{"unavailable, action unwound by an operator", unwound, grpcErr(codes.Unavailable), false, "saga_context_done"},
		{"canceled, action unwound by an operator", unwound, grpcErr(codes.Canceled), false, "saga_context_done"},
		{"serialization failure", live, pg("40001"), true, "pg:40001"},
		{"deadlock", live, pg("40P01"), true, "pg:40P01"},
		{"connection failure", live, pg("08006"), true, "pg:08006"},
		{"admin shutdown", live, pg("57P01"), true, "pg:57P01"},
		{"cannot connect now", live, pg("57P03"), true, "pg:57P03"},
		{"idle session ended", live, pg("57P05"), true, "pg:57P05"},
		{"idle in a transaction, session ended", live, pg("25P03"), true, "pg:25P03"},
		{"too many connections", live, pg("53300"), true, "pg:53300"},
		{"statement timeout", live, pg("57014"), true, "pg:57014"},
		{"unique violation", live, pg("23505"), false, "pg:23505"},
		{"deferred constraint at commit", live, pg("40002"), false, "pg:40002"},
		{"database dropped", live, pg("57P04"), false, "pg:57P04"},
		{"syntax error", live, pg("42601"), false, "pg:42601"},
		{"conn closed", live, fmt.Errorf("exec: %w", pgconn.ErrConnClosed), true, "connection"},
		{"connect error", live, connectError(t), true, "connection"},
		{"EOF", live, fmt.Errorf("read: %w", io.EOF), true, "connection"},
		{"unexpected EOF", live, io.ErrUnexpectedEOF, true, "connection"},
		{"closed network connection", live, net.ErrClosed, true, "connection"},
		{"connection refused", live, &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}, true, "connection"},
		{"connection reset", live, fmt.Errorf("x: %w", syscall.ECONNRESET), true, "connection"},
		{"dns", live, &net.DNSError{Err: "no such host", Name: "x"}, true, "network"},
		{"plain error", live, errInvalidState, false, "error"},
		{"wrapped plain error", live, fmt.Errorf("%w: volume deleted", errInvalidState), false, "error"},
		{"panic", live, &panicError{value: "boom"}, false, "panic"},
		{"injected", live, &ActionError{Kind: ErrKindInjected, Message: "x"}, false, "injected"},
		{"deserialize", live, &ActionError{Kind: ErrKindDeserialize, Message: "x"}, false, "deserialize"},
		{"serialize", live, &ActionError{Kind: ErrKindSerialize, Message: "x"}, false, "serialize"},
		{"unwound by an operator", live, operatorError("x"), false, "abandoned"},
		{"action error with a code", live, &ActionError{Kind: ErrKindAction, Message: "x", Code: codes.Unavailable}, true, "grpc:Unavailable"},
		{"injected transient", live, injectedTransient("n", 2), true, "grpc:Unavailable"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := Classify(c.ctx, c.err)
			if got.Retryable != c.retryable || got.Reason != c.reason {
				t.Fatalf("Classify(%v) = %+v, want retryable %v reason %q", c.err, got, c.retryable, c.reason)
			}
		})
	}
}

// connectError is what pgx returns when PostgreSQL is not listening.
func connectError(t *testing.T) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr)
	l.Close() // nothing listens there now
	_, err = pgconn.Connect(context.Background(), fmt.Sprintf("postgres://u@127.0.0.1:%d/db?connect_timeout=2&sslmode=disable", addr.Port))
	var ce *pgconn.ConnectError
	if !errors.As(err, &ce) {
		t.Fatalf("connect to a closed port: %v", err)
	}
	return err
}

// Permanent changes the class, not the error: its message and gRPC code
// are persisted as they were.
func TestPermanentKeepsTheCode(t *testing.T) {
	inner := status.Error(codes.Aborted, "volume repair lock")
	ae := taskError(context.Background(), ErrKindAction, Permanent(inner), 1)
	if ae.Code != codes.Aborted || ae.Message != inner.Error() || ae.Retryable || ae.Reason != "marked_permanent" {
		t.Fatalf("persisted %+v", ae)
	}
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) is not nil")
	}
	if !errors.Is(Permanent(inner), inner) {
		t.Fatal("Permanent hides the error it wraps")
	}
}
