// Package grpcclient dials storagecp services the same way everywhere:
// tracing, retries of UNAVAILABLE (every storagecp RPC is idempotent by
// design), and a default per-call deadline.
//
// It adds no transport credentials: the caller passes its own, normally
// mtls.Transport.DialOption naming the service it expects to reach. A dial
// without credentials fails ("no transport security set") rather than
// falling back to plaintext.
package grpcclient

import (
	"context"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// DefaultCallTimeout applies to calls whose context has no deadline.
const DefaultCallTimeout = 30 * time.Second

const serviceConfig = `{
  "methodConfig": [{
    "name": [{}],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.05s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// Dial creates a client connection (lazily connected) to target
// ("host:port"). Calls fail fast while the peer is unreachable (after the
// retries of the service config); pass WaitForReady for peers that are
// always meant to be up, so a call waits (until its deadline) for them.
func Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	base := []grpc.DialOption{
		// gRPC's default reconnect backoff grows to two minutes, and while a
		// channel waits to reconnect every call fails at once with the last
		// connection error: a peer that restarted (or started a moment
		// after us) would look down for minutes. Reconnect within a second.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 2 * time.Second,
		}),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler()),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithChainUnaryInterceptor(defaultDeadline),
	}
	return grpc.NewClient(target, append(base, opts...)...)
}

func defaultDeadline(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultCallTimeout)
		defer cancel()
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// WaitForReady makes calls on the connection wait for the peer to be
// reachable, until their deadline, instead of failing at once.
func WaitForReady() grpc.DialOption {
	return grpc.WithDefaultCallOptions(grpc.WaitForReady(true))
}
