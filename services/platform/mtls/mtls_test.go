package mtls_test

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
)

const td = mtls.DefaultTrustDomain

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type world struct {
	ca  *pki.CA
	dir string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	return &world{ca: ca, dir: dir}
}

func (w *world) transport(t *testing.T, path string) *mtls.Transport {
	t.Helper()
	id, err := w.ca.Ensure(path, mtls.ServiceID(td, path))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := mtls.Load(td, mtls.Files{CA: w.ca.BundlePath(), Cert: id.Cert, Key: id.Key}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// serve runs a health server with tr's identity that records its callers.
func serve(t *testing.T, tr *mtls.Transport) (addr string, callers chan string) {
	t.Helper()
	callers = make(chan string, 100)
	gs := grpc.NewServer(tr.ServerOption(), grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		id, _ := mtls.Caller(ctx)
		callers <- id
		return h(ctx, req)
	}))
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return lis.Addr().String(), callers
}

func check(addr string, opt grpc.DialOption) error {
	conn, err := grpc.NewClient(addr, opt)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestMutualTLSIdentifiesTheCaller(t *testing.T) {
	w := newWorld(t)
	addr, callers := serve(t, w.transport(t, mtls.VolumeService))
	client := w.transport(t, "operator/alice")
	if err := check(addr, client.DialOption(mtls.VolumeService)); err != nil {
		t.Fatal(err)
	}
	if got := <-callers; got != "spiffe://storagecp.local/operator/alice" {
		t.Fatalf("caller %q", got)
	}
}

func TestHandshakeRefusals(t *testing.T) {
	w := newWorld(t)
	addr, _ := serve(t, w.transport(t, mtls.VolumeService))
	client := w.transport(t, mtls.ReplacementOrchestrator)

	// Another authority's certificate for a plausible identity, presented
	// by a client that trusts the real authority (so the refusal is the
	// server's).
	stranger := newWorld(t)
	fake, err := stranger.ca.Ensure("orchestrator", mtls.ServiceID(td, mtls.ReplacementOrchestrator))
	if err != nil {
		t.Fatal(err)
	}
	impostor, err := mtls.Load(td, mtls.Files{CA: w.ca.BundlePath(), Cert: fake.Cert, Key: fake.Key}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	// A client that skips verifying the server: only the server's checks
	// are under test.
	pool := func() *tls.Config {
		return &tls.Config{ServerName: "localhost", InsecureSkipVerify: true} //nolint:gosec // see above
	}
	tls12 := pool()
	tls12.MaxVersion = tls.VersionTLS12
	cases := []struct {
		name string
		opt  grpc.DialOption
	}{
		{"plaintext", grpc.WithTransportCredentials(insecure.NewCredentials())},
		{"no client certificate", grpc.WithTransportCredentials(credentials.NewTLS(pool()))},
		{"certificate of another CA", impostor.DialOption()},
		{"TLS 1.2", grpc.WithTransportCredentials(credentials.NewTLS(tls12))},
		{"server is not the expected service", client.DialOption(mtls.RegionAllocator)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := check(addr, tc.opt)
			if err == nil {
				t.Fatal("the call went through")
			}
			t.Logf("%s: %v", tc.name, err)
		})
	}
	if err := check(addr, client.DialOption(mtls.VolumeService)); err != nil {
		t.Fatalf("the right client is refused: %v", err)
	}
}

// A rotation is picked up on the next handshake, no restart; files that do
// not load keep the last good credentials.
func TestSourceReloadsRotatedFiles(t *testing.T) {
	w := newWorld(t)
	id, err := w.ca.Ensure("svc", mtls.ServiceID(td, mtls.VolumeService))
	if err != nil {
		t.Fatal(err)
	}
	src, err := mtls.NewSource(mtls.MustTD(t), mtls.Files{CA: w.ca.BundlePath(), Cert: id.Cert, Key: id.Key}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := src.GetX509SVID()
	serial := first.Certificates[0].SerialNumber

	// Garbage in place of the certificate: kept.
	if err := os.WriteFile(id.Cert, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if got, _ := src.GetX509SVID(); got.Certificates[0].SerialNumber.Cmp(serial) != 0 {
		t.Fatal("a broken file replaced the credentials")
	}
	// A new certificate: loaded.
	if err := w.ca.Issue(filepath.Dir(id.Cert), mtls.ServiceID(td, mtls.VolumeService)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		got, _ := src.GetX509SVID()
		if got.Certificates[0].SerialNumber.Cmp(serial) != 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rotated certificate was never loaded")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestLoadRefusesCredentialsOutsideTheTrustDomain(t *testing.T) {
	w := newWorld(t)
	id, err := w.ca.Ensure("x", "spiffe://elsewhere.example/volume-service")
	if err != nil {
		t.Fatal(err)
	}
	_, err = mtls.Load(td, mtls.Files{CA: w.ca.BundlePath(), Cert: id.Cert, Key: id.Key}, quiet)
	if err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("load: %v", err)
	}
	if _, err := mtls.Load(td, mtls.Files{CA: w.ca.BundlePath()}, quiet); err == nil {
		t.Fatal("loaded without a certificate")
	}
}
