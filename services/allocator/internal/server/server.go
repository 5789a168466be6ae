// Package server implements storage.allocator.v1.RegionAllocatorService.
package server

import (
	"context"
	"errors"
	"log/slog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/allocator/internal/store"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/db"
)

// Server is the RegionAllocatorService.
type Server struct {
	allocatorv1.UnimplementedRegionAllocatorServiceServer
	pool    *pgxpool.Pool
	logger  *slog.Logger
	agent   agentapi.Agent
	faults  *FaultServer
	data    *DataServer
	metrics probeMetrics
}

// New returns the service over its database and the Crucible agents.
// faults (the agents' fault registry) and data (their data path) back the
// development-only services Faults and Data, registered only with --dev.
func New(pool *pgxpool.Pool, logger *slog.Logger, agents agentapi.Agent, faults agentapi.FaultInjector, data agentapi.DataPath) *Server {
	s := &Server{
		pool:    pool,
		logger:  logger,
		agent:   agents,
		faults:  &FaultServer{faults: faults},
		metrics: newProbeMetrics(),
	}
	s.data = &DataServer{s: s, data: data}
	return s
}

// Faults is the development-only fault injection service.
func (s *Server) Faults() *FaultServer { return s.faults }

// Data is the development-only data-path service (writes and repairs
// sim-upstairs records on the simulated agents).
func (s *Server) Data() *DataServer { return s.data }

// toStatus maps an internal error to a gRPC status. Unknown errors become
// Internal with a generic message (the detail goes to the log only).
func (s *Server) toStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if st, ok := status.FromError(err); ok {
		return st.Err()
	}
	var guard *store.GuardError
	switch {
	case errors.As(err, &guard):
		if guard.Guard == store.GuardNewRegionIDs {
			return status.Error(codes.InvalidArgument, "new_region_ids: fewer ids than regions to create")
		}
		return status.Error(codes.ResourceExhausted, "not enough storage: "+guard.Guard)
	case errors.Is(err, agentapi.ErrBroken):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, agentapi.ErrUnavailable):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, agentapi.ErrGone):
		return status.Error(codes.Unavailable, err.Error())
	case errors.Is(err, agentapi.ErrNoFreePort):
		return status.Error(codes.ResourceExhausted, err.Error())
	case errors.Is(err, store.ErrNotFound):
		return status.Error(codes.NotFound, err.Error())
	case errors.Is(err, store.ErrConflict):
		return status.Error(codes.AlreadyExists, err.Error())
	case errors.Is(err, store.ErrPrecondition),
		errors.Is(err, agentapi.ErrDestroyed),
		errors.Is(err, agentapi.ErrHasSnapshots),
		errors.Is(err, agentapi.ErrRunning),
		errors.Is(err, agentapi.ErrNoRegion),
		errors.Is(err, agentapi.ErrNoSnapshot),
		errors.Is(err, agentapi.ErrCloneSource),
		errors.Is(err, agentapi.ErrReadOnly),
		errors.Is(err, agentapi.ErrNoSource),
		errors.Is(err, agentapi.ErrDisagree),
		errors.Is(err, agentapi.ErrNotServed):
		return status.Error(codes.FailedPrecondition, err.Error())
	case db.IsRetryable(err):
		// InTx gave up retrying serialization failures: contention, not a bug.
		return status.Error(codes.Unavailable, "database contention, retry")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	}
	s.logger.ErrorContext(ctx, "internal error", "err", err)
	return status.Error(codes.Internal, "internal error")
}

func invalid(field, msg string) error {
	return status.Error(codes.InvalidArgument, field+": "+msg)
}

// parseID parses a required UUID field.
func parseID(field, v string) (uuid.UUID, error) {
	if v == "" {
		return uuid.Nil, invalid(field, "required")
	}
	id, err := uuid.Parse(v)
	if err != nil || id == uuid.Nil {
		return uuid.Nil, invalid(field, "not a UUID")
	}
	return id, nil
}

// parseOptionalID parses an optional UUID field; "" is uuid.Nil.
func parseOptionalID(field, v string) (uuid.UUID, error) {
	if v == "" {
		return uuid.Nil, nil
	}
	return parseID(field, v)
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func pageSize(n int32) (int, error) {
	switch {
	case n < 0:
		return 0, invalid("page_size", "negative")
	case n == 0:
		return defaultPageSize, nil
	case n > maxPageSize:
		return maxPageSize, nil
	}
	return int(n), nil
}
