// Package console tests `storctl console` in a browser: Debian's chromium,
// driven by playwright-core (browser/drive.mjs), against a whole
// deployment running the `make run` demo, with axe-core in every page.
//
// The browser test needs /usr/bin/chromium and browser/node_modules (make
// console-deps installs both); without them it is skipped, unless
// STORAGECP_REQUIRE_BROWSER is set (make integration sets it), when their
// absence fails it.
package console

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/integration/harness"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/storctl/demo"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

const chromium = "/usr/bin/chromium"

// jaegerURL is never dialled: the page only links to it.
const jaegerURL = "http://jaeger.invalid:16686"

func requireBrowser(t *testing.T) {
	t.Helper()
	var missing []string
	if _, err := os.Stat(chromium); err != nil {
		missing = append(missing, chromium+" (apt-get install chromium)")
	}
	if _, err := os.Stat(filepath.Join("browser", "node_modules", "playwright-core")); err != nil {
		missing = append(missing, "integration/console/browser/node_modules (npm ci)")
	}
	if _, err := exec.LookPath("node"); err != nil {
		missing = append(missing, "node")
	}
	if len(missing) == 0 {
		return
	}
	msg := "browser test needs " + strings.Join(missing, ", ") + ": make console-deps"
	if os.Getenv("STORAGECP_REQUIRE_BROWSER") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// startConsole runs `storctl console` on a free port as the given
// identities and returns its URL.
func startConsole(t *testing.T, st *stack.Stack, reader, actor string) string {
	t.Helper()
	r, err := st.Identity(reader)
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"console", "--listen", "127.0.0.1:0", "--poll", "250ms", "--jaeger-url", jaegerURL,
		"--volume", st.Addr(stack.Volume), "--allocator", st.Addr(stack.Allocator),
		"--notifier", st.Addr(stack.Notifier), "--orchestrator", st.Addr(stack.Orchestrator),
		"--ca", st.CA().BundlePath(), "--cert", r.Cert, "--key", r.Key}
	if actor != reader {
		a, err := st.Identity(actor)
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--actions-cert", a.Cert, "--actions-key", a.Key)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, filepath.Join(harness.BinDir(t), "storctl"), args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if stderr.Len() > 0 {
			t.Logf("console (%s) stderr:\n%s", reader, stderr.String())
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("console did not start: %v\n%s", err, stderr.String())
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[1], "http://127.0.0.1:") {
		t.Fatalf("console's first line: %q", line)
	}
	return strings.TrimSuffix(f[1], "/")
}

type browserResult struct {
	AxeViolations    map[string]int                                       `json:"axeViolations"`
	PageBytes        map[string]struct{ Assets, FirstEvent, Total int64 } `json:"pageBytes"`
	Screenshots      []string                                             `json:"screenshots"`
	ProgressRenders  int                                                  `json:"progressRenders"`
	ProgressSeen     []int                                                `json:"progressValuesSeen"`
	EventToDisplayMs json.RawMessage                                      `json:"eventToDisplayMs"`
	EventToServerMs  json.RawMessage                                      `json:"eventToServerSnapshotMs"`
	Steps            int                                                  `json:"steps"`
	SagaNodes        int                                                  `json:"sagaNodes"`
	TraceLink        string                                               `json:"traceLink"`
	ViewerRefusal    string                                               `json:"viewerRefusal"`
	OperatorPause    struct {
		Status   int    `json:"status"`
		Code     string `json:"code"`
		Identity string `json:"identity"`
	} `json:"operatorPause"`
}

