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
	"storagecp.dev/platform/apierr/apierrtest"
)

// TestErrorTable is the notifier's store error→code table as it was before
// the mapping moved to platform/apierr: each error, wrapped as the store
// wraps it, keeps its code and message.
func TestErrorTable(t *testing.T) {
	s := &Server{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	toStatus := func(err error) error { return s.storeError(context.Background(), "test", err) }
	wrap := func(err error) error { return fmt.Errorf("%w: attachment a1", err) }
	apierrtest.Check(t, toStatus, []apierrtest.Case{
		{Err: status.Error(codes.FailedPrecondition, "stale epoch"), Code: codes.FailedPrecondition, Msg: "stale epoch"},
		{Err: wrap(store.ErrNotFound), Code: codes.NotFound, Msg: "not found: attachment a1"},
		{Err: wrap(store.ErrConflict), Code: codes.AlreadyExists, Msg: "conflict: attachment a1"},
		{Err: wrap(store.ErrAlreadyExists), Code: codes.AlreadyExists, Msg: "already exists: attachment a1"},
		{Err: wrap(store.ErrRWConsumer), Code: codes.FailedPrecondition, Msg: "volume already has a read/write consumer: attachment a1"},
		{Err: wrap(store.ErrOtherKind), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(store.ErrSuperseded), Code: codes.FailedPrecondition, Msg: "attachment superseded: attachment a1"},
		{Err: wrap(store.ErrBadTransition), Code: codes.FailedPrecondition, Msg: ""},
		{Err: fmt.Errorf("list: %w", context.Canceled), Code: codes.Canceled, Msg: "list: context canceled"},
		{Err: fmt.Errorf("list: %w", context.DeadlineExceeded), Code: codes.DeadlineExceeded, Msg: "list: context deadline exceeded"},
		{Err: errors.New("connection refused"), Code: codes.Internal, Msg: ""},
	})
	// The one change: contention was Internal, is now Unavailable as in
	// every service.
	apierrtest.Check(t, toStatus, []apierrtest.Case{
		{Err: &pgconn.PgError{Code: "40001"}, Code: codes.Unavailable, Msg: "database contention, retry"},
	})
}
