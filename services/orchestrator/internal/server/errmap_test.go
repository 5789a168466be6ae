package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/apierr/apierrtest"
)

// TestErrorTable is the orchestrator's error→code table as it was before
// the mapping moved to platform/apierr: each error, wrapped as the store
// wraps it, keeps its code and message.
func TestErrorTable(t *testing.T) {
	s := &Server{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	toStatus := func(err error) error { return s.status(context.Background(), err) }
	apierrtest.Check(t, toStatus, []apierrtest.Case{
		{Err: nil, Code: codes.OK, Msg: ""},
		{Err: fmt.Errorf("replacement r1: %w", store.ErrNotFound), Code: codes.NotFound, Msg: "replacement r1: not found"},
		{Err: fmt.Errorf("saga s1: %w", saga.ErrNotFound), Code: codes.NotFound, Msg: "saga s1: saga not found"},
		{Err: store.ErrLockHeld, Code: codes.Aborted, Msg: "volume repair lock"},
		{Err: &store.LockHeldError{Volume: uuid.New()}, Code: codes.Aborted, Msg: "volume repair lock"},
		{Err: fmt.Errorf("%w: step s1 is complete with another stash", store.ErrConflict), Code: codes.FailedPrecondition, Msg: "state conflict: step s1 is complete with another stash"},
		{Err: fmt.Errorf("%w: request r1 already ended done", store.ErrRefused), Code: codes.FailedPrecondition, Msg: "refused: request r1 already ended done"},
		{Err: status.Error(codes.Unavailable, "volume-service down"), Code: codes.Unavailable, Msg: "volume-service down"},
		{Err: fmt.Errorf("list disks: %w", status.Error(codes.NotFound, "no disk")), Code: codes.NotFound, Msg: "list disks: rpc error: code = NotFound desc = no disk"},
		{Err: errors.New("boom"), Code: codes.Internal, Msg: ""},
	})
	// The changes: contention and context errors were Internal; they are
	// now Unavailable, DeadlineExceeded and Canceled as in every service.
	apierrtest.Check(t, toStatus, []apierrtest.Case{
		{Err: &pgconn.PgError{Code: "40001"}, Code: codes.Unavailable, Msg: "database contention, retry"},
		{Err: context.DeadlineExceeded, Code: codes.DeadlineExceeded},
		{Err: context.Canceled, Code: codes.Canceled},
	})
}

// A caller whose saga stopped being driven here (the leader's term ended
// while it waited) is told to retry, not given UNKNOWN: the saga resumes on
// the next leader. It was UNKNOWN "saga executor shut down" before.
func TestWaitStatus(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
	}{
		{saga.ErrShutdown, codes.Unavailable},
		{fmt.Errorf("wait: %w", saga.ErrNotOwner), codes.Unavailable},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{context.Canceled, codes.Canceled},
	} {
		if got := status.Code(waitStatus(c.err)); got != c.code {
			t.Errorf("%v: %v, want %v", c.err, got, c.code)
		}
	}
}
