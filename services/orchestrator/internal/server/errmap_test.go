package server

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
)

// TestErrorTable is the orchestrator's error→code table as it was before
// the mapping moved to platform/apierr: each error, wrapped as the store
// wraps it, keeps its code and message.
func TestErrorTable(t *testing.T) {
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{nil, codes.OK, ""},
		{fmt.Errorf("replacement r1: %w", store.ErrNotFound), codes.NotFound, "replacement r1: not found"},
		{fmt.Errorf("saga s1: %w", saga.ErrNotFound), codes.NotFound, "saga s1: saga not found"},
		{store.ErrLockHeld, codes.Aborted, "volume repair lock"},
		{&store.LockHeldError{Volume: uuid.New()}, codes.Aborted, "volume repair lock"},
		{fmt.Errorf("%w: step s1 is complete with another stash", store.ErrConflict), codes.FailedPrecondition, "state conflict: step s1 is complete with another stash"},
		{fmt.Errorf("%w: request r1 already ended done", store.ErrRefused), codes.FailedPrecondition, "refused: request r1 already ended done"},
		{status.Error(codes.Unavailable, "volume-service down"), codes.Unavailable, "volume-service down"},
		{fmt.Errorf("list disks: %w", status.Error(codes.NotFound, "no disk")), codes.NotFound, "list disks: rpc error: code = NotFound desc = no disk"},
		{errors.New("boom"), codes.Internal, ""},
	} {
		st, _ := status.FromError(grpcError(c.err))
		if st.Code() != c.code || c.msg != "" && st.Message() != c.msg {
			t.Errorf("%v: %v %q, want %v %q", c.err, st.Code(), st.Message(), c.code, c.msg)
		}
	}
	// The changes: contention and context errors were Internal; they are
	// now Unavailable, DeadlineExceeded and Canceled as in every service.
	for err, code := range map[error]codes.Code{
		&pgconn.PgError{Code: "40001"}: codes.Unavailable,
		context.DeadlineExceeded:       codes.DeadlineExceeded,
		context.Canceled:               codes.Canceled,
	} {
		if got := status.Code(grpcError(err)); got != code {
			t.Errorf("%v: %v, want %v", err, got, code)
		}
	}
}
