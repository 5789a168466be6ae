// Package agentclient is the region-allocator's client of the Crucible
// agents (storage.agent.v1): agentapi.Agent over one gRPC connection to
// the endpoint that reaches every dataset's agent.
//
// Two things cross with every call besides the request. The fence epoch
// the allocator's own caller sent goes on as metadata, so that an agent
// refuses a deposed leader's calls as the allocator does. And the agent's
// errors come back as the agentapi sentinels they stand for
// (agentapi.FromStatus), so the allocator's handlers classify them the same
// whichever agent answered.
package agentclient

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	"storagecp.dev/allocator/agentapi"
	agentv1 "storagecp.dev/gen/go/storage/agent/v1"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/platform/mtls"
)

// Dial connects (lazily) to the agents' endpoint, forwarding the fence.
//
// Without the platform's retries: a gone agent answers UNAVAILABLE (its
// kind's code) with the reason GONE, which is final, and the retry policy
// cannot tell it from a dropped connection, so it would ask five times
// with backoff on every call aimed at an expunged disk. The allocator's
// callers retry what is transient (sagas do), as they did when the agents
// answered in process.
func Dial(addr string, transport *mtls.Transport) (*grpc.ClientConn, error) {
	return grpcclient.Dial(addr, transport.DialOption(mtls.CrucibleAgents), grpc.WithDisableRetry(), grpc.WithChainUnaryInterceptor(forwardEpoch))
}

// forwardEpoch is a client interceptor that sends on the fence epoch the
// incoming request carried (fence.FromContext): every call the allocator
// makes on behalf of a fenced caller is fenced too.
func forwardEpoch(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if epoch, ok := fence.FromContext(ctx); ok {
		ctx = fence.WithEpoch(ctx, epoch)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// Client is agentapi.Agent over storage.agent.v1.
type Client struct {
	api agentv1.AgentServiceClient
}

var _ agentapi.Agent = (*Client)(nil)

// New returns the agents reached through conn (from Dial).
func New(conn grpc.ClientConnInterface) *Client {
	return &Client{api: agentv1.NewAgentServiceClient(conn)}
}

// EnsureRegion implements agentapi.Agent.
func (c *Client) EnsureRegion(ctx context.Context, datasetID, regionID uuid.UUID, cloneSource string) (uint16, error) {
	resp, err := c.api.EnsureRegion(ctx, &agentv1.EnsureRegionRequest{
		DatasetId: datasetID.String(), RegionId: regionID.String(), CloneSource: cloneSource,
	})
	if err != nil {
		return 0, agentapi.FromStatus(err)
	}
	return port(resp.GetPort())
}

// DeleteRegion implements agentapi.Agent.
func (c *Client) DeleteRegion(ctx context.Context, datasetID, regionID uuid.UUID) error {
	_, err := c.api.DeleteRegion(ctx, &agentv1.DeleteRegionRequest{DatasetId: datasetID.String(), RegionId: regionID.String()})
	return agentapi.FromStatus(err)
}

// CreateSnapshot implements agentapi.Agent.
func (c *Client) CreateSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	_, err := c.api.CreateSnapshot(ctx, &agentv1.CreateSnapshotRequest{
		DatasetId: datasetID.String(), RegionId: regionID.String(), SnapshotId: snapshotID.String(),
	})
	return agentapi.FromStatus(err)
}

// StartRunningSnapshot implements agentapi.Agent.
func (c *Client) StartRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) (uint16, error) {
	resp, err := c.api.StartRunningSnapshot(ctx, &agentv1.StartRunningSnapshotRequest{
		DatasetId: datasetID.String(), RegionId: regionID.String(), SnapshotId: snapshotID.String(),
	})
	if err != nil {
		return 0, agentapi.FromStatus(err)
	}
	return port(resp.GetPort())
}

// StopRunningSnapshot implements agentapi.Agent.
func (c *Client) StopRunningSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	_, err := c.api.StopRunningSnapshot(ctx, &agentv1.StopRunningSnapshotRequest{
		DatasetId: datasetID.String(), RegionId: regionID.String(), SnapshotId: snapshotID.String(),
	})
	return agentapi.FromStatus(err)
}

// DeleteSnapshot implements agentapi.Agent.
func (c *Client) DeleteSnapshot(ctx context.Context, datasetID, regionID, snapshotID uuid.UUID) error {
	_, err := c.api.DeleteSnapshot(ctx, &agentv1.DeleteSnapshotRequest{
		DatasetId: datasetID.String(), RegionId: regionID.String(), SnapshotId: snapshotID.String(),
	})
	return agentapi.FromStatus(err)
}

// ProbeTargets implements agentapi.Agent.
func (c *Client) ProbeTargets(ctx context.Context, addrs []netip.AddrPort) ([]agentapi.Probe, error) {
	req := &agentv1.ProbeTargetsRequest{Addresses: make([]string, len(addrs))}
	for i, a := range addrs {
		req.Addresses[i] = a.String()
	}
	resp, err := c.api.ProbeTargets(ctx, req)
	if err != nil {
		return nil, agentapi.FromStatus(err)
	}
	if len(resp.GetProbes()) != len(addrs) {
		return nil, fmt.Errorf("agent answered %d probes for %d addresses", len(resp.GetProbes()), len(addrs))
	}
	out := make([]agentapi.Probe, len(addrs))
	for i, p := range resp.GetProbes() {
		switch p.GetState() {
		case agentv1.TargetState_TARGET_STATE_SERVED:
			out[i] = agentapi.Probe{Result: agentapi.Served, Content: p.GetContent()}
		case agentv1.TargetState_TARGET_STATE_UNREACHABLE:
			out[i] = agentapi.Probe{Result: agentapi.Unreachable}
		case agentv1.TargetState_TARGET_STATE_DESTROYED:
			out[i] = agentapi.Probe{Result: agentapi.Destroyed}
		default:
			return nil, fmt.Errorf("agent probe of %s: state %v", addrs[i], p.GetState())
		}
	}
	return out, nil
}

// port checks a port the agent answered with.
func port(p uint32) (uint16, error) {
	if p == 0 || p > 65535 {
		return 0, fmt.Errorf("agent answered port %d", p)
	}
	return uint16(p), nil
}
