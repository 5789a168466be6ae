package server

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"

	"storagecp.dev/platform/authz"
	"storagecp.dev/platform/mtls"
)

// securityFlags are the flags every server shares for its identity and
// its authorization policy.
type securityFlags struct {
	files       mtls.Files
	trustDomain string
	insecure    bool
	policy      string
}

func registerSecurityFlags(fs *flag.FlagSet) *securityFlags {
	f := &securityFlags{}
	fs.StringVar(&f.files.CA, "tls-ca", "", "trust bundle: PEM CA certificates")
	fs.StringVar(&f.files.Cert, "tls-cert", "", "this process's X509-SVID, PEM chain leaf first")
	fs.StringVar(&f.files.Key, "tls-key", "", "the SVID's private key")
	fs.StringVar(&f.trustDomain, "trust-domain", mtls.DefaultTrustDomain, "SPIFFE trust domain of the deployment")
	fs.StringVar(&f.policy, "authz-policy", "", "authorization policy file, re-read when it changes (deploy/authz/policy.json)")
	fs.BoolVar(&f.insecure, "insecure", false, "plaintext gRPC, no caller identities and no authorization: any process that reaches the port may call anything (a lab bench only)")
	return f
}

// load builds the transport and the guard: mutual TLS and a policy, or,
// only when asked with --insecure, plaintext and allow-all.
func (f *securityFlags) load(logger *slog.Logger) (*mtls.Transport, *authz.Guard, error) {
	if f.insecure {
		logger.Warn("INSECURE: serving plaintext gRPC without client authentication or authorization; any process that reaches this port may call every RPC")
		g, err := authz.New("", logger)
		return mtls.Insecure(), g, err
	}
	if f.files.CA == "" || f.files.Cert == "" || f.files.Key == "" {
		return nil, nil, errors.New("no TLS credentials: set --tls-ca, --tls-cert and --tls-key (or run with --insecure on a lab bench)")
	}
	if f.policy == "" {
		return nil, nil, errors.New("no authorization policy: set --authz-policy (deploy/authz/policy.json)")
	}
	t, err := mtls.Load(f.trustDomain, f.files, logger)
	if err != nil {
		return nil, nil, fmt.Errorf("TLS: %w", err)
	}
	g, err := authz.New(f.policy, logger)
	if err != nil {
		return nil, nil, err
	}
	return t, g, nil
}

// isLoopback reports whether a listen address binds loopback only. An
// empty host (":9090") binds every interface.
func isLoopback(addr string) (bool, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false, fmt.Errorf("metrics address %q: %w", addr, err)
	}
	if host == "localhost" {
		return true, nil
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback(), nil
}
