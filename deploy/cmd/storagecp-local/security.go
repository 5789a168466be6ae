package main

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
	"storagecp.dev/storctl/creds"
	"storagecp.dev/storctl/demo"
	"storagecp.dev/testsupport/stack"
)

const insecureBanner = `
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!
!! INSECURE: every process serves plaintext gRPC, with no identities and  !!
!! no authorization. Anything that reaches these ports may call every RPC !!
!! (expunge disks, abandon sagas, read volumes' keys). A lab bench only.  !!
!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!`

// security is what the launcher knows of the deployment's credentials:
// the identities it issued, and how the commands it prints connect.
type security struct {
	insecure         bool
	pkiDir, bundle   string
	policy           string
	operator, viewer pki.Identity
	// transport is the operator's, which the demo runs as.
	transport *mtls.Transport
	// storctlFinds: storctl run from the working directory finds the
	// operator's files by itself (this PKI is the nearest .run/pki).
	storctlFinds bool
	// freePorts: storctl needs the addresses too.
	freePorts bool
}

// newSecurity issues the operator and viewer identities (kept, like every
// certificate of the PKI, until missing or near expiry).
func newSecurity(st *stack.Stack, freePorts bool) (*security, error) {
	s := &security{freePorts: freePorts}
	if !st.Secure() {
		s.insecure, s.transport = true, mtls.Insecure()
		return s, nil
	}
	var err error
	if s.operator, err = st.Identity(stack.OperatorID); err != nil {
		return nil, fmt.Errorf("operator identity: %w", err)
	}
	if s.viewer, err = st.Identity(ViewerID); err != nil {
		return nil, fmt.Errorf("viewer identity: %w", err)
	}
	if s.transport, err = st.Transport(s.operator); err != nil {
		return nil, fmt.Errorf("operator identity: %w", err)
	}
	s.pkiDir, s.bundle, s.policy = st.CA().Dir, st.CA().BundlePath(), st.PolicyPath()
	if wd, err := os.Getwd(); err == nil && stack.OperatorID == creds.Operator {
		if found, ok := creds.FindRunPKI(wd); ok {
			s.storctlFinds = sameDir(found, s.pkiDir)
		}
	}
	return s, nil
}

func sameDir(a, b string) bool {
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// print says how the processes authenticate, where the PKI is and which
// identities it holds.
func (s *security) print() {
	if s.insecure {
		fmt.Println("\nSecurity: NONE (--insecure): plaintext, no identities, no authorization")
		fmt.Println(insecureBanner)
		return
	}
	fmt.Printf("\nSecurity: mutual TLS 1.3 with SPIFFE X509-SVIDs, trust domain %s\n", mtls.DefaultTrustDomain)
	fmt.Printf("  %-26s %s (a local CA; kept across runs, certificates re-issued when missing or near expiry)\n", "PKI", demo.ShortPath(s.pkiDir))
	fmt.Printf("  %-26s %s\n", "trust bundle", demo.ShortPath(s.bundle))
	fmt.Printf("  %-26s %s (re-read when it changes)\n", "authorization policy", demo.ShortPath(s.policy))
	fmt.Printf("  %-26s %s, %s   may run the lifecycle, replacements, hardware changes, and read\n", stack.OperatorID, demo.ShortPath(s.operator.Cert), pki.KeyFile)
	fmt.Printf("  %-26s %s, %s   may only read\n", ViewerID, demo.ShortPath(s.viewer.Cert), pki.KeyFile)
	// Every other identity the PKI holds, by directory, and its SPIFFE
	// path where that differs (sim-agent is crucible-agent/sim).
	var others []string
	_ = filepath.WalkDir(s.pkiDir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != pki.CertFile {
			return nil
		}
		name, err := filepath.Rel(s.pkiDir, filepath.Dir(path))
		if err != nil || name == stack.OperatorID || name == ViewerID {
			return nil
		}
		name = filepath.ToSlash(name)
		if id := spiffePath(path); id != "" && id != name {
			name += " (" + id + ")"
		}
		others = append(others, name)
		return nil
	})
	sort.Strings(others)
	fmt.Printf("  %-26s %s\n", "other identities", strings.Join(others, ", "))
	fmt.Printf("  %-26s spiffe://%s/<path>, files in %s/<name>/\n", "", mtls.DefaultTrustDomain, demo.ShortPath(s.pkiDir))
}