// TestConsoleInBrowser opens the console's pages while the demo expunges a
// disk: the replacement's bar reaches 100 % without a reload, the rack
// marks the disk expunged, the rsr-start saga (ro-replacement-start) is
// drawn whole, a viewer's expunge is refused by the allocator and the
// refusal shown, and the services audit the console's identities.
func TestConsoleInBrowser(t *testing.T) {
	t.Parallel()
	requireBrowser(t)
	started := time.Now()
	st := harness.Start(t, stack.Config{})
	opURL := startConsole(t, st, mtls.Viewers+"/console", mtls.Operators+"/console")
	viewerURL := startConsole(t, st, mtls.Viewers+"/console-ro", mtls.Viewers+"/console-ro")

	root, err := stack.FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(root, ".run", "console")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	node := exec.CommandContext(ctx, "node", "drive.mjs")
	node.Dir = "browser"
	node.Env = append(os.Environ(), "CONSOLE_URL="+opURL+"/", "VIEWER_URL="+viewerURL+"/", "OUT_DIR="+outDir, "CHROMIUM="+chromium)
	stdin, err := node.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := node.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var nodeErr bytes.Buffer
	node.Stderr = &nodeErr
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stdout)
	lines.Buffer(make([]byte, 1<<20), 1<<20)
	waitLine := func(prefix string) string {
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), prefix) {
				return strings.TrimPrefix(lines.Text(), prefix)
			}
			t.Logf("browser: %s", lines.Text())
		}
		_ = node.Wait()
		t.Fatalf("browser ended before %q: %v\n%s", prefix, lines.Err(), nodeErr.String())
		return ""
	}
	waitLine("READY")
	t.Logf("browser ready after %s", time.Since(started).Round(100*time.Millisecond))

	// The demo, as make run plays it, as an operator: it seeds the rack,
	// expunges a disk and waits for every request to finish.
	op, err := st.Identity(stack.OperatorID)
	if err != nil {
		t.Fatal(err)
	}
	tr, err := st.Transport(op)
	if err != nil {
		t.Fatal(err)
	}
	c, err := demo.Dial(demo.Addrs{Volume: st.Addr(stack.Volume), Allocator: st.Addr(stack.Allocator),
		Notifier: st.Addr(stack.Notifier), Orchestrator: st.Addr(stack.Orchestrator)}, tr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	var demoOut bytes.Buffer
	res, err := demo.Run(ctx, c, &demoOut, demo.Options{SimUpstairs: st.SimUpstairsAddrs(), NonInteractive: true,
		JaegerURL: jaegerURL, TLS: demo.HintTLS{CA: st.CA().BundlePath(), Cert: op.Cert, Key: op.Key}})
	if err != nil {
		t.Fatalf("demo: %v\n%s", err, demoOut.String())
	}
	var ro string
	for _, r := range res.Replacements {
		if r.GetKind() != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
			ro = r.GetReplacementId()
		}
	}
	if ro == "" {
		t.Fatalf("the demo made no read-only request:\n%s", demoOut.String())
	}
	admin := orchestratorv1.NewAdminServiceClient(c.Orchestrator)
	const rsrStart = "ro-replacement-start"
	sagas, err := admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{Name: rsrStart, ReplacementId: ro, PageSize: 10})
	if err != nil || len(sagas.Sagas) == 0 {
		t.Fatalf("no %s saga of %s: %v", rsrStart, ro, err)
	}
	in, _ := json.Marshal(map[string]any{"diskId": res.DiskID, "replacementId": ro, "volumeId": res.CloneIDs[0],
		"sagaId": sagas.Sagas[0].SagaId, "sagaName": rsrStart, "requests": len(res.Replacements)})
	if _, err := fmt.Fprintf(stdin, "%s\n", in); err != nil {
		t.Fatal(err)
	}
	raw := waitLine("RESULT ")
	if err := node.Wait(); err != nil {
		t.Fatalf("browser: %v\n%s", err, nodeErr.String())
	}
	var br browserResult
	if err := json.Unmarshal([]byte(raw), &br); err != nil {
		t.Fatal(err)
	}
	t.Logf("browser: %s", raw)

	if !strings.Contains(br.ViewerRefusal, "PermissionDenied") || !strings.Contains(br.ViewerRefusal, "viewer/console-ro") {
		t.Errorf("viewer's refusal shown as %q", br.ViewerRefusal)
	}
	if br.OperatorPause.Identity != mtls.ServiceID(mtls.DefaultTrustDomain, mtls.Operators+"/console") || br.OperatorPause.Code == "PermissionDenied" {
		t.Errorf("operator console's pause: %+v", br.OperatorPause)
	}
	if !strings.HasPrefix(br.TraceLink, jaegerURL+"/trace/") {
		t.Errorf("trace link %q", br.TraceLink)
	}
	// The services audit the console's own identities.
	wantAudit(t, st.Proc(stack.Allocator).LogPath(), mtls.Viewers+"/console-ro", "/storage.allocator.v1.RegionAllocatorService/ExpungePhysicalDisk", "denied")
	wantAudit(t, st.Proc(stack.Orchestrator).LogPath(), mtls.Operators+"/console", "/storage.orchestrator.v1.ReplacementService/PauseReplacement", "allowed")

	// The invariants, as every integration test ends.
	vol := volumev1.NewVolumeServiceClient(c.Volume)
	inv, err := vol.CheckInvariants(ctx, &volumev1.CheckInvariantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range inv.Violations {
		t.Errorf("invariant %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
	if _, err := admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	vs, err := admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Violations {
		t.Errorf("system %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
	t.Logf("console browser test: %s wall", time.Since(started).Round(100*time.Millisecond))
}

// wantAudit finds an audit line of the caller's call of method with the
// outcome in a service's log.
func wantAudit(t *testing.T, logPath, caller, method, outcome string) {
	t.Helper()
	f, err := os.Open(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	id := mtls.ServiceID(mtls.DefaultTrustDomain, caller)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var l struct{ Msg, Caller, Method, Outcome string }
		if json.Unmarshal(sc.Bytes(), &l) != nil {
			continue // not a JSON line (a panic's trace)
		}
		if l.Msg == "audit" && l.Caller == id && l.Method == method && l.Outcome == outcome {
			return
		}
	}
	t.Errorf("%s: no audit line of %s calling %s (%s)", logPath, id, method, outcome)
}
