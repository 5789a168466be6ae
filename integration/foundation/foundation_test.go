// Package foundation checks the plumbing every service shares, over real
// processes: health, reflection, trace propagation, database outages and
// bad start-up input.
package foundation

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pgcluster"
	"storagecp.dev/platform/pki"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// Every process answers health SERVING and lists its API through
// reflection, so `grpcurl -plaintext ADDR list` works on each.
func TestEveryServiceServesHealthAndReflection(t *testing.T) {
	st := harness.Start(t, stack.Config{})
	want := map[string][]string{
		stack.Volume:       {"storage.volume.v1.VolumeService"},
		stack.Allocator:    {"storage.allocator.v1.RegionAllocatorService", "storage.allocator.v1.AgentFaultService", "storage.allocator.v1.AgentDataService"},
		stack.Notifier:     {"storage.notifier.v1.UpstairsNotifierService"},
		stack.Orchestrator: {"storage.orchestrator.v1.LifecycleService", "storage.orchestrator.v1.ReplacementService", "storage.orchestrator.v1.AdminService"},
		"sim-upstairs-0":   {"storage.upstairs.v1.UpstairsService", "storage.upstairs.v1.UpstairsFaultService"},
		"sim-upstairs-1":   {"storage.upstairs.v1.UpstairsService"},
		stack.SimAgent:     {"storage.agent.v1.AgentService", "storage.allocator.v1.AgentDataService"},
	}
	ctx := context.Background()
	for name, services := range want {
		conn := harness.Dial(t, st, st.Addr(name))
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s: health %v, %v", name, resp.GetStatus(), err)
		}
		listed := listServices(t, conn)
		for _, s := range append(services, "grpc.health.v1.Health") {
			if !slices.Contains(listed, s) {
				t.Errorf("%s: reflection lists %v, missing %s", name, listed, s)
			}
		}
	}
}

func listServices(t *testing.T, conn *grpc.ClientConn) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.Name)
	}
	return names
}

// A client's W3C trace context reaches the server: each service's server
// span, exported over OTLP to a receiver in this test, is a child of the
// span the client put on the wire.
func TestTraceContextReachesServerSpan(t *testing.T) {
	recv := harness.StartOTLPReceiver(t)
	st := harness.Start(t, stack.Config{SimUpstairs: 1, Env: recv.Env()})
	traceID, parentID := randomHex(16), randomHex(8)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", fmt.Sprintf("00-%s-%s-01", traceID, parentID))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	id := "00000000-0000-0000-0000-000000000001"
	// The answers do not matter (most are NotFound); the server spans do.
	_, _ = volumev1.NewVolumeServiceClient(harness.Dial(t, st, st.Addr(stack.Volume))).GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: id})
	_, _ = allocatorv1.NewRegionAllocatorServiceClient(harness.Dial(t, st, st.Addr(stack.Allocator))).GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: id})
	_, _ = notifierv1.NewUpstairsNotifierServiceClient(harness.Dial(t, st, st.Addr(stack.Notifier))).ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{})
	_, _ = orchestratorv1.NewAdminServiceClient(harness.Dial(t, st, st.Addr(stack.Orchestrator))).ListSagas(ctx, &orchestratorv1.ListSagasRequest{})
	_, _ = upstairsv1.NewUpstairsServiceClient(harness.Dial(t, st, st.Addr("sim-upstairs-0"))).ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})

	want := []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator, stack.SimUpstairs}
	harness.Eventually(t, 15*time.Second, "server spans parented by the client span", func() error {
		got := map[string]bool{}
		for _, s := range recv.Spans() {
			if s.Server && s.TraceID == traceID && s.ParentID == parentID {
				got[s.Service] = true
			}
		}
		for _, svc := range want {
			if !got[svc] {
				return fmt.Errorf("no server span from %s yet (have %v)", svc, got)
			}
		}
		return nil
	})
}

// The allocator's calls to the Crucible agents are part of its caller's
// trace: a probe through the allocator shows the agent's server span in
// the same trace, under the allocator's client span.
func TestTraceReachesTheAgents(t *testing.T) {
	recv := harness.StartOTLPReceiver(t)
	st := harness.Start(t, stack.Config{Env: recv.Env()})
	traceID, parentID := randomHex(16), randomHex(8)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "traceparent", fmt.Sprintf("00-%s-%s-01", traceID, parentID))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := allocatorv1.NewRegionAllocatorServiceClient(harness.Dial(t, st, st.Addr(stack.Allocator))).ProbeTargets(ctx,
		&allocatorv1.ProbeTargetsRequest{Addresses: []string{"[fd00:1122:3344:101::1]:19000"}}); err != nil {
		t.Fatalf("ProbeTargets: %v", err)
	}
	harness.Eventually(t, 15*time.Second, "the agent's server span in the caller's trace", func() error {
		clientSpans := map[string]bool{}
		for _, s := range recv.Spans() {
			if s.Service == stack.Allocator && !s.Server && s.TraceID == traceID {
				clientSpans[s.SpanID] = true
			}
		}
		for _, s := range recv.Spans() {
			if s.Service == stack.SimAgent && s.Server && s.TraceID == traceID && clientSpans[s.ParentID] {
				return nil
			}
		}
		return fmt.Errorf("no sim-agent server span under an allocator client span in trace %s yet", traceID)
	})
}

