// Package server implements storage.notifier.v1.UpstairsNotifierService.
package server

import (
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/grpcclient"
)

// Server is the UpstairsNotifierService.
type Server struct {
	notifierv1.UnimplementedUpstairsNotifierServiceServer
	pool    *pgxpool.Pool
	logger  *slog.Logger
	volumes volumev1.VolumeServiceClient
}

// New returns the service over its database, talking to the volume-service
// at volumeAddr.
func New(pool *pgxpool.Pool, logger *slog.Logger, volumeAddr string) (*Server, error) {
	conn, err := grpcclient.Dial(volumeAddr)
	if err != nil {
		return nil, err
	}
	return &Server{pool: pool, logger: logger, volumes: volumev1.NewVolumeServiceClient(conn)}, nil
}
