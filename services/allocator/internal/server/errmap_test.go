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

	"storagecp.dev/allocator/internal/agent"
	"storagecp.dev/allocator/internal/store"
)

// TestErrorCodes is the allocator's error→code table, as it was before the
// mapping moved to platform/apierr: each error, wrapped as the handlers
// wrap them, keeps its code and message.
func TestErrorCodes(t *testing.T) {
	s := &Server{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	wrap := func(err error) error { return fmt.Errorf("delete region r1: %w", err) }
	for _, c := range []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{status.Error(codes.InvalidArgument, "region_id: required"), codes.InvalidArgument, "region_id: required"},
		{&store.GuardError{Guard: store.GuardNewRegionIDs}, codes.InvalidArgument, "new_region_ids: fewer ids than regions to create"},
		{&store.GuardError{Guard: store.GuardSpace}, codes.ResourceExhausted, "not enough storage: not enough space"},
		{&store.GuardError{Guard: store.GuardDatasets}, codes.ResourceExhausted, "not enough storage: not enough datasets"},
		{&store.GuardError{Guard: store.GuardUniqueZpools}, codes.ResourceExhausted, "not enough storage: not enough unique zpools"},
		{wrap(&agent.InjectedError{Op: agent.OpEnsureRegion, Permanent: true}), codes.FailedPrecondition, ""},
		{wrap(&agent.InjectedError{Op: agent.OpEnsureRegion}), codes.Unavailable, ""},
		{wrap(agent.ErrGone), codes.Unavailable, "delete region r1: agent gone: dataset is not on an in-service disk"},
		{wrap(store.ErrNoFreePort), codes.ResourceExhausted, "delete region r1: no free port on agent"},
		{wrap(store.ErrNotFound), codes.NotFound, "delete region r1: not found"},
		{wrap(store.ErrConflict), codes.AlreadyExists, "delete region r1: conflict"},
		{wrap(store.ErrPrecondition), codes.FailedPrecondition, "delete region r1: failed precondition"},
		{wrap(agent.ErrDestroyed), codes.FailedPrecondition, ""},
		{wrap(agent.ErrHasSnapshots), codes.FailedPrecondition, ""},
		{wrap(agent.ErrRunning), codes.FailedPrecondition, ""},
		{wrap(agent.ErrNoRegion), codes.FailedPrecondition, ""},
		{wrap(agent.ErrNoSnapshot), codes.FailedPrecondition, ""},
		{wrap(agent.ErrCloneSource), codes.FailedPrecondition, ""},
		{wrap(agent.ErrReadOnly), codes.FailedPrecondition, ""},
		{wrap(agent.ErrNoSource), codes.FailedPrecondition, ""},
		{fmt.Errorf("%w: [a b]", agent.ErrDisagree), codes.FailedPrecondition, "the copies to repair from disagree: [a b]"},
		{wrap(agent.ErrNotServed), codes.FailedPrecondition, ""},
		{wrap(&pgconn.PgError{Code: "40001"}), codes.Unavailable, "database contention, retry"},
		{wrap(context.DeadlineExceeded), codes.DeadlineExceeded, ""},
		{wrap(context.Canceled), codes.Canceled, ""},
		{errors.New("connection refused"), codes.Internal, "internal error"},
	} {
		st, _ := status.FromError(s.toStatus(context.Background(), c.err))
		if st.Code() != c.code || c.msg != "" && st.Message() != c.msg {
			t.Errorf("%v: %v %q, want %v %q", c.err, st.Code(), st.Message(), c.code, c.msg)
		}
	}
}
