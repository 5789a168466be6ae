package stack

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"google.golang.org/grpc"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
)

// The stack's identities. Every process gets an X509-SVID from a local CA
// (platform/pki) under Config.PKIDir: the services by their names, the
// simulated agents as crucible-agent/sim, each sim-upstairs as
// upstairs/<process name>, and the launcher itself (health checks) as
// launcher. Operators and viewers get theirs from Identity.
const (
	// LauncherID is the path of the launcher's own identity.
	LauncherID = "launcher"
	// HarnessID is the identity a test harness dials with (TestHarness).
	HarnessID = mtls.Tests + "/harness"
	// OperatorID is the operator identity `make run` issues for storctl
	// and the demo.
	OperatorID = mtls.Operators + "/local"
)

// identityPath is the SPIFFE path of a process by its name.
func identityPath(proc string) string {
	switch {
	case proc == SimAgent:
		return mtls.CrucibleAgents + "/sim"
	case strings.HasPrefix(proc, SimUpstairs):
		return mtls.Upstairs + "/" + proc
	case strings.HasPrefix(proc, Orchestrator):
		// Every orchestrator of a deployment is the same principal: the
		// fence, not the identity, tells the leader from the standby.
		return mtls.ReplacementOrchestrator
	default:
		return proc
	}
}

// DefaultPolicy is the repository's authorization policy.
func DefaultPolicy() (string, error) {
	root, err := FindRepoRoot()
	if err != nil {
		return "", err
	}
	return filepath.Join(root, "deploy", "authz", "policy.json"), nil
}

// setupSecurity creates (or reuses) the PKI, the launcher's transport and
// the policy the processes read. It returns the arguments every process
// gets, by process name.
func (s *Stack) setupSecurity() error {
	if s.cfg.Insecure {
		s.transport = mtls.Insecure()
		return nil
	}
	dir := s.cfg.PKIDir
	if dir == "" {
		dir = filepath.Join(s.LogDir, "pki")
	}
	ca, err := pki.LoadOrCreateCA(dir, mtls.DefaultTrustDomain)
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	s.ca = ca
	policy := s.cfg.AuthzPolicy
	if policy == "" {
		if policy, err = DefaultPolicy(); err != nil {
			return err
		}
	}
	if s.cfg.TestHarness {
		if policy, err = withHarnessRule(policy, filepath.Join(dir, "policy-with-harness.json")); err != nil {
			return err
		}
	}
	s.policyPath = policy
	launcher, err := s.Identity(LauncherID)
	if err != nil {
		return err
	}
	s.transport, err = s.transportFor(launcher)
	if err != nil {
		return err
	}
	if s.cfg.TestHarness {
		id, err := s.Identity(HarnessID)
		if err != nil {
			return err
		}
		if s.harness, err = s.transportFor(id); err != nil {
			return err
		}
	}
	return nil
}

// securityArgs are a process's TLS and policy flags.
func (s *Stack) securityArgs(proc string) ([]string, error) {
	if s.cfg.Insecure {
		return []string{"--insecure"}, nil
	}
	id, err := s.ca.Ensure(proc, mtls.ServiceID(mtls.DefaultTrustDomain, identityPath(proc)), "localhost", "127.0.0.1")
	if err != nil {
		return nil, err
	}
	return []string{"--tls-ca", s.ca.BundlePath(), "--tls-cert", id.Cert, "--tls-key", id.Key, "--authz-policy", s.policyPath}, nil
}

// Identity returns the files of an identity spiffe://storagecp.local/<path>
// (e.g. "operator/alice", "viewer/bob"), issuing it when missing. Nil CA
// (an insecure stack) is an error.
func (s *Stack) Identity(path string) (pki.Identity, error) {
	if s.ca == nil {
		return pki.Identity{}, fmt.Errorf("stack: no PKI (insecure stack)")
	}
	return s.ca.Ensure(path, mtls.ServiceID(mtls.DefaultTrustDomain, path), "localhost", "127.0.0.1")
}

// CA is the stack's certificate authority (nil for an insecure stack).
func (s *Stack) CA() *pki.CA { return s.ca }

// Secure reports whether the processes speak mutual TLS.
func (s *Stack) Secure() bool { return !s.cfg.Insecure }

// PolicyPath is the authorization policy the processes read.
func (s *Stack) PolicyPath() string { return s.policyPath }

// Transport loads an identity's files as a client transport.
func (s *Stack) Transport(id pki.Identity) (*mtls.Transport, error) {
	return s.transportFor(id)
}

func (s *Stack) transportFor(id pki.Identity) (*mtls.Transport, error) {
	return mtls.Load(mtls.DefaultTrustDomain, mtls.Files{CA: s.ca.BundlePath(), Cert: id.Cert, Key: id.Key}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// DialOption is the credentials a test harness dials the processes with:
// the harness identity (Config.TestHarness), else the launcher's.
func (s *Stack) DialOption() grpc.DialOption {
	if s.harness != nil {
		return s.harness.DialOption()
	}
	return s.transport.DialOption()
}

// withHarnessRule writes base's policy plus one rule letting the harness
// identity call every method, so that a test can play every role (create
// volumes as the orchestrator, inject faults, read keys) while the
// processes between themselves still run under the policy as deployed.
func withHarnessRule(base, out string) (string, error) {
	raw, err := os.ReadFile(base)
	if err != nil {
		return "", fmt.Errorf("authorization policy: %w", err)
	}
	var policy map[string]any
	if err := json.Unmarshal(raw, &policy); err != nil {
		return "", fmt.Errorf("authorization policy %s: %w", base, err)
	}
	rules, _ := policy["allow_rules"].([]any)
	policy["allow_rules"] = append(rules, map[string]any{
		"name":    "test_harness_calls_anything",
		"source":  map[string]any{"principals": []string{mtls.ServiceID(mtls.DefaultTrustDomain, HarnessID)}},
		"request": map[string]any{"paths": []string{"*"}},
	})
	b, err := json.MarshalIndent(policy, "", "  ")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
		return "", err
	}
	return out, nil
}
