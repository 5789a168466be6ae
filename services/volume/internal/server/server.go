// Package server implements storage.volume.v1.VolumeService.
package server

import (
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// Server is the VolumeService.
type Server struct {
	volumev1.UnimplementedVolumeServiceServer
	pool   *pgxpool.Pool
	logger *slog.Logger
}

// New returns the service over its database.
func New(pool *pgxpool.Pool, logger *slog.Logger) *Server {
	return &Server{pool: pool, logger: logger}
}