// spiffePath is the path of the SPIFFE ID in a certificate file ("" if
// it cannot be read).
func spiffePath(certFile string) string {
	raw, err := os.ReadFile(certFile)
	if err != nil {
		return ""
	}
	b, _ := pem.Decode(raw)
	if b == nil {
		return ""
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil || len(cert.URIs) != 1 {
		return ""
	}
	return strings.TrimPrefix(cert.URIs[0].Path, "/")
}

// who is the identity the printed commands and the demo use.
func (s *security) who() string {
	if s.insecure {
		return "nobody: plaintext"
	}
	return stack.OperatorID
}

// grpcurlFlags are grpcurl's connection flags.
func (s *security) grpcurlFlags() string {
	if s.insecure {
		return "-plaintext"
	}
	return fmt.Sprintf("-cacert %s -cert %s -key %s", demo.ShortPath(s.bundle), demo.ShortPath(s.operator.Cert), demo.ShortPath(s.operator.Key))
}

// hint is the credentials of the demo's closing hints.
func (s *security) hint() demo.HintTLS {
	if s.insecure {
		return demo.HintTLS{Insecure: true}
	}
	return demo.HintTLS{CA: demo.ShortPath(s.bundle), Cert: demo.ShortPath(s.operator.Cert), Key: demo.ShortPath(s.operator.Key), StorctlFinds: s.storctlFinds}
}

// printStorctl prints storctl commands that work as printed: as the
// operator (storctl's default when it finds this PKI, else through the
// environment), and one as the viewer.
func (s *security) printStorctl(st *stack.Stack, storctl string) {
	var env []string
	if s.freePorts {
		for _, e := range []struct{ name, proc string }{
			{"STORAGECP_VOLUME_ADDR", stack.Volume}, {"STORAGECP_ALLOCATOR_ADDR", stack.Allocator},
			{"STORAGECP_NOTIFIER_ADDR", stack.Notifier}, {"STORAGECP_ORCHESTRATOR_ADDR", stack.Orchestrator},
		} {
			env = append(env, e.name+"="+st.Addr(e.proc))
		}
	}
	switch {
	case s.insecure:
		fmt.Println("\nExplore with storctl (plaintext):")
		storctl += " --insecure"
	case s.storctlFinds:
		fmt.Printf("\nExplore with storctl (as %s, its default here: --ca %s --cert %s --key %s):\n",
			stack.OperatorID, demo.ShortPath(s.bundle), demo.ShortPath(s.operator.Cert), demo.ShortPath(s.operator.Key))
	default:
		fmt.Printf("\nExplore with storctl (as %s):\n", stack.OperatorID)
		env = append(env, "STORCTL_CA="+demo.ShortPath(s.bundle), "STORCTL_CERT="+demo.ShortPath(s.operator.Cert), "STORCTL_KEY="+demo.ShortPath(s.operator.Key))
	}
	if len(env) > 0 {
		fmt.Printf("  export %s\n", strings.Join(env, " "))
	}
	fmt.Printf("  %s health\n", storctl)
	fmt.Printf("  %s disks list\n", storctl)
	fmt.Printf("  %s replacements list\n", storctl)
	fmt.Printf("  %s validate\n", storctl)
	if !s.insecure {
		fmt.Printf("  %s --cert %s --key %s sagas list    # as %s: reads only\n", storctl, demo.ShortPath(s.viewer.Cert), demo.ShortPath(s.viewer.Key), ViewerID)
	}
}
