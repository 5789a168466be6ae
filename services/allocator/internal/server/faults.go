package server

import (
	"context"
	"time"

	"storagecp.dev/allocator/internal/agentfault"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// FaultServer is the AgentFaultService, registered only with --dev. It
// drives this process's fault registry: a fault fails or delays this
// allocator's calls to the agents, not another allocator's.
type FaultServer struct {
	allocatorv1.UnimplementedAgentFaultServiceServer
	faults *agentfault.Faults
}

const maxFaultDelay = 10 * time.Minute

// InjectAgentFault makes the next count calls of an operation fail or wait.
func (f *FaultServer) InjectAgentFault(_ context.Context, req *allocatorv1.InjectAgentFaultRequest) (*allocatorv1.InjectAgentFaultResponse, error) {
	var op agentfault.Operation
	switch req.GetOperation() {
	case allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION:
		op = agentfault.OpEnsureRegion
	case allocatorv1.AgentOperation_AGENT_OPERATION_DELETE_REGION:
		op = agentfault.OpDeleteRegion
	case allocatorv1.AgentOperation_AGENT_OPERATION_CREATE_SNAPSHOT:
		op = agentfault.OpCreateSnapshot
	case allocatorv1.AgentOperation_AGENT_OPERATION_DELETE_SNAPSHOT:
		op = agentfault.OpDeleteSnapshot
	default:
		return nil, invalid("operation", "unknown or unspecified")
	}
	datasetID, err := parseOptionalID("dataset_id", req.GetDatasetId())
	if err != nil {
		return nil, err
	}
	if req.GetCount() <= 0 {
		return nil, invalid("count", "must be positive")
	}
	var delay time.Duration
	if d := req.GetDelay(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, invalid("delay", "invalid duration")
		}
		delay = d.AsDuration()
		if delay < 0 || delay > maxFaultDelay {
			return nil, invalid("delay", "must be between 0 and 10m")
		}
	}
	if !req.GetFail() && delay == 0 {
		return nil, invalid("fail", "a fault must fail or delay")
	}
	if req.GetPermanent() && !req.GetFail() {
		return nil, invalid("permanent", "only a failing fault (fail) can be permanent")
	}
	f.faults.Inject(agentfault.Fault{Op: op, DatasetID: datasetID, Count: int(req.GetCount()), Fail: req.GetFail(), Permanent: req.GetPermanent(), Delay: delay})
	return &allocatorv1.InjectAgentFaultResponse{}, nil
}

// ClearAgentFaults removes every pending fault.
func (f *FaultServer) ClearAgentFaults(context.Context, *allocatorv1.ClearAgentFaultsRequest) (*allocatorv1.ClearAgentFaultsResponse, error) {
	f.faults.Clear()
	return &allocatorv1.ClearAgentFaultsResponse{}, nil
}
