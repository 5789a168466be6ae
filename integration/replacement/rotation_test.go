package replacement

import (
	"context"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
	"storagecp.dev/testsupport/stack"
)

// Every certificate is rotated while a replacement is in flight, twice:
// first re-issued by the same authority, then by a new one (its CA added to
// the bundle before any certificate it signs is handed out). No process
// restarts; each serves its new certificate to new connections; the
// replacement completes.
func TestCertificateRotationMidReplacement(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clones := []string{r.Clone(t, snap), r.Clone(t, snap)}
	for i, c := range clones {
		r.Construct(t, c, i)
	}
	pids := map[string]int{}
	for _, p := range r.Stack.Procs() {
		pids[p.Name] = p.Pid()
	}

	// Hold the replacement in flight: every region the agents are asked to
	// create fails (transiently) until the faults are cleared.
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	if _, err := faults.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 100000, Fail: true}); err != nil {
		t.Fatal(err)
	}
	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	harness.Eventually(t, 30*time.Second, "a replacement in flight", func() error {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 100})
		if err != nil {
			return err
		}
		if len(resp.Replacements) == 0 {
			return fmt.Errorf("no request yet")
		}
		return nil
	})

	ca := r.Stack.CA()
	identities := rotatable(t, r.Stack)
	inFlight := func(when string) {
		t.Helper()
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 100})
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range resp.Replacements {
			t.Logf("%s: %v request %s: %v%v", when, q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
			if rack.Terminal(q) {
				t.Fatalf("%s: request %s is already terminal: the rotation would not be mid-replacement", when, q.ReplacementId)
			}
		}
	}
	inFlight("before the rotation")

	// 1. Same authority, new certificates.
	for dir, id := range identities {
		if err := ca.Issue(dir, id, "localhost", "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	waitServing(t, r.Stack, ca, newestNotBefore(t, identities))

	// 2. A new authority: trusted first (both CAs in the bundle), then
	// issuing every certificate.
	next, err := pki.NewCA(filepath.Join(t.TempDir(), "next-ca"), mtls.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.WriteBundle(next); err != nil {
		t.Fatal(err)
	}
	// Every process reads the bundle before a peer presents a certificate
	// of the new CA: at most a reload check (a second) after its next
	// handshake. Make one to each now, and let the check pass.
	waitServing(t, r.Stack, ca, time.Time{})
	time.Sleep(1100 * time.Millisecond)
	for dir, id := range identities {
		if err := next.Issue(dir, id, "localhost", "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	waitServing(t, r.Stack, next, newestNotBefore(t, identities))

	inFlight("after the rotation")
	if _, err := faults.ClearAgentFaults(ctx, &allocatorv1.ClearAgentFaultsRequest{}); err != nil {
		t.Fatal(err)
	}
	for _, q := range r.WaitRequests(t, 90*time.Second) {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("%v request %s ended %v%v", q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
		}
	}
	for _, p := range r.Stack.Procs() {
		if exited, err := p.Exited(); exited || p.Pid() != pids[p.Name] {
			t.Errorf("%s restarted or exited (pid %d, was %d; %v)", p.Name, p.Pid(), pids[p.Name], err)
		}
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
}

// rotatable lists every identity of the stack: directory → SPIFFE ID.
func rotatable(t *testing.T, st *stack.Stack) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(st.CA().Dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() != pki.CertFile {
			return err
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		cert := parsePEM(t, raw)
		out[filepath.Dir(path)] = cert.URIs[0].String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(out) < len(st.Procs())+2 { // every process, the launcher, the harness
		t.Fatalf("%d identities under %s for %d processes", len(out), st.CA().Dir, len(st.Procs()))
	}
	return out
}

func newestNotBefore(t *testing.T, identities map[string]string) time.Time {
	t.Helper()
	var newest time.Time
	for dir := range identities {
		raw, err := os.ReadFile(filepath.Join(dir, pki.CertFile))
		if err != nil {
			t.Fatal(err)
		}
		if nb := parsePEM(t, raw).NotBefore; nb.After(newest) {
			newest = nb
		}
	}
	return newest
}

// waitServing polls every process over a fresh connection (the harness's
// identity, whose files were rotated too) until it answers health and
// presents a certificate signed by ca and issued no earlier than since.
func waitServing(t *testing.T, st *stack.Stack, ca *pki.CA, since time.Time) {
	t.Helper()
	for _, p := range st.Procs() {
		harness.Eventually(t, 20*time.Second, p.Name+" serves its rotated certificate", func() error {
			conn, err := grpc.NewClient(p.Addr, st.DialOption())
			if err != nil {
				return err
			}
			defer conn.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			var pr peer.Peer
			if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&pr)); err != nil {
				return err
			}
			info, ok := pr.AuthInfo.(credentials.TLSInfo)
			if !ok || len(info.State.PeerCertificates) == 0 {
				return fmt.Errorf("no TLS peer certificate")
			}
			leaf := info.State.PeerCertificates[0]
			if err := leaf.CheckSignatureFrom(ca.Cert); err != nil {
				return fmt.Errorf("server certificate not from the expected CA: %w", err)
			}
			if leaf.NotBefore.Before(since.Add(-time.Second)) {
				return fmt.Errorf("server certificate issued %s, before the rotation (%s)", leaf.NotBefore, since)
			}
			return nil
		})
	}
}

func parsePEM(t *testing.T, raw []byte) *x509.Certificate {
	t.Helper()
	certs, err := pki.ParseCertificates(raw)
	if err != nil || len(certs) == 0 {
		t.Fatalf("certificate: %v", err)
	}
	return certs[0]
}
