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
	"storagecp.dev/allocator/internal/agentfault"
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
func New(pool *pgxpool.Pool, logger *slog.Logger, agents agentapi.Agent) *Server {
	return &Server{pool: pool, logger: logger, agent: agents, metrics: newProbeMetrics()}
}

// Dev are the development-only services (registered with --dev) and what
// backs them.
type Dev struct {
	// Faults is the registry AgentFaultService drives; New's agents are
	// wrapped to consult it.
	Faults *agentfault.Faults
	// Data is the agents' data-path service, which AgentDataService
	// forwards to.
	Data allocatorv1.AgentDataServiceClient
}

// NewDev returns the service as New does, with the development-only
// services of dev: every agent call first consults dev.Faults.
func NewDev(pool *pgxpool.Pool, logger *slog.Logger, agents agentapi.Agent, dev Dev) *Server {
	s := New(pool, logger, agentfault.Wrap(agents, dev.Faults))
	s.faults = &FaultServer{faults: dev.Faults}
	s.data = &DataServer{agent: dev.Data}
	return s
}

// Faults is the development-only fault injection service (nil unless
// NewDev).
func (s *Server) Faults() *FaultServer { return s.faults }

// Data is the development-only data-path service (nil unless NewDev).
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
