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

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/allocator/internal/agentfault"
	"storagecp.dev/allocator/internal/store"
	"storagecp.dev/platform/apierr/apierrtest"
)

// TestErrorCodes is the allocator's error→code table, as it was before the
// mapping moved to platform/apierr: each error, wrapped as the handlers
// wrap them, keeps its code and message.
func TestErrorCodes(t *testing.T) {
	s := &Server{logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	wrap := func(err error) error { return fmt.Errorf("delete region r1: %w", err) }
	apierrtest.Check(t, func(err error) error { return s.toStatus(context.Background(), err) }, []apierrtest.Case{
		{Err: status.Error(codes.InvalidArgument, "region_id: required"), Code: codes.InvalidArgument, Msg: "region_id: required"},
		{Err: &store.GuardError{Guard: store.GuardNewRegionIDs}, Code: codes.InvalidArgument, Msg: "new_region_ids: fewer ids than regions to create"},
		{Err: &store.GuardError{Guard: store.GuardSpace}, Code: codes.ResourceExhausted, Msg: "not enough storage: not enough space"},
		{Err: &store.GuardError{Guard: store.GuardDatasets}, Code: codes.ResourceExhausted, Msg: "not enough storage: not enough datasets"},
		{Err: &store.GuardError{Guard: store.GuardUniqueZpools}, Code: codes.ResourceExhausted, Msg: "not enough storage: not enough unique zpools"},
		{Err: wrap(&agentfault.InjectedError{Op: agentfault.OpEnsureRegion, Permanent: true}), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(&agentfault.InjectedError{Op: agentfault.OpEnsureRegion}), Code: codes.Unavailable, Msg: ""},
		{Err: wrap(agentapi.ErrGone), Code: codes.Unavailable, Msg: "delete region r1: agent gone: dataset is not on an in-service disk"},
		{Err: wrap(agentapi.ErrNoFreePort), Code: codes.ResourceExhausted, Msg: "delete region r1: no free port on agent"},
		{Err: wrap(store.ErrNotFound), Code: codes.NotFound, Msg: "delete region r1: not found"},
		{Err: wrap(store.ErrConflict), Code: codes.AlreadyExists, Msg: "delete region r1: conflict"},
		{Err: wrap(store.ErrPrecondition), Code: codes.FailedPrecondition, Msg: "delete region r1: failed precondition"},
		{Err: wrap(agentapi.ErrDestroyed), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(agentapi.ErrHasSnapshots), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(agentapi.ErrRunning), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(agentapi.ErrNoRegion), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(agentapi.ErrNoSnapshot), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(agentapi.ErrCloneSource), Code: codes.FailedPrecondition, Msg: ""},
		// Agent errors as they come back over storage.agent.v1.
		{Err: wrap(overWire(agentapi.ErrGone)), Code: codes.Unavailable, Msg: "delete region r1: agent gone: dataset is not on an in-service disk"},
		{Err: wrap(overWire(fmt.Errorf("region r1: %w", agentapi.ErrHasSnapshots))), Code: codes.FailedPrecondition, Msg: "delete region r1: region r1: region still has snapshots on the agent"},
		{Err: wrap(overWire(agentapi.ErrUnknownDataset)), Code: codes.NotFound, Msg: ""},
		{Err: wrap(agentapi.FromStatus(status.Error(codes.Unavailable, "connection refused"))), Code: codes.Unavailable, Msg: "delete region r1: agent: connection refused"},
		{Err: wrap(agentapi.FromStatus(status.Error(codes.FailedPrecondition, "stale epoch: request carries 1, newest seen is 2"))), Code: codes.FailedPrecondition, Msg: ""},
		{Err: wrap(&pgconn.PgError{Code: "40001"}), Code: codes.Unavailable, Msg: "database contention, retry"},
		{Err: wrap(context.DeadlineExceeded), Code: codes.DeadlineExceeded, Msg: ""},
		{Err: wrap(context.Canceled), Code: codes.Canceled, Msg: ""},
		{Err: errors.New("connection refused"), Code: codes.Internal, Msg: "internal error"},
	})
}

// overWire is err as the allocator's agent client gets it back from an
// agent that answered with it.
func overWire(err error) error {
	return agentapi.FromStatus(agentapi.Status(context.Background(), nil, err))
}
