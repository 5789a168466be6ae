// Package server implements storage.allocator.v1.RegionAllocatorService.
package server

import (
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// Server is the RegionAllocatorService.
type Server struct {
	allocatorv1.UnimplementedRegionAllocatorServiceServer
	pool   *pgxpool.Pool
	logger *slog.Logger
	faults *FaultServer
}

// New returns the service over its database.
func New(pool *pgxpool.Pool, logger *slog.Logger) *Server {
	return &Server{pool: pool, logger: logger, faults: &FaultServer{}}
}

// Faults is the development-only fault injection service.
func (s *Server) Faults() *FaultServer { return s.faults }

// FaultServer is the AgentFaultService, registered only with --dev.
type FaultServer struct {
	allocatorv1.UnimplementedAgentFaultServiceServer
}
