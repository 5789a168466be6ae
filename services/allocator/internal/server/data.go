package server

import (
	"context"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// DataServer is the AgentDataService, registered only with --dev: the
// writes and repairs sim-upstairs records on the simulated agents, so that
// every region's content identity follows what a real Upstairs would have
// done to its bytes. The agents keep the content, so the allocator passes
// each call on to them as it came (the agents validate it, and the fence
// the caller sent goes with it) and their answer back as it went.
type DataServer struct {
	allocatorv1.UnimplementedAgentDataServiceServer
	agent allocatorv1.AgentDataServiceClient
}

// WriteRegions gives every served rw region at the addresses the content
// of one write.
func (d *DataServer) WriteRegions(ctx context.Context, req *allocatorv1.WriteRegionsRequest) (*allocatorv1.WriteRegionsResponse, error) {
	return d.agent.WriteRegions(ctx, req)
}

// RepairRegionSet records the end of a live repair or a reconciliation of
// one rw region set.
func (d *DataServer) RepairRegionSet(ctx context.Context, req *allocatorv1.RepairRegionSetRequest) (*allocatorv1.RepairRegionSetResponse, error) {
	return d.agent.RepairRegionSet(ctx, req)
}
