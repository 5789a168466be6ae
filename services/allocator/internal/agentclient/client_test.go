package agentclient

import (
	"context"
	"errors"
	"net"
	"storagecp.dev/platform/mtls"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	"storagecp.dev/allocator/agentapi"
	agentv1 "storagecp.dev/gen/go/storage/agent/v1"
)

// goneAgent answers every EnsureRegion as an agent on an expunged disk
// does, and counts the calls that reached it.
type goneAgent struct {
	agentv1.UnimplementedAgentServiceServer
	calls atomic.Int32
}

func (g *goneAgent) EnsureRegion(ctx context.Context, _ *agentv1.EnsureRegionRequest) (*agentv1.EnsureRegionResponse, error) {
	g.calls.Add(1)
	return nil, agentapi.Status(ctx, nil, agentapi.ErrGone)
}

// A gone agent's answer is final: it reaches the allocator as ErrGone
// after one call. GONE travels as UNAVAILABLE, which the platform's
// default client config would retry five times with backoff, on every
// ensure aimed at an expunged disk.
func TestGoneIsAskedOnce(t *testing.T) {
	agent := &goneAgent{}
	gs := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(gs, agent)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := Dial(lis.Addr().String(), mtls.Insecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	_, err = New(conn).EnsureRegion(context.Background(), uuid.New(), uuid.New(), "")
	if !errors.Is(err, agentapi.ErrGone) {
		t.Fatalf("EnsureRegion on a gone agent: %v", err)
	}
	if n := agent.calls.Load(); n != 1 {
		t.Fatalf("the gone agent was asked %d times, want 1", n)
	}
}
