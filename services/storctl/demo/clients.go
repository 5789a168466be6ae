package demo

import (
	"errors"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// Clients are connections to the four services. The demo talks to them
// only through their public gRPC APIs, exactly as storctl and grpcurl do.
type Clients struct {
	Volume       *grpc.ClientConn
	Allocator    *grpc.ClientConn
	Notifier     *grpc.ClientConn
	Orchestrator *grpc.ClientConn
}

// Addrs are the services' "host:port" addresses.
type Addrs struct {
	Volume, Allocator, Notifier, Orchestrator string
}

// Dial connects to every service in plaintext (loopback deployments) with
// opts added, e.g. the caller's otelgrpc stats handler. Connections are
// lazy: nothing is contacted until the first call.
func Dial(a Addrs, opts ...grpc.DialOption) (Clients, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	var c Clients
	for _, x := range []struct {
		name string
		addr string
		conn **grpc.ClientConn
	}{
		{"volume", a.Volume, &c.Volume},
		{"allocator", a.Allocator, &c.Allocator},
		{"notifier", a.Notifier, &c.Notifier},
		{"orchestrator", a.Orchestrator, &c.Orchestrator},
	} {
		conn, err := grpc.NewClient(x.addr, opts...)
		if err != nil {
			_ = c.Close()
			return Clients{}, fmt.Errorf("dial %s at %q: %w", x.name, x.addr, err)
		}
		*x.conn = conn
	}
	return c, nil
}

// Close closes every connection that is set.
func (c Clients) Close() error {
	var errs []error
	for _, conn := range []*grpc.ClientConn{c.Volume, c.Allocator, c.Notifier, c.Orchestrator} {
		if conn != nil {
			errs = append(errs, conn.Close())
		}
	}
	return errors.Join(errs...)
}

func (c Clients) check() error {
	if c.Volume == nil || c.Allocator == nil || c.Notifier == nil || c.Orchestrator == nil {
		return errors.New("demo: every service connection (Volume, Allocator, Notifier, Orchestrator) is required")
	}
	return nil
}

// api holds the typed clients the demo calls.
type api struct {
	vol         volumev1.VolumeServiceClient
	alloc       allocatorv1.RegionAllocatorServiceClient
	notifier    notifierv1.UpstairsNotifierServiceClient
	lifecycle   orchestratorv1.LifecycleServiceClient
	replacement orchestratorv1.ReplacementServiceClient
	admin       orchestratorv1.AdminServiceClient
}

func (c Clients) api() (api, error) {
	if err := c.check(); err != nil {
		return api{}, err
	}
	return api{
		vol:         volumev1.NewVolumeServiceClient(c.Volume),
		alloc:       allocatorv1.NewRegionAllocatorServiceClient(c.Allocator),
		notifier:    notifierv1.NewUpstairsNotifierServiceClient(c.Notifier),
		lifecycle:   orchestratorv1.NewLifecycleServiceClient(c.Orchestrator),
		replacement: orchestratorv1.NewReplacementServiceClient(c.Orchestrator),
		admin:       orchestratorv1.NewAdminServiceClient(c.Orchestrator),
	}, nil
}
