// Package server is the bootstrap every storagecp binary shares: flags,
// telemetry, database connection and migrations, a gRPC server with health,
// reflection, tracing and panic recovery, and graceful shutdown.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	"storagecp.dev/platform/config"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/sdnotify"
	"storagecp.dev/platform/telemetry"
)

// Service describes one binary.
type Service struct {
	// Name is the service name in traces and logs, e.g. "volume-service".
	Name string
	// DefaultAddr is the listen address when neither flag nor env gives one.
	DefaultAddr string
	// EnvPrefix names the environment variables, e.g. "STORAGECP_VOLUME"
	// gives STORAGECP_VOLUME_LISTEN and STORAGECP_VOLUME_DB.
	EnvPrefix string
	// Migrations, when set, means the service has a database: --db is
	// required and migrations are applied at start.
	Migrations fs.FS
	// Flags registers extra flags before parsing.
	Flags func(*flag.FlagSet)
	// Register adds the gRPC services. ctx is cancelled at shutdown, so
	// background loops it starts stop with the process.
	Register func(ctx context.Context, env *Env) error
}

// Env is what Register gets.
type Env struct {
	Server *grpc.Server
	// Pool is nil for services without a database.
	Pool   *pgxpool.Pool
	Logger *slog.Logger
	// Dev enables development-only RPCs (fault injection).
	Dev bool
	// Addr is the address actually listened on.
	Addr string
	// MetricsAddr is where /metrics is served ("" when it is not).
	MetricsAddr string
	// Transport is the process's TLS identity: Register dials its peers
	// with Transport.DialOption.
	Transport *mtls.Transport
}

// Exit codes.
const (
	ExitOK       = 0
	ExitFailure  = 1
	ExitBadUsage = 2
)

// Main runs the service until SIGINT or SIGTERM and exits the process.
func Main(svc Service) {
	os.Exit(Run(context.Background(), svc, os.Args[1:]))
}

// Run is Main without the exit, for tests.
func Run(ctx context.Context, svc Service, args []string) int {
	fset, f := newFlagSet(svc)
	// Errors are printed by Parse; bad input of any source (flag, file,
	// environment) stops the process before it does anything.
	if err := config.Parse(fset, args, svc.configOptions()); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitBadUsage
	}
	if fset.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "%s: unexpected arguments: %s\n", svc.Name, strings.Join(fset.Args(), " "))
		fset.Usage()
		return ExitBadUsage
	}
	listen, metricsAddr, dev, sec, dsn, dbWait := f.listen, f.metricsAddr, f.dev, f.sec, f.dsn, f.dbWait

	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	logger, shutdownTelemetry, err := telemetry.Setup(ctx, svc.Name, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: telemetry: %v\n", svc.Name, err)
		return ExitFailure
	}
	defer func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdownTelemetry(c)
	}()

	transport, guard, err := sec.load(logger)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", svc.Name, err)
		return ExitBadUsage
	}
	defer guard.Close()

	// Metrics before anything makes instruments, so none is created on the
	// no-op provider; served before the database is up, so a scrape shows a
	// process that is stuck waiting for it.
	if *metricsAddr != "" {
		stopMetrics, err := serveMetrics(ctx, svc.Name, *metricsAddr, transport, logger)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: metrics: %v\n", svc.Name, err)
			return ExitFailure
		}
		defer stopMetrics()
	}

	var pool *pgxpool.Pool
	if svc.Migrations != nil {
		if *dsn == "" {
			fmt.Fprintf(os.Stderr, "%s: no database: set --db or %s_DB\n", svc.Name, svc.EnvPrefix)
			return ExitBadUsage
		}
		pool, err = db.Open(ctx, *dsn)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", svc.Name, err)
			return ExitBadUsage
		}
		defer pool.Close()
		notify(logger, sdnotify.Status, "migrating the database "+db.RedactDSN(*dsn))
		if err := migrateWithin(ctx, pool, svc.Migrations, *dbWait); err != nil {
			fmt.Fprintf(os.Stderr, "%s: database %s unreachable or not migratable: %v\n", svc.Name, db.RedactDSN(*dsn), err)
			return ExitFailure
		}
	}

	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: listen %s: %v\n", svc.Name, *listen, err)
		return ExitFailure
	}

	// Authorization before the fence: a refused caller learns nothing, not
	// even the epoch.
	gs := grpc.NewServer(
		transport.ServerOption(),
		grpc.StatsHandler(otelgrpc.NewServerHandler()),
		grpc.ChainUnaryInterceptor(recoverUnary(logger), guard.Unary(), fence.UnaryServerInterceptor(logger)),
		grpc.ChainStreamInterceptor(recoverStream(logger), guard.Stream(), fence.StreamServerInterceptor(logger)),
	)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(gs, hs)
	reflection.Register(gs)

	if pool != nil {
		commonv1.RegisterFenceServiceServer(gs, fence.NewServer(pool, logger))
	}

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	env := &Env{Server: gs, Pool: pool, Logger: logger, Dev: *dev, Addr: lis.Addr().String(), MetricsAddr: *metricsAddr, Transport: transport}
	if err := svc.Register(runCtx, env); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", svc.Name, err)
		return ExitFailure
	}
	names := []string{""}
	for name := range gs.GetServiceInfo() {
		names = append(names, name)
	}
	setAll := func(st healthpb.HealthCheckResponse_ServingStatus) {
		for _, n := range names {
			hs.SetServingStatus(n, st)
		}
	}
	setAll(healthpb.HealthCheckResponse_SERVING)

	var wg sync.WaitGroup
	if pool != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			watchDatabase(runCtx, pool, svc.Migrations, logger, setAll)
		}()
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- gs.Serve(lis) }()
	logger.Info("serving", "addr", lis.Addr().String(), "dev", *dev, "tls", transport.Secure(), "id", transport.ID())
	notify(logger, sdnotify.Ready, "serving on "+lis.Addr().String())

	code := ExitOK
	select {
	case <-ctx.Done():
		logger.Info("shutting down")
	case err := <-serveErr:
		logger.Error("serve failed", "err", err)
		code = ExitFailure
	}
	notify(logger, sdnotify.Stopping, "draining")
	// Draining: tell load balancers first, then finish in-flight calls.
	hs.Shutdown()
	cancelRun()
	stopped := make(chan struct{})
	go func() { gs.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		gs.Stop()
	}
	wg.Wait()
	return code
}

