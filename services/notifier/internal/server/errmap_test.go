package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/notifier/internal/store"
)

// TestErrorTable is the notifier's store error→code table as it was before
// the mapping moved to platform/apierr: each error, wrapped as the store
// wraps it, keeps its code and message.
func TestErrorTable(t *testing.T) {
	s := &Server{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	wrap := func(err error) error { return fmt.Errorf("%w: attachment a1", err) }
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{status.Error(codes.FailedPrecondition, "stale epoch"), codes.FailedPrecondition, "stale epoch"},
		{wrap(store.ErrNotFound), codes.NotFound, "not found: attachment a1"},
		{wrap(store.ErrConflict), codes.AlreadyExists, "conflict: attachment a1"},
		{wrap(store.ErrAlreadyExists), codes.AlreadyExists, "already exists: attachment a1"},
		{wrap(store.ErrRWConsumer), codes.FailedPrecondition, "volume already has a read/write consumer: attachment a1"},
		{wrap(store.ErrOtherKind), codes.FailedPrecondition, ""},
		{wrap(store.ErrSuperseded), codes.FailedPrecondition, "attachment superseded: attachment a1"},
		{wrap(store.ErrBadTransition), codes.FailedPrecondition, ""},
		{fmt.Errorf("list: %w", context.Canceled), codes.Canceled, "list: context canceled"},
		{fmt.Errorf("list: %w", context.DeadlineExceeded), codes.DeadlineExceeded, "list: context deadline exceeded"},
		{errors.New("connection refused"), codes.Internal, ""},
	} {
		st, _ := status.FromError(s.storeError(context.Background(), "test", c.err))
		if st.Code() != c.code || c.msg != "" && st.Message() != c.msg {
			t.Errorf("%v: %v %q, want %v %q", c.err, st.Code(), st.Message(), c.code, c.msg)
		}
	}
	// The one change: contention was Internal, is now Unavailable as in
	// every service.
	if got := status.Code(s.storeError(context.Background(), "test", &pgconn.PgError{Code: "40001"})); got != codes.Unavailable {
		t.Errorf("contention: %v", got)
	}
}
