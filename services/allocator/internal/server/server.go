// Package server implements storage.allocator.v1.RegionAllocatorService.
package server

import (
	"context"
	"log/slog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/agentapi"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/ids"
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

// toStatus maps an error to a gRPC status by apierr's rule: the store's
// and the agents' errors carry their kinds (a guard error its message).
func (s *Server) toStatus(ctx context.Context, err error) error {
	return apierr.Status(ctx, s.logger, err)
}

func invalid(field, msg string) error {
	return status.Error(codes.InvalidArgument, field+": "+msg)
}

// parseOptionalID parses an optional UUID field; "" is uuid.Nil.
func parseOptionalID(field, v string) (uuid.UUID, error) {
	if v == "" {
		return uuid.Nil, nil
	}
	return ids.Parse(field, v)
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