// serveMetrics installs the process's meter provider and serves it on addr
// until the returned stop is called. The provider outlives the gRPC server
// (stop runs last), so the final scrape during a drain still works.
//
// Metrics and profiles say much about the process (pprof's cmdline its
// flags), so they are served on loopback only, unless over mutual TLS.
func serveMetrics(ctx context.Context, name, addr string, transport *mtls.Transport, logger *slog.Logger) (stop func(), err error) {
	loopback, err := isLoopback(addr)
	if err != nil {
		return nil, err
	}
	if !loopback && !transport.Secure() {
		return nil, fmt.Errorf("metrics address %s is not loopback: serving it needs TLS (drop --insecure, or bind 127.0.0.1)", addr)
	}
	handler, shutdown, err := telemetry.SetupMetrics(ctx, name)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		_ = shutdown(context.Background())
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if !loopback {
		lis = tls.NewListener(lis, transport.ServerTLS())
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", handler)
	// Profiles beside the metrics, on the same operator-only listener: how
	// a CPU-bound replacement is diagnosed (go tool pprof http://ADDR/debug/pprof/profile).
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := hs.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("metrics server failed", "err", err)
		}
	}()
	logger.Info("serving metrics", "addr", lis.Addr().String(), "tls", !loopback)
	return func() {
		c, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(c)
		_ = shutdown(c)
	}, nil
}

func migrateWithin(ctx context.Context, pool *pgxpool.Pool, migrations fs.FS, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		c, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := db.Migrate(c, pool, migrations)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// watchDatabase turns the service NOT_SERVING while the database is down (or
// not migrated) and SERVING again when it is back, without a restart.
func watchDatabase(ctx context.Context, pool *pgxpool.Pool, migrations fs.FS, logger *slog.Logger, set func(healthpb.HealthCheckResponse_ServingStatus)) {
	healthy := true
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		c, cancel := context.WithTimeout(ctx, time.Second)
		ok, err := db.Migrated(c, pool, migrations)
		cancel()
		if ctx.Err() != nil {
			return
		}
		now := err == nil && ok
		if now == healthy {
			continue
		}
		healthy = now
		if now {
			logger.Info("database reachable again: SERVING")
			set(healthpb.HealthCheckResponse_SERVING)
		} else {
			logger.Warn("database unreachable: NOT_SERVING", "err", err)
			set(healthpb.HealthCheckResponse_NOT_SERVING)
		}
	}
}

func recoverUnary(logger *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if r := recover(); r != nil {
				logger.ErrorContext(ctx, "panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(ctx, req)
	}
}

func recoverStream(logger *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if r := recover(); r != nil {
				logger.ErrorContext(ss.Context(), "panic in handler", "method", info.FullMethod, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = status.Error(codes.Internal, "internal error")
			}
		}()
		return handler(srv, ss)
	}
}

// notify tells systemd (Type=notify units) how start-up and shutdown go;
// a no-op unless systemd started the process.
func notify(logger *slog.Logger, send func(string) error, status string) {
	if err := send(status); err != nil {
		logger.Warn("cannot notify systemd", "err", err)
	}
}
