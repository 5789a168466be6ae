// Package mtls is how every storagecp process proves who it is and learns
// who called it: mutual TLS 1.3 with X509-SVIDs, certificates whose URI SAN
// is a SPIFFE ID (spiffe://storagecp.local/replacement-orchestrator,
// spiffe://storagecp.local/operator/alice). go-spiffe verifies the chain
// against the trust bundle and parses the ID; nothing here reads SANs by
// hand.
//
// Credentials are files (a certificate chain, its key, and the trust
// bundle), so any issuer works: cert-manager, SPIRE through spiffe-helper,
// or platform/pki for `make run`. They are re-read when they change, on the
// next handshake after the change, so a rotation needs no restart:
// connections already open keep the credentials they were made with, new
// ones use the new files. A rotation that changes the authority adds the
// new CA to the bundle first, then re-issues the certificates.
//
// Plaintext exists only as an explicit choice (Insecure), for a lab bench;
// the server logs a warning when it starts that way.
package mtls

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
)

// DefaultTrustDomain is the trust domain of a storagecp deployment unless
// configured otherwise.
const DefaultTrustDomain = "storagecp.local"

// Anonymous is the caller identity reported for a plaintext (--insecure)
// connection, which proves nothing.
const Anonymous = "anonymous"

// reloadCheck bounds how often the files are stat'ed: at most once per
// interval, on a handshake.
const reloadCheck = time.Second

// Files names a process's credentials.
type Files struct {
	// CA is the trust bundle: one or more PEM CA certificates.
	CA string
	// Cert is the PEM certificate chain, leaf first; Key its private key.
	Cert string
	Key  string
}

// Transport is a process's side of every connection: its credentials for
// serving and for dialing. The zero value is not usable; use Load or
// Insecure.
type Transport struct {
	td     spiffeid.TrustDomain
	source *Source // nil: plaintext
}

// Insecure is a plaintext transport: no identity, no encryption.
func Insecure() *Transport { return &Transport{} }

// Load reads files and returns a transport that serves and dials with them.
func Load(trustDomain string, files Files, logger *slog.Logger) (*Transport, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", trustDomain, err)
	}
	src, err := NewSource(td, files, logger)
	if err != nil {
		return nil, err
	}
	return &Transport{td: td, source: src}, nil
}

// Secure reports whether the transport uses TLS.
func (t *Transport) Secure() bool { return t.source != nil }

// TrustDomain is the deployment's trust domain.
func (t *Transport) TrustDomain() spiffeid.TrustDomain { return t.td }

// ID is this process's own SPIFFE ID ("" for plaintext).
func (t *Transport) ID() string {
	if t.source == nil {
		return ""
	}
	svid, err := t.source.GetX509SVID()
	if err != nil {
		return ""
	}
	return svid.ID.String()
}

// ServerTLS is the TLS configuration of a server: TLS 1.3, a client
// certificate required, and any member of the trust domain accepted at the
// handshake (which of them may call what is the authorization policy's
// business). Nil for plaintext.
func (t *Transport) ServerTLS() *tls.Config {
	if t.source == nil {
		return nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	tlsconfig.HookMTLSServerConfig(cfg, t.source, t.source, tlsconfig.AuthorizeMemberOf(t.td))
	cfg.MinVersion = tls.VersionTLS13
	return cfg
}

// ServerOption is the grpc.ServerOption carrying ServerTLS.
func (t *Transport) ServerOption() grpc.ServerOption {
	if t.source == nil {
		return grpc.Creds(insecure.NewCredentials())
	}
	return grpc.Creds(credentials.NewTLS(t.ServerTLS()))
}

// DialOption is the credentials for dialing a peer. With expect empty, any
// member of the trust domain is accepted as the server; otherwise only IDs
// under one of the given paths ("volume-service" accepts
// spiffe://<td>/volume-service, "upstairs" any spiffe://<td>/upstairs/…),
// so that a process cannot be talked into handing what it knows (VCRs
// carry keys) to a peer that merely holds some certificate of the
// deployment.
func (t *Transport) DialOption(expect ...string) grpc.DialOption {
	if t.source == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials())
	}
	authorizer := tlsconfig.AuthorizeMemberOf(t.td)
	if len(expect) > 0 {
		matchers := make([]spiffeid.Matcher, 0, len(expect))
		for _, path := range expect {
			id, err := spiffeid.FromPath(t.td, "/"+path)
			if err != nil {
				// A programming error (a bad service name): refuse every
				// server rather than accept any.
				return grpc.WithTransportCredentials(refuse{err})
			}
			matchers = append(matchers, spiffeid.MatchIDPrefix(id))
		}
		authorizer = tlsconfig.AdaptMatcher(func(actual spiffeid.ID) error {
			for _, m := range matchers {
				if m(actual) == nil {
					return nil
				}
			}
			return fmt.Errorf("server %s is not one of %v", actual, expect)
		})
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS13}
	tlsconfig.HookMTLSClientConfig(cfg, t.source, t.source, authorizer)
	cfg.MinVersion = tls.VersionTLS13
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg))
}

