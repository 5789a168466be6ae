package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/notifier/migrations"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pgtest"
)

// binDir holds the binaries TestMain built. TestMain offers no other way to
// hand them to tests.
var binDir string

func TestMain(m *testing.M) {
	dir, err := buildDir()
	if err != nil {
		fmt.Fprintln(os.Stderr, "build dir:", err)
		os.Exit(1)
	}
	if err := goBuild(dir, "../../sim", "./cmd/sim-upstairs", "sim-upstairs"); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, b := range []struct{ module, pkg, name string }{
		{"../../../volume", "./cmd/volume-service", "volume-service"},
		{"../../../allocator", "./cmd/region-allocator", "region-allocator"},
		{"../../../allocator/sim", "./cmd/sim-agent", "sim-agent"},
	} {
		if err := goBuild(dir, b.module, b.pkg, b.name); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	}
	binDir = dir
	pgtest.Main(m, pgtest.Schema{Name: "notifier", Migrations: migrations.FS})
}

// buildDir is next to the test binary, which `go test` removes afterwards
// (pgtest.Main exits the process, so no deferred cleanup would run).
func buildDir() (string, error) {
	exe, err := os.Executable()
	if err == nil {
		dir := filepath.Join(filepath.Dir(exe), "notifier-test-bin")
		if err := os.MkdirAll(dir, 0o755); err == nil {
			return dir, nil
		}
	}
	return os.MkdirTemp("", "notifier-test-bin")
}

func goBuild(dir, moduleDir, pkg, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(dir, name), pkg)
	cmd.Dir = moduleDir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
	}
	return nil
}

// freeAddr returns a loopback address with a port nobody listens on now.
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// process is a started binary.
type process struct {
	name string
	addr string
	args []string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startProcess runs a built binary listening on addr and waits until its
// health check serves. It is stopped when the test ends; its output is
// shown when the test failed.
func startProcess(t testing.TB, name, addr string, args ...string) *process {
	t.Helper()
	p := &process{name: name, addr: addr, args: args, out: &syncBuffer{}}
	p.start(t)
	t.Cleanup(func() {
		p.stop()
		// Binaries built with -race report here.
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race", name)
		}
		if t.Failed() {
			t.Logf("--- %s (%s) output:\n%s", name, addr, tail(p.out.String(), 6000))
		}
	})
	return p
}

func (p *process) start(t testing.TB) {
	t.Helper()
	// Plaintext: the notifier under test runs in process, without an
	// identity; the processes' mutual TLS is the stack's to test.
	p.cmd = exec.Command(filepath.Join(binDir, p.name), append([]string{"--listen", p.addr, "--insecure"}, p.args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { _ = cmd.Wait(); close(done) }(p.cmd, p.done)
	waitHealthy(t, p)
}

// kill stops the process at once, as a crash would.
func (p *process) kill() {
	if p.cmd != nil && p.cmd.Process != nil {
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *process) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.kill()
	}
}

// restart starts the process again on the same address (all memory lost).
func (p *process) restart(t testing.TB) {
	t.Helper()
	p.kill()
	p.start(t)
}

func waitHealthy(t testing.TB, p *process) {
	t.Helper()
	conn, err := grpc.NewClient(p.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited during start:\n%s", p.name, tail(p.out.String(), 4000))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s at %s not healthy: %v\n%s", p.name, p.addr, err, tail(p.out.String(), 4000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

func dial(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// sim is one sim-upstairs process with its clients.
type sim struct {
	*process
	up     upstairsv1.UpstairsServiceClient
	faults upstairsv1.UpstairsFaultServiceClient
}

// startSim starts a sim-upstairs (with --dev) reporting to notifierAddr;
// with allocatorAddr empty it has no data path (no probes, no writes).
func startSim(t testing.TB, notifierAddr, allocatorAddr string, extra ...string) *sim {
	t.Helper()
	args := append([]string{"--dev", "--notifier-addr", notifierAddr, "--allocator-addr", allocatorAddr, "--repair-delay", "200ms", "--probe-interval", "100ms"}, extra...)
	p := startProcess(t, "sim-upstairs", freeAddr(t), args...)
	conn := dial(t, p.addr)
	return &sim{process: p, up: upstairsv1.NewUpstairsServiceClient(conn), faults: upstairsv1.NewUpstairsFaultServiceClient(conn)}
}

// notifierEnv is an in-process notifier over a fresh database.
type notifierEnv struct {
	srv    *Server
	addr   string
	client notifierv1.UpstairsNotifierServiceClient
}

// startNotifier serves a notifier on a loopback port, using volumes for
// the volume-service.
func startNotifier(t testing.TB, volumeAddr string) *notifierEnv {
	t.Helper()
	pool := pgtest.NewPool(t, "notifier")
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	srv, err := New(pool, logger, volumeAddr, mtls.Insecure(), WithUpstairsCallTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(fence.UnaryServerInterceptor(logger)))
	notifierv1.RegisterUpstairsNotifierServiceServer(gs, srv)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); srv.Close() })
	return &notifierEnv{srv: srv, addr: lis.Addr().String(), client: notifierv1.NewUpstairsNotifierServiceClient(dial(t, lis.Addr().String()))}
}

// eventually polls cond until it returns nil or the deadline passes.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
