package agentserver

import (
	"context"
	"log/slog"
	"net/netip"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/sim/simagent"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/target"
)

// dataServer is storage.allocator.v1.AgentDataService over the simulated
// agents: the writes and repairs sim-upstairs records on them (through the
// allocator, which forwards its --dev AgentDataService here), so that
// every region's content identity follows what a real Upstairs would have
// done to its bytes.
type dataServer struct {
	allocatorv1.UnimplementedAgentDataServiceServer
	sim    *simagent.Sim
	logger *slog.Logger
}

// WriteRegions gives every served rw region at the addresses the content
// of one write.
func (d *dataServer) WriteRegions(ctx context.Context, req *allocatorv1.WriteRegionsRequest) (*allocatorv1.WriteRegionsResponse, error) {
	addrs, err := target.ParseAll("addresses", req.GetAddresses())
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "addresses: required")
	}
	writeID, err := ids.Parse("write_id", req.GetWriteId())
	if err != nil {
		return nil, err
	}
	content, written, skipped, err := d.sim.Write(ctx, addrs, writeID)
	if err != nil {
		return nil, apierr.Status(ctx, d.logger, err)
	}
	return &allocatorv1.WriteRegionsResponse{Content: content, Written: addrStrings(written), Skipped: addrStrings(skipped)}, nil
}

// RepairRegionSet records the end of a live repair or a reconciliation of
// one rw region set.
func (d *dataServer) RepairRegionSet(ctx context.Context, req *allocatorv1.RepairRegionSetRequest) (*allocatorv1.RepairRegionSetResponse, error) {
	addrs, err := target.ParseAll("addresses", req.GetAddresses())
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, status.Error(codes.InvalidArgument, "addresses: required")
	}
	repair, err := target.ParseAll("repair", req.GetRepair())
	if err != nil {
		return nil, err
	}
	for i, a := range repair {
		found := false
		for _, b := range addrs {
			found = found || a == b
		}
		if !found {
			return nil, status.Errorf(codes.InvalidArgument, "repair[%d]: not one of addresses", i)
		}
	}
	content, repaired, err := d.sim.Repair(ctx, addrs, repair)
	if err != nil {
		return nil, apierr.Status(ctx, d.logger, err)
	}
	return &allocatorv1.RepairRegionSetResponse{Content: content, Repaired: addrStrings(repaired)}, nil
}

func addrStrings(addrs []netip.AddrPort) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}
