// Package server holds the orchestrator's gRPC handlers: LifecycleService,
// ReplacementService and AdminService. A handler checks its request, asks
// the process (package app) or an operation package (preview, validate) to
// act, and turns the answer into the API's types; the process wiring lives
// in package app.
package server

import (
	"context"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/app"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/leader"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/apierr"
)

// Server serves one orchestrator process's APIs.
type Server struct {
	app    *app.App
	pool   *pgxpool.Pool
	store  *store.Store
	deps   *sagadef.Deps
	driver *background.Driver
	viewer *saga.SEC
	lease  *leader.Lease
	logger *slog.Logger
}

// New returns the handlers of a.
func New(a *app.App) *Server {
	return &Server{app: a, pool: a.Pool(), store: a.Store(), deps: a.Deps(), driver: a.Driver(), viewer: a.Viewer(), lease: a.Lease(), logger: a.Logger()}
}

// Lifecycle is the LifecycleService.
func (s *Server) Lifecycle() orchestratorv1.LifecycleServiceServer { return &lifecycle{s: s} }

// Replacement is the ReplacementService.
func (s *Server) Replacement() orchestratorv1.ReplacementServiceServer { return &replacement{s: s} }

// Admin is the AdminService.
func (s *Server) Admin() orchestratorv1.AdminServiceServer { return &admin{s: s} }

func (s *Server) currentSEC() (*saga.SEC, error) { return s.app.CurrentSEC() }

// status maps an error to a gRPC status by apierr's rule (the store's and
// the saga log's errors carry their kinds); an internal error's detail goes
// to this process's log, with the request's trace.
func (s *Server) status(ctx context.Context, err error) error {
	return apierr.Status(ctx, s.logger, err)
}
