// Package agentserver serves the simulated Crucible agents
// (storagecp.dev/allocator/sim/simagent) over gRPC, as the sim-agent
// process does: storage.agent.v1.AgentService, which the region-allocator
// calls for every dataset, and storage.allocator.v1.AgentDataService, the
// data path sim-upstairs drives through the allocator.
//
// Errors cross the wire by agentapi's rule (agentapi.Status): the status
// code of the error's kind and an ErrorInfo naming it, so the allocator's
// client gets back the very sentinel the simulation returned.
package agentserver

import (
	"context"
	"log/slog"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	"storagecp.dev/allocator/agentapi"
	"storagecp.dev/allocator/sim/simagent"
	agentv1 "storagecp.dev/gen/go/storage/agent/v1"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/target"
)

// Register adds both services over sim to gs. gs must run the fence's
// server interceptor (platform/fence), as every storagecp server does: the
// simulation checks the epoch the allocator forwards.
func Register(gs *grpc.Server, sim *simagent.Sim, logger *slog.Logger) {
	agentv1.RegisterAgentServiceServer(gs, &agentServer{sim: sim, logger: logger})
	allocatorv1.RegisterAgentDataServiceServer(gs, &dataServer{sim: sim, logger: logger})
}

type agentServer struct {
	agentv1.UnimplementedAgentServiceServer
	sim    *simagent.Sim
	logger *slog.Logger
}

func (a *agentServer) status(ctx context.Context, err error) error {
	return agentapi.Status(ctx, a.logger, err)
}

// request is the ids every agent call names.
type request interface {
	GetDatasetId() string
	GetRegionId() string
}

func parseRegion(req request) (datasetID, regionID uuid.UUID, err error) {
	if datasetID, err = ids.Parse("dataset_id", req.GetDatasetId()); err != nil {
		return
	}
	regionID, err = ids.Parse("region_id", req.GetRegionId())
	return
}

type snapshotRequest interface {
	request
	GetSnapshotId() string
}

func parseSnapshot(req snapshotRequest) (datasetID, regionID, snapshotID uuid.UUID, err error) {
	if datasetID, regionID, err = parseRegion(req); err != nil {
		return
	}
	snapshotID, err = ids.Parse("snapshot_id", req.GetSnapshotId())
	return
}

func (a *agentServer) EnsureRegion(ctx context.Context, req *agentv1.EnsureRegionRequest) (*agentv1.EnsureRegionResponse, error) {
	datasetID, regionID, err := parseRegion(req)
	if err != nil {
		return nil, err
	}
	port, err := a.sim.EnsureRegion(ctx, datasetID, regionID, req.GetCloneSource())
	if err != nil {
		return nil, a.status(ctx, err)
	}
	return &agentv1.EnsureRegionResponse{Port: uint32(port)}, nil
}

func (a *agentServer) DeleteRegion(ctx context.Context, req *agentv1.DeleteRegionRequest) (*agentv1.DeleteRegionResponse, error) {
	datasetID, regionID, err := parseRegion(req)
	if err != nil {
		return nil, err
	}
	if err := a.sim.DeleteRegion(ctx, datasetID, regionID); err != nil {
		return nil, a.status(ctx, err)
	}
	return &agentv1.DeleteRegionResponse{}, nil
}

func (a *agentServer) CreateSnapshot(ctx context.Context, req *agentv1.CreateSnapshotRequest) (*agentv1.CreateSnapshotResponse, error) {
	datasetID, regionID, snapshotID, err := parseSnapshot(req)
	if err != nil {
		return nil, err
	}
	if err := a.sim.CreateSnapshot(ctx, datasetID, regionID, snapshotID); err != nil {
		return nil, a.status(ctx, err)
	}
	return &agentv1.CreateSnapshotResponse{}, nil
}

func (a *agentServer) StartRunningSnapshot(ctx context.Context, req *agentv1.StartRunningSnapshotRequest) (*agentv1.StartRunningSnapshotResponse, error) {
	datasetID, regionID, snapshotID, err := parseSnapshot(req)
	if err != nil {
		return nil, err
	}
	port, err := a.sim.StartRunningSnapshot(ctx, datasetID, regionID, snapshotID)
	if err != nil {
		return nil, a.status(ctx, err)
	}
	return &agentv1.StartRunningSnapshotResponse{Port: uint32(port)}, nil
}

func (a *agentServer) StopRunningSnapshot(ctx context.Context, req *agentv1.StopRunningSnapshotRequest) (*agentv1.StopRunningSnapshotResponse, error) {
	datasetID, regionID, snapshotID, err := parseSnapshot(req)
	if err != nil {
		return nil, err
	}
	if err := a.sim.StopRunningSnapshot(ctx, datasetID, regionID, snapshotID); err != nil {
		return nil, a.status(ctx, err)
	}
	return &agentv1.StopRunningSnapshotResponse{}, nil
}

func (a *agentServer) DeleteSnapshot(ctx context.Context, req *agentv1.DeleteSnapshotRequest) (*agentv1.DeleteSnapshotResponse, error) {
	datasetID, regionID, snapshotID, err := parseSnapshot(req)
	if err != nil {
		return nil, err
	}
	if err := a.sim.DeleteSnapshot(ctx, datasetID, regionID, snapshotID); err != nil {
		return nil, a.status(ctx, err)
	}
	return &agentv1.DeleteSnapshotResponse{}, nil
}

func (a *agentServer) ProbeTargets(ctx context.Context, req *agentv1.ProbeTargetsRequest) (*agentv1.ProbeTargetsResponse, error) {
	addrs, err := target.ParseAll("addresses", req.GetAddresses())
	if err != nil {
		return nil, err
	}
	probes, err := a.sim.ProbeTargets(ctx, addrs)
	if err != nil {
		return nil, a.status(ctx, err)
	}
	resp := &agentv1.ProbeTargetsResponse{Probes: make([]*agentv1.TargetProbe, len(probes))}
	for i, p := range probes {
		resp.Probes[i] = &agentv1.TargetProbe{Address: req.GetAddresses()[i], State: targetState(p.Result), Content: p.Content}
	}
	return resp, nil
}

func targetState(r agentapi.ProbeResult) agentv1.TargetState {
	switch r {
	case agentapi.Served:
		return agentv1.TargetState_TARGET_STATE_SERVED
	case agentapi.Unreachable:
		return agentv1.TargetState_TARGET_STATE_UNREACHABLE
	}
	return agentv1.TargetState_TARGET_STATE_DESTROYED
}
