package demo

import (
	"errors"
	"fmt"

	"google.golang.org/grpc"

	"storagecp.dev/platform/mtls"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// Clients are connections to the four services. The demo talks to them
// only through their public gRPC APIs, exactly as storctl and grpcurl do,
// and under the caller's identity: an operator's (deploy/authz/policy.json
// lets operators run the lifecycle, expunge disks and activate tasks).
type Clients struct {
	Volume       *grpc.ClientConn
	Allocator    *grpc.ClientConn
	Notifier     *grpc.ClientConn
	Orchestrator *grpc.ClientConn
	// Upstairs is the credentials the demo dials the sim-upstairs of
	// Options.SimUpstairs with (e.g. Transport.DialOption(mtls.Upstairs));
	// required when there are any.
	Upstairs grpc.DialOption
}

// Addrs are the services' "host:port" addresses.
type Addrs struct {
	Volume, Allocator, Notifier, Orchestrator string
}

// Dial connects to every service with t's credentials, expecting each
// service's own identity, with opts added (e.g. the caller's otelgrpc
// stats handler); the sim-upstairs are dialled with t too. There is no
// default: a plaintext deployment takes mtls.Insecure(). Connections are
// lazy: nothing is contacted until the first call.
func Dial(a Addrs, t *mtls.Transport, opts ...grpc.DialOption) (Clients, error) {
	if t == nil {
		return Clients{}, errors.New("demo: no transport (mtls.Load the operator's files, or mtls.Insecure() for a plaintext deployment)")
	}
	c := Clients{Upstairs: t.DialOption(mtls.Upstairs)}
	for _, x := range []struct {
		name     string
		addr     string
		identity string
		conn     **grpc.ClientConn
	}{
		{"volume", a.Volume, mtls.VolumeService, &c.Volume},
		{"allocator", a.Allocator, mtls.RegionAllocator, &c.Allocator},
		{"notifier", a.Notifier, mtls.UpstairsNotifier, &c.Notifier},
		{"orchestrator", a.Orchestrator, mtls.ReplacementOrchestrator, &c.Orchestrator},
	} {
		conn, err := grpc.NewClient(x.addr, append([]grpc.DialOption{t.DialOption(x.identity)}, opts...)...)
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