// Stopping PostgreSQL under a running stack turns every database-backed
// service NOT_SERVING; starting it again turns them SERVING — the same
// processes, not restarted.
func TestHealthFollowsTheDatabase(t *testing.T) {
	st := harness.Start(t, stack.Config{SimUpstairs: 1})
	dbServices := []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator}
	pids := map[string]int{}
	for _, s := range dbServices {
		pids[s] = st.Proc(s).Pid()
	}
	ctx := context.Background()
	waitAll := func(want healthpb.HealthCheckResponse_ServingStatus) {
		harness.Eventually(t, 20*time.Second, "every service "+want.String(), func() error {
			for _, s := range dbServices {
				got, err := st.Proc(s).Health(ctx)
				if err != nil || got != want {
					return fmt.Errorf("%s is %v (%v)", s, got, err)
				}
			}
			return nil
		})
	}
	if err := st.Cluster.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	waitAll(healthpb.HealthCheckResponse_NOT_SERVING)
	// sim-upstairs has no database and keeps serving.
	if got, err := st.Proc("sim-upstairs-0").Health(ctx); err != nil || got != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("sim-upstairs-0: %v %v", got, err)
	}
	if err := st.Cluster.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitAll(healthpb.HealthCheckResponse_SERVING)
	for _, s := range dbServices {
		if got := st.Proc(s).Pid(); got != pids[s] {
			t.Errorf("%s was restarted (pid %d → %d)", s, pids[s], got)
		}
	}
}

// Bad start-up input exits non-zero with one clear line and no panic.
func TestBadStartupInput(t *testing.T) {
	bin := filepath.Join(harness.BinDir(t), stack.Volume)
	freePort, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.NewCA(filepath.Join(t.TempDir(), "pki"), mtls.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.Ensure(stack.Volume, mtls.ServiceID(mtls.DefaultTrustDomain, mtls.VolumeService))
	if err != nil {
		t.Fatal(err)
	}
	policy, err := stack.DefaultPolicy()
	if err != nil {
		t.Fatal(err)
	}
	tlsArgs := []string{"--tls-ca", ca.BundlePath(), "--tls-cert", id.Cert, "--tls-key", id.Key, "--authz-policy", policy}
	secure := func(args ...string) []string { return append(append([]string(nil), tlsArgs...), args...) }
	cases := []struct {
		name     string
		args     []string
		wantCode int
		wantText string
	}{
		{"malformed DSN", secure("--listen", "127.0.0.1:0", "--db", "postgres://%zz"), 2, "invalid database DSN"},
		{"unreachable database", secure("--listen", "127.0.0.1:0", "--db-wait", "500ms", "--db", fmt.Sprintf("postgres://postgres@127.0.0.1:%d/x?sslmode=disable&connect_timeout=1", freePort)), 1, "unreachable"},
		{"no database", secure("--listen", "127.0.0.1:0", "--db", ""), 2, "no database"},
		{"unknown flag", []string{"--no-such-flag"}, 2, "flag provided but not defined"},
		// Secure by default: no credentials is no start, not plaintext.
		{"no TLS credentials", []string{"--listen", "127.0.0.1:0", "--db", "postgres://x@127.0.0.1/x"}, 2, "no TLS credentials"},
		{"missing certificate file", []string{"--tls-ca", ca.BundlePath(), "--tls-cert", id.Cert + ".missing", "--tls-key", id.Key, "--authz-policy", policy, "--db", "postgres://x@127.0.0.1/x"}, 2, "no such file"},
		{"no authorization policy", []string{"--tls-ca", ca.BundlePath(), "--tls-cert", id.Cert, "--tls-key", id.Key, "--db", "postgres://x@127.0.0.1/x"}, 2, "no authorization policy"},
		{"invalid authorization policy", []string{"--tls-ca", ca.BundlePath(), "--tls-cert", id.Cert, "--tls-key", id.Key, "--authz-policy", id.Cert, "--db", "postgres://x@127.0.0.1/x"}, 2, "authorization policy"},
		{"certificate outside the trust domain", secure("--trust-domain", "elsewhere.example", "--db", "postgres://x@127.0.0.1/x"), 2, "trust"},
		// Metrics and profiles off loopback only over TLS.
		{"plaintext metrics off loopback", []string{"--insecure", "--metrics-addr", "0.0.0.0:0", "--db", "postgres://x@127.0.0.1/x"}, 1, "needs TLS"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tc.args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin"}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			err := cmd.Run()
			code := cmd.ProcessState.ExitCode()
			out := stderr.String()
			if err == nil || code != tc.wantCode {
				t.Fatalf("exit code %d (%v), want %d; stderr:\n%s", code, err, tc.wantCode, out)
			}
			if !strings.Contains(out, tc.wantText) {
				t.Errorf("stderr does not say %q:\n%s", tc.wantText, out)
			}
			if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
				t.Errorf("stderr shows a panic:\n%s", out)
			}
			if tc.name != "unknown flag" && strings.Count(strings.TrimSpace(withoutLogLines(out)), "\n") != 0 {
				t.Errorf("want one line, got:\n%s", out)
			}
		})
	}
}

// withoutLogLines drops the structured log lines (JSON) a process writes
// before failing, such as --insecure's warning.
func withoutLogLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if !strings.HasPrefix(l, "{") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
