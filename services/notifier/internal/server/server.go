// Package server implements storage.notifier.v1.UpstairsNotifierService:
// the only door to running Upstairs. Consumers construct volumes through it,
// replacements notify through it, and Upstairs report repairs to it.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/notifier/internal/store"
	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/platform/mtls"
)

// volumeClient is what the notifier needs of the volume-service.
type volumeClient interface {
	CheckoutVolume(ctx context.Context, in *volumev1.CheckoutVolumeRequest, opts ...grpc.CallOption) (*volumev1.CheckoutVolumeResponse, error)
	GetVolume(ctx context.Context, in *volumev1.GetVolumeRequest, opts ...grpc.CallOption) (*volumev1.GetVolumeResponse, error)
	GetVolumeWithKeys(ctx context.Context, in *volumev1.GetVolumeWithKeysRequest, opts ...grpc.CallOption) (*volumev1.GetVolumeWithKeysResponse, error)
	ResolveAddress(ctx context.Context, in *volumev1.ResolveAddressRequest, opts ...grpc.CallOption) (*volumev1.ResolveAddressResponse, error)
}

// upstairsClient is what the notifier calls on an Upstairs endpoint.
type upstairsClient interface {
	Activate(ctx context.Context, in *upstairsv1.ActivateRequest, opts ...grpc.CallOption) (*upstairsv1.ActivateResponse, error)
	Deactivate(ctx context.Context, in *upstairsv1.DeactivateRequest, opts ...grpc.CallOption) (*upstairsv1.DeactivateResponse, error)
	ReplaceVolume(ctx context.Context, in *upstairsv1.ReplaceVolumeRequest, opts ...grpc.CallOption) (*upstairsv1.ReplaceVolumeResponse, error)
}

// Option tunes a Server.
type Option func(*Server)

// DefaultUpstairsCallTimeout bounds each call to an Upstairs when no
// WithUpstairsCallTimeout is given: a live Upstairs answers in milliseconds,
// and a step waiting on a dead one should unwind and retry soon.
const DefaultUpstairsCallTimeout = 10 * time.Second

// WithUpstairsCallTimeout bounds each call to an Upstairs endpoint.
func WithUpstairsCallTimeout(d time.Duration) Option {
	return func(s *Server) { s.upstairsTimeout = d }
}

// Server is the UpstairsNotifierService.
type Server struct {
	notifierv1.UnimplementedUpstairsNotifierServiceServer
	store           *store.Store
	logger          *slog.Logger
	volumes         volumeClient
	upstairsTimeout time.Duration
	metrics         notifyMetrics
	transport       *mtls.Transport

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// New returns the service over its database, talking to the volume-service
// at volumeAddr and to Upstairs endpoints, with transport's identity.
func New(pool *pgxpool.Pool, logger *slog.Logger, volumeAddr string, transport *mtls.Transport, opts ...Option) (*Server, error) {
	conn, err := grpcclient.Dial(volumeAddr, transport.DialOption(mtls.VolumeService))
	if err != nil {
		return nil, err
	}
	s := &Server{
		store:           store.New(pool),
		transport:       transport,
		logger:          logger,
		volumes:         volumev1.NewVolumeServiceClient(conn),
		upstairsTimeout: DefaultUpstairsCallTimeout,
		metrics:         newNotifyMetrics(),
		conns:           map[string]*grpc.ClientConn{},
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

// Close releases the connections to Upstairs endpoints.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ep, c := range s.conns {
		_ = c.Close()
		delete(s.conns, ep)
	}
}

// upstairs returns a client of an endpoint, reusing one connection each.
func (s *Server) upstairs(endpoint string) (upstairsClient, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.conns[endpoint]
	if !ok {
		var err error
		c, err = grpcclient.Dial(endpoint, s.transport.DialOption(mtls.Upstairs))
		if err != nil {
			return nil, err
		}
		s.conns[endpoint] = c
	}
	return upstairsv1.NewUpstairsServiceClient(c), nil
}

// canonicalEndpoint checks "host:port" and returns it in one spelling, so
// that the same endpoint is one attachment.
func canonicalEndpoint(s string) (string, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", errors.New(`want "host:port"`)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return "", errors.New("port must be 1-65535")
	}
	if host == "" {
		return "", errors.New("host is empty")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", errors.New("zoned addresses are not supported")
		}
		host = a.String()
	} else if strings.ContainsAny(host, " /\\@[]%") {
		return "", errors.New("host is not a name or an IP address")
	} else {
		host = strings.ToLower(host)
	}
	return net.JoinHostPort(host, strconv.Itoa(p)), nil
}

// unreachable reports a transport-level failure to reach a peer.
func unreachable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// storeError maps an error to a gRPC status by apierr's rule (the store's
// errors carry their kinds); op names the operation in the log line of an
// internal error.
func (s *Server) storeError(ctx context.Context, op string, err error) error {
	return apierr.Status(ctx, s.logger, err, "op", op)
}

func invalid(field, format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, "%s: %s", field, fmt.Sprintf(format, args...))
}
