package server

import (
	"context"
	"fmt"
	"net/netip"

	"storagecp.dev/allocator/agentapi"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/target"
)

// DataServer is the AgentDataService, registered only with --dev: the
// writes and repairs sim-upstairs records on the simulated agents, so that
// every region's content identity follows what a real Upstairs would have
// done to its bytes.
type DataServer struct {
	allocatorv1.UnimplementedAgentDataServiceServer
	s    *Server
	data agentapi.DataPath
}

// WriteRegions gives every served rw region at the addresses the content
// of one write.
func (d *DataServer) WriteRegions(ctx context.Context, req *allocatorv1.WriteRegionsRequest) (*allocatorv1.WriteRegionsResponse, error) {
	addrs, err := parseAddrs("addresses", req.GetAddresses())
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, invalid("addresses", "required")
	}
	writeID, err := ids.Parse("write_id", req.GetWriteId())
	if err != nil {
		return nil, err
	}
	content, written, skipped, err := d.data.Write(ctx, addrs, writeID)
	if err != nil {
		return nil, d.s.toStatus(ctx, err)
	}
	return &allocatorv1.WriteRegionsResponse{Content: content, Written: addrStrings(written), Skipped: addrStrings(skipped)}, nil
}

// RepairRegionSet records the end of a live repair or a reconciliation of
// one rw region set.
func (d *DataServer) RepairRegionSet(ctx context.Context, req *allocatorv1.RepairRegionSetRequest) (*allocatorv1.RepairRegionSetResponse, error) {
	addrs, err := parseAddrs("addresses", req.GetAddresses())
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, invalid("addresses", "required")
	}
	repair, err := parseAddrs("repair", req.GetRepair())
	if err != nil {
		return nil, err
	}
	for i, a := range repair {
		found := false
		for _, b := range addrs {
			found = found || a == b
		}
		if !found {
			return nil, invalid(fmt.Sprintf("repair[%d]", i), "not one of addresses")
		}
	}
	content, repaired, err := d.data.Repair(ctx, addrs, repair)
	if err != nil {
		return nil, d.s.toStatus(ctx, err)
	}
	return &allocatorv1.RepairRegionSetResponse{Content: content, Repaired: addrStrings(repaired)}, nil
}

// parseAddrs parses target addresses (platform/target), naming the first
// bad one.
func parseAddrs(field string, vs []string) ([]netip.AddrPort, error) {
	out := make([]netip.AddrPort, 0, len(vs))
	for i, v := range vs {
		ap, err := target.Parse(v)
		if err != nil {
			return nil, invalid(fmt.Sprintf("%s[%d]", field, i), err.Error())
		}
		out = append(out, ap)
	}
	return out, nil
}

func addrStrings(addrs []netip.AddrPort) []string {
	out := make([]string, len(addrs))
	for i, a := range addrs {
		out[i] = a.String()
	}
	return out
}
