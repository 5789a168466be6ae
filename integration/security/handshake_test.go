package security

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"storagecp.dev/integration/harness"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
	"storagecp.dev/testsupport/stack"
)

// Every serving process refuses, at the transport, a client that speaks
// plaintext, presents no certificate, presents one from another authority
// or from another trust domain, or offers only TLS 1.2. A client with the
// same TLS settings and a certificate of the deployment is served
// (the control: the refusals are for the reason named, not a bad setup).
func TestHandshakeRefusals(t *testing.T) {
	st := harness.Start(t, stack.Config{SimUpstairs: 1})
	wantProcesses(t, st)

	bundle, err := os.ReadFile(st.CA().BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		t.Fatal("bundle holds no certificate")
	}
	keyPair := func(id pki.Identity, err error) tls.Certificate {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.LoadX509KeyPair(id.Cert, id.Key)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	viewer := keyPair(st.Identity("viewer/handshake"))

	// Another authority, issuing the very ID the orchestrator has.
	otherCA, err := pki.NewCA(filepath.Join(t.TempDir(), "other-ca"), mtls.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	impostor := keyPair(otherCA.Ensure("orchestrator", mtls.ServiceID(mtls.DefaultTrustDomain, mtls.ReplacementOrchestrator), "localhost", "127.0.0.1"))
	// The deployment's own authority, but an ID of another trust domain.
	foreignDir := filepath.Join(t.TempDir(), "foreign")
	if err := st.CA().Issue(foreignDir, "spiffe://evil.example/replacement-orchestrator", "localhost", "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	foreign := keyPair(pki.Identity{Cert: filepath.Join(foreignDir, pki.CertFile), Key: filepath.Join(foreignDir, pki.KeyFile)}, nil)

	base := func() *tls.Config {
		return &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS12}
	}
	withCert := func(c tls.Certificate) *tls.Config {
		cfg := base()
		cfg.Certificates = []tls.Certificate{c}
		return cfg
	}
	tls12 := withCert(viewer)
	tls12.MaxVersion = tls.VersionTLS12

	cases := []struct {
		name string
		cfg  *tls.Config // nil: plaintext
		// alert is what a raw TLS client reads from the server ("" for
		// plaintext).
		alert string
	}{
		{"plaintext", nil, ""},
		{"no client certificate", base(), "certificate required"},
		{"certificate from another CA", withCert(impostor), "bad certificate"},
		{"certificate for another trust domain", withCert(foreign), "bad certificate"},
		{"TLS 1.2 only", tls12, "protocol version not supported"},
	}
	for _, proc := range processes {
		addr := st.Addr(proc)
		t.Run(proc, func(t *testing.T) {
			// Control: the same settings with a certificate of the
			// deployment reach the health service.
			if err := healthCheck(addr, grpc.WithTransportCredentials(credentials.NewTLS(withCert(viewer)))); err != nil {
				t.Fatalf("control (viewer certificate, TLS 1.3): %v", err)
			}
			if err := rawServed(addr, withCert(viewer)); err != nil {
				t.Fatalf("control (viewer certificate, raw TLS 1.3): %v", err)
			}
			for _, c := range cases {
				creds := insecure.NewCredentials()
				if c.cfg != nil {
					creds = credentials.NewTLS(c.cfg)
				}
				err := healthCheck(addr, grpc.WithTransportCredentials(creds))
				if status.Code(err) != codes.Unavailable {
					t.Errorf("%s: health check got %v, want Unavailable", c.name, err)
				}
				t.Logf("%s: gRPC: %v", c.name, err)
				if c.cfg == nil {
					continue
				}
				rawErr := rawHandshake(addr, c.cfg)
				if rawErr == nil || !strings.Contains(rawErr.Error(), c.alert) {
					t.Errorf("%s: raw TLS got %v, want the alert %q", c.name, rawErr, c.alert)
				}
				t.Logf("%s: raw TLS: %v", c.name, rawErr)
			}
		})
	}
}

// healthCheck asks for the overall health status.
func healthCheck(addr string, creds grpc.DialOption) error {
	conn, err := grpc.NewClient(addr, creds)
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.Status != healthpb.HealthCheckResponse_SERVING {
		return errors.New(resp.Status.String())
	}
	return nil
}

// rawHandshake runs a TLS handshake and reads once: in TLS 1.3 the server
// judges the client's certificate after the client considers the handshake
// done, so its alert arrives on the first read. A server that accepted the
// client sends its HTTP/2 SETTINGS (or waits for the client's preface):
// either is reported as an acceptance, not as nil.
func rawHandshake(addr string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	switch {
	case err == nil:
		return errors.New("accepted: the server sent data")
	case errors.As(err, &ne) && ne.Timeout():
		return errors.New("accepted: the server waited for the client's first bytes")
	}
	return err
}

// rawServed runs a TLS handshake, sends the HTTP/2 client preface and an
// empty SETTINGS frame, and expects the server's first frame back: the
// raw client of rawHandshake is otherwise able to get through.
func rawServed(addr string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	d := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(d, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
		return err
	}
	frame := make([]byte, 9)
	if _, err := io.ReadFull(conn, frame); err != nil {
		return err
	}
	if frame[3] != 4 {
		return fmt.Errorf("first frame from the server is of type %d, not SETTINGS", frame[3])
	}
	return nil
}
