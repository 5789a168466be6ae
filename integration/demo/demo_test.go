// Package demo tests the `make run` demo end to end: storctl/demo against a
// whole deployment, and the storagecp-local command itself run
// non-interactively, several times over one kept PostgreSQL directory as
// repeated `make run`s are.
package demo

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/storctl/demo"
	"storagecp.dev/testsupport/stack"
)

// The tests run in parallel: each runs a deployment of its own (free
// ports, or hosts of its own, and its own run directory and cluster), so
// none needs anything of another.
func TestMain(m *testing.M) { harness.Main(m) }

// keyLines are what every finished demo prints.
var keyLines = []string{
	"storagecp demo: a live read-only replacement",
	"rack ",
	"clones ",
	"victim ",
	"expunged; read-only and rw replacement detectors activated",
	"every request is terminal",
	"CheckInvariants: clean   ValidateSystem: clean   data-loss probes: 0   content mismatches: 0",
	"Explore what happened:",
	"replacements list",
	"sagas list",
	"validate",
	"storage.orchestrator.v1.ReplacementService/GetReplacement",
}

func wantKeyLines(t *testing.T, out string) {
	t.Helper()
	for _, l := range keyLines {
		if !strings.Contains(out, l) {
			t.Errorf("demo output lacks %q", l)
		}
	}
}

// TestDemoRun runs the demo twice on one deployment with the default task
// periods, as `make run` has them: the second run reuses the seeded rack
// (one disk fewer, made up for) and replaces the first run's volumes'
// targets on its disk too.
func TestDemoRun(t *testing.T) {
	t.Parallel()
	st := harness.Start(t, stack.Config{})
	// The demo runs as an operator, as under make run: what it does must be
	// what the policy lets an operator do.
	op, err := st.Identity(stack.OperatorID)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := st.Transport(op)
	if err != nil {
		t.Fatal(err)
	}
	c, err := demo.Dial(demo.Addrs{
		Volume: st.Addr(stack.Volume), Allocator: st.Addr(stack.Allocator),
		Notifier: st.Addr(stack.Notifier), Orchestrator: st.Addr(stack.Orchestrator),
	}, tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	storctl := filepath.Join(harness.BinDir(t), "storctl")
	var disks []string
	for i := 0; i < 2; i++ {
		var out bytes.Buffer
		res, err := demo.Run(ctx, c, &out, demo.Options{
			SimUpstairs: st.SimUpstairsAddrs(), NonInteractive: true, JaegerURL: "http://jaeger.invalid:16686",
			StorctlPath: storctl,
			TLS:         demo.HintTLS{CA: st.CA().BundlePath(), Cert: op.Cert, Key: op.Key},
		})
		t.Logf("demo run %d output:\n%s", i+1, out.String())
		if err != nil {
			t.Fatalf("run %d: %v", i+1, err)
		}
		wantKeyLines(t, out.String())
		// The printed grpcurl commands carry the operator's certificate.
		if tlsFlags := "-cacert " + st.CA().BundlePath() + " -cert " + op.Cert + " -key " + op.Key; strings.Contains(out.String(), "-plaintext") ||
			!strings.Contains(out.String(), "grpcurl "+tlsFlags+" -d ") {
			t.Errorf("run %d: grpcurl hints lack %q", i+1, tlsFlags)
		}
		t.Logf("run %d: expunge → Complete %s (%d requests, %d steps)", i+1, res.ExpungeToComplete, len(res.RequestIDs), res.Steps.Total())
		if len(res.CloneIDs) != 10 {
			t.Errorf("run %d: %d clones, want 10", i+1, len(res.CloneIDs))
		}
		ro := 0
		for _, r := range res.Replacements {
			switch r.GetKind() {
			case orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION:
				if r.GetRegionState() != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
					t.Errorf("run %d: rw request %s is %v", i+1, r.GetReplacementId(), r.GetRegionState())
				}
			default:
				ro++
				if r.GetReadOnlyState() != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
					t.Errorf("run %d: read-only request %s is %v", i+1, r.GetReplacementId(), r.GetReadOnlyState())
				}
			}
			if res.TraceIDs[r.GetReplacementId()] == "" {
				t.Errorf("run %d: request %s has no trace id", i+1, r.GetReplacementId())
			}
		}
		if ro == 0 {
			t.Errorf("run %d: no read-only request among %d", i+1, len(res.Replacements))
		}
		// The read-only request's steps are the clones (each references the
		// snapshot's targets through its read-only parent).
		if res.Steps.Done() < 10 {
			t.Errorf("run %d: %d steps done, want at least the 10 clones", i+1, res.Steps.Done())
		}
		if !strings.Contains(out.String(), "http://jaeger.invalid:16686/trace/") {
			t.Errorf("run %d: no trace URL printed", i+1)
		}
		for _, d := range disks {
			if d == res.DiskID {
				t.Errorf("run %d expunged disk %s again", i+1, d)
			}
		}
		disks = append(disks, res.DiskID)
		runHints(t, out.String(), storctl)
	}
}

// runHints runs every storctl command the demo printed, in the
// environment it printed, and expects each to succeed: the closing hints
// must work as printed.
func runHints(t *testing.T, out, storctl string) {
	t.Helper()
	var env []string
	ran := 0
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "export "); ok {
			env = strings.Fields(rest)
			continue
		}
		if !strings.HasPrefix(line, storctl+" ") {
			continue
		}
		line, _, _ = strings.Cut(line, "#")
		args := strings.Fields(line)
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = append(os.Environ(), env...)
		got, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("hint %q: %v\n%s", line, err, got)
		} else {
			t.Logf("$ %s\n%s", line, got)
		}
		ran++
	}
	if ran < 5 {
		t.Errorf("only %d storctl hints printed", ran)
	}
}
