package security

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	policy "storagecp.dev/deploy/authz"
	"storagecp.dev/integration/harness"
	"storagecp.dev/testsupport/stack"
)

// reloadProbes are, per process, one method a viewer is not granted and
// that, reached with an empty request on an empty deployment, changes
// nothing (it reads, or is refused by the handler as invalid).
var reloadProbes = map[string]string{
	stack.Orchestrator: "/storage.orchestrator.v1.AdminService/ActivateBackgroundTask",
	stack.Volume:       "/storage.volume.v1.VolumeService/FindDeletedVolumeRegions",
	stack.Allocator:    "/storage.allocator.v1.RegionAllocatorService/ListExpungedTargets",
	stack.Notifier:     "/storage.notifier.v1.UpstairsNotifierService/DownstairsStopped",
	stack.SimAgent:     "/storage.agent.v1.AgentService/ProbeTargets",
	"sim-upstairs-0":   "/storage.upstairs.v1.UpstairsService/Deactivate",
}

// A policy change takes effect in every running process without a
// restart: a rule granting viewers one more method per process (the
// orchestrator's ActivateBackgroundTask among them) lets the viewer's
// calls through within a few reload intervals, while a stranger and the
// viewer's other calls stay refused; restoring the file refuses the viewer
// again. The processes keep their pids throughout.
func TestPolicyReloadsWithoutRestart(t *testing.T) {
	st := harness.Start(t, stack.Config{SimUpstairs: 1})
	wantProcesses(t, st)
	path := st.PolicyPath()
	// Only the stack's own copy may be edited, never the repository's.
	if repo, err := stack.DefaultPolicy(); err != nil || path == repo || !strings.HasPrefix(path, st.LogDir+string(os.PathSeparator)) {
		t.Fatalf("policy %s is not the stack's own copy under %s (repository policy %s, %v)", path, st.LogDir, repo, err)
	}
	original, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for _, p := range st.Procs() {
		pids[p.Name] = p.Pid()
	}

	methods := map[string]policy.Method{}
	for _, proc := range processes {
		for _, m := range servedMethods(t, st, proc) {
			if m.Path == reloadProbes[proc] {
				methods[proc] = m
			}
		}
		if _, ok := methods[proc]; !ok {
			t.Fatalf("%s does not serve %s", proc, reloadProbes[proc])
		}
	}
	const viewer, stranger = "viewer/reload", "stranger/reload"
	still := policy.Method{}
	for _, m := range servedMethods(t, st, stack.Orchestrator) {
		if m.Path == "/storage.orchestrator.v1.AdminService/AbandonSaga" {
			still = m
		}
	}
	// outcome calls each probe as who and says, per process, whether the
	// policy refused it.
	conns := map[string]map[string]*grpc.ClientConn{}
	for _, who := range []string{viewer, stranger} {
		conns[who] = map[string]*grpc.ClientConn{}
		for _, proc := range processes {
			conns[who][proc] = dialAs(t, st, who, st.Addr(proc))
		}
	}
	outcome := func(who string) map[string]error {
		out := map[string]error{}
		for _, proc := range processes {
			out[proc] = invoke(conns[who][proc], methods[proc])
		}
		return out
	}
	allRefused := func(who string) error {
		for proc, err := range outcome(who) {
			if !refused(who, methods[proc].Path, err) {
				return fmt.Errorf("%s: %s calling %s: %v", proc, who, methods[proc].Path, err)
			}
		}
		return nil
	}
	if err := allRefused(viewer); err != nil {
		t.Fatalf("before the change: %v", err)
	}

	var granted []string
	for _, proc := range processes {
		granted = append(granted, reloadProbes[proc])
	}
	var doc map[string]any
	if err := json.Unmarshal(original, &doc); err != nil {
		t.Fatal(err)
	}
	doc["allow_rules"] = append(doc["allow_rules"].([]any), map[string]any{
		"name":    "viewers_may_probe_for_this_test",
		"source":  map[string]any{"principals": []string{spiffeID("viewer/*")}},
		"request": map[string]any{"paths": granted},
	})
	changed, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	replaceAtomically(t, path, changed)
	start := time.Now()
	harness.Eventually(t, 20*time.Second, "every process lets the viewer through", func() error {
		for proc, err := range outcome(viewer) {
			if refused(viewer, methods[proc].Path, err) {
				return fmt.Errorf("%s still refuses: %v", proc, err)
			}
		}
		return nil
	})
	t.Logf("granted in %s:", time.Since(start).Round(10*time.Millisecond))
	now := outcome(viewer)
	for _, proc := range processes {
		t.Logf("  %s %s: %v (reached the handler)", proc, methods[proc].Path, status.Code(now[proc]))
	}
	admin := orchestratorv1.NewAdminServiceClient(conns[viewer][stack.Orchestrator])
	if _, err := admin.ActivateBackgroundTask(context.Background(), &orchestratorv1.ActivateBackgroundTaskRequest{Name: "ro_replacement_detector"}); err != nil {
		t.Errorf("viewer ActivateBackgroundTask(ro_replacement_detector) under the changed policy: %v", err)
	}
	if err := allRefused(stranger); err != nil {
		t.Errorf("the viewers' rule let a stranger through: %v", err)
	}
	if err := invoke(conns[viewer][stack.Orchestrator], still); !refused(viewer, still.Path, err) {
		t.Errorf("the viewers' rule let the viewer call %s: %v", still.Path, err)
	}

	replaceAtomically(t, path, original)
	start = time.Now()
	harness.Eventually(t, 20*time.Second, "every process refuses the viewer again", func() error { return allRefused(viewer) })
	t.Logf("refused again in %s", time.Since(start).Round(10*time.Millisecond))

	for _, p := range st.Procs() {
		if exited, err := p.Exited(); exited || p.Pid() != pids[p.Name] {
			t.Errorf("%s restarted or exited (pid %d, was %d; exited %v %v)", p.Name, p.Pid(), pids[p.Name], exited, err)
		}
	}
}

// replaceAtomically writes data beside path and renames it over path, so
// that a process re-reading the file sees the old or the new policy, never
// half of one.
func replaceAtomically(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp, err := os.CreateTemp(filepath.Dir(path), ".policy-*.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tmp.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
}
