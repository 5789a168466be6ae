// Package server implements the orchestrator's gRPC services.
package server

import (
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// Config holds the addresses of the other services.
type Config struct {
	VolumeAddr    string
	AllocatorAddr string
	NotifierAddr  string
}

// Server bundles the orchestrator's services.
type Server struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	cfg    Config
}

// New returns the orchestrator over its database.
func New(pool *pgxpool.Pool, logger *slog.Logger, cfg Config) (*Server, error) {
	return &Server{pool: pool, logger: logger, cfg: cfg}, nil
}

type lifecycle struct {
	orchestratorv1.UnimplementedLifecycleServiceServer
}

type replacement struct {
	orchestratorv1.UnimplementedReplacementServiceServer
}

type admin struct {
	orchestratorv1.UnimplementedAdminServiceServer
}

// Lifecycle is the LifecycleService.
func (s *Server) Lifecycle() orchestratorv1.LifecycleServiceServer { return &lifecycle{} }

// Replacement is the ReplacementService.
func (s *Server) Replacement() orchestratorv1.ReplacementServiceServer { return &replacement{} }

// Admin is the AdminService.
func (s *Server) Admin() orchestratorv1.AdminServiceServer { return &admin{} }