// ServiceID is the SPIFFE ID a storagecp service presents, by its name
// ("volume-service" gives spiffe://<trust domain>/volume-service).
func ServiceID(trustDomain, name string) string {
	return "spiffe://" + trustDomain + "/" + name
}

// Caller returns the verified SPIFFE ID of the peer of a server call, or
// Anonymous for a plaintext connection. ok is false when a TLS peer
// presented no usable SVID (which the handshake already refuses).
func Caller(ctx context.Context) (id string, ok bool) {
	p, found := peer.FromContext(ctx)
	if !found {
		return Anonymous, true
	}
	return PeerID(p)
}

// PeerID returns the verified SPIFFE ID of a connection's peer: the caller
// on a server, the server on a client (grpc.Peer call option). Anonymous
// for plaintext; ok is false when a TLS peer presented no usable SVID.
func PeerID(p *peer.Peer) (id string, ok bool) {
	if p == nil || p.AuthInfo == nil {
		return Anonymous, true
	}
	info, isTLS := p.AuthInfo.(credentials.TLSInfo)
	if !isTLS {
		return Anonymous, true
	}
	if len(info.State.PeerCertificates) == 0 {
		return "", false
	}
	sid, err := x509svid.IDFromCert(info.State.PeerCertificates[0])
	if err != nil {
		return "", false
	}
	return sid.String(), true
}

// Source is an x509svid.Source and x509bundle.Source backed by files, which
// it re-reads when their size or modification time changes. A change that
// does not parse (a half-written rotation) keeps the last good credentials
// and is logged; the next change is tried again.
type Source struct {
	td     spiffeid.TrustDomain
	files  Files
	logger *slog.Logger

	mu      sync.Mutex
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
	stamps  [3]stamp
	checked time.Time
}

type stamp struct {
	size int64
	mod  time.Time
}

// NewSource loads files once (failing if they are missing or invalid) and
// keeps them fresh afterwards.
func NewSource(td spiffeid.TrustDomain, files Files, logger *slog.Logger) (*Source, error) {
	if files.CA == "" || files.Cert == "" || files.Key == "" {
		return nil, errors.New("TLS needs a CA bundle, a certificate and a key (or --insecure)")
	}
	s := &Source{td: td, files: files, logger: logger}
	stamps, err := s.stat()
	if err != nil {
		return nil, err
	}
	if err := s.load(stamps); err != nil {
		return nil, err
	}
	s.checked = time.Now()
	return s, nil
}

// GetX509SVID implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshLocked()
	return s.svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.refreshLocked()
	if td != s.td {
		return nil, fmt.Errorf("no trust bundle for trust domain %q (this deployment trusts %q)", td, s.td)
	}
	return s.bundle, nil
}

func (s *Source) refreshLocked() {
	if time.Since(s.checked) < reloadCheck {
		return
	}
	s.checked = time.Now()
	stamps, err := s.stat()
	if err != nil {
		s.logger.Warn("TLS credentials unreadable; keeping the loaded ones", "err", err)
		return
	}
	if stamps == s.stamps {
		return
	}
	if err := s.load(stamps); err != nil {
		s.logger.Warn("TLS credentials changed but do not load; keeping the loaded ones", "err", err)
		return
	}
	s.logger.Info("TLS credentials reloaded", "id", s.svid.ID.String(), "not_after", s.svid.Certificates[0].NotAfter)
}

func (s *Source) load(stamps [3]stamp) error {
	svid, err := x509svid.Load(s.files.Cert, s.files.Key)
	if err != nil {
		return fmt.Errorf("certificate %s / key %s: %w", s.files.Cert, s.files.Key, err)
	}
	bundle, err := x509bundle.Load(s.td, s.files.CA)
	if err != nil {
		return fmt.Errorf("trust bundle %s: %w", s.files.CA, err)
	}
	if svid.ID.TrustDomain() != s.td {
		return fmt.Errorf("certificate %s is for %s, outside trust domain %q", s.files.Cert, svid.ID, s.td)
	}
	s.svid, s.bundle, s.stamps = svid, bundle, stamps
	return nil
}

func (s *Source) stat() ([3]stamp, error) {
	var out [3]stamp
	for i, path := range []string{s.files.CA, s.files.Cert, s.files.Key} {
		fi, err := os.Stat(path)
		if err != nil {
			return out, err
		}
		out[i] = stamp{size: fi.Size(), mod: fi.ModTime()}
	}
	return out, nil
}

// refuse is transport credentials that fail every handshake.
type refuse struct{ err error }

func (r refuse) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, r.err
}
func (r refuse) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, r.err
}
func (r refuse) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}
func (r refuse) Clone() credentials.TransportCredentials { return r }
func (r refuse) OverrideServerName(string) error         { return nil }
