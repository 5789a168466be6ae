package security

import (
	"context"
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storagecp.dev/integration/harness"
	"storagecp.dev/testsupport/stack"
)

// probeServices is, per process, the service only that process serves: the
// probe asks for its status, so an answer from another process on the port
// does not pass.
var probeServices = map[string]string{
	stack.Volume:       "storage.volume.v1.VolumeService",
	stack.Allocator:    "storage.allocator.v1.RegionAllocatorService",
	stack.Notifier:     "storage.notifier.v1.UpstairsNotifierService",
	stack.Orchestrator: "storage.orchestrator.v1.ReplacementService",
	stack.SimAgent:     "storage.agent.v1.AgentService",
	"sim-upstairs-0":   "storage.upstairs.v1.UpstairsService",
}

// grpc-health-probe (pinned in tools/go.mod), the probe Kubernetes
// deployments run, reaches every process over mutual TLS with a viewer's
// certificate and reports SERVING; without a client certificate, or in
// plaintext, it fails.
func TestHealthProbeOverMTLS(t *testing.T) {
	probe := buildHealthProbe(t)
	st := harness.Start(t, stack.Config{SimUpstairs: 1})
	wantProcesses(t, st)
	id, err := st.Identity("viewer/probe")
	if err != nil {
		t.Fatal(err)
	}
	bundle := st.CA().BundlePath()
	for _, proc := range processes {
		t.Run(proc, func(t *testing.T) {
			t.Parallel()
			base := []string{"-addr", st.Addr(proc), "-service", probeServices[proc], "-rpc-timeout", "5s"}
			out, code := runProbe(t, probe, append(base, "-connect-timeout", "5s", "-tls", "-tls-ca-cert", bundle, "-tls-client-cert", id.Cert, "-tls-client-key", id.Key)...)
			if code != 0 || !strings.Contains(out, "SERVING") {
				t.Errorf("with a viewer certificate: exit %d, output %q; want 0 and SERVING", code, out)
			}
			t.Logf("viewer certificate: exit %d: %s", code, out)

			// A refused probe retries until its connect timeout (and says
			// only that it timed out): keep it short. The control above
			// shows the address and the CA are right.
			refused := append(base, "-connect-timeout", "1s")
			out, code = runProbe(t, probe, append(refused, "-tls", "-tls-ca-cert", bundle)...)
			if code == 0 || strings.Contains(out, "status: SERVING") {
				t.Errorf("without a client certificate: exit %d, output %q; want a failure", code, out)
			}
			t.Logf("no client certificate: exit %d: %s", code, out)

			out, code = runProbe(t, probe, refused...)
			if code == 0 || strings.Contains(out, "status: SERVING") {
				t.Errorf("plaintext: exit %d, output %q; want a failure", code, out)
			}
			t.Logf("plaintext: exit %d: %s", code, out)
		})
	}
}

// buildHealthProbe builds the pinned grpc-health-probe the way `make tools`
// builds every tool (tools/go.mod, outside the workspace).
func buildHealthProbe(t *testing.T) string {
	t.Helper()
	root, err := stack.FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "grpc-health-probe")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/grpc-ecosystem/grpc-health-probe")
	cmd.Dir = filepath.Join(root, "tools")
	cmd.Env = append(cmd.Environ(), "GOWORK=off")
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build grpc-health-probe: %v\n%s", err, out)
	}
	t.Logf("built grpc-health-probe in %s", time.Since(start).Round(10*time.Millisecond))
	return bin
}

// runProbe runs the probe and returns its combined output and exit code.
func runProbe(t *testing.T, probe string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, probe, args...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return strings.TrimSpace(string(out)), 0
	case errors.As(err, &exit):
		return strings.TrimSpace(string(out)), exit.ExitCode()
	default:
		t.Fatalf("run %s: %v", probe, err)
		return "", -1
	}
}
