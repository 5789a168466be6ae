// Package simupstairs is the simulated Upstairs host (Propolis or Pantry).
package simupstairs

import (
	"log/slog"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/platform/grpcclient"
)

// Server is the UpstairsService of one sim-upstairs process.
type Server struct {
	upstairsv1.UnimplementedUpstairsServiceServer
	logger    *slog.Logger
	notifier  notifierv1.UpstairsNotifierServiceClient
	allocator allocatorv1.RegionAllocatorServiceClient
	faults    *FaultServer
}

// New returns a sim-upstairs reporting to the notifier and probing through
// the allocator.
func New(logger *slog.Logger, notifierAddr, allocatorAddr string) (*Server, error) {
	nc, err := grpcclient.Dial(notifierAddr)
	if err != nil {
		return nil, err
	}
	ac, err := grpcclient.Dial(allocatorAddr)
	if err != nil {
		return nil, err
	}
	return &Server{
		logger:    logger,
		notifier:  notifierv1.NewUpstairsNotifierServiceClient(nc),
		allocator: allocatorv1.NewRegionAllocatorServiceClient(ac),
		faults:    &FaultServer{},
	}, nil
}

// Faults is the development-only fault injection service.
func (s *Server) Faults() *FaultServer { return s.faults }

// FaultServer is the UpstairsFaultService, registered only with --dev.
type FaultServer struct {
	upstairsv1.UnimplementedUpstairsFaultServiceServer
}
