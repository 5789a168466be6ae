package operator

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from this run")

// storctl runs the built binary as an operator (stack.OperatorID's
// certificate) with the rack's addresses in its environment (exercising
// the STORAGECP_*_ADDR path) and returns stdout, stderr and the exit code.
func storctl(t *testing.T, r *rack.Rack, args ...string) (string, string, int) {
	t.Helper()
	return storctlIn(t, r, "", append(r.StorctlTLS(t, stack.OperatorID), args...)...)
}

// storctlIn runs storctl in dir ("": the test's) with args as given: no
// credentials but those in args.
func storctlIn(t *testing.T, r *rack.Rack, dir string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(harness.BinDir(t), "storctl"), args...)
	cmd.Dir = dir
	// Not the caller's STORCTL_* (a developer's shell may set them).
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "STORCTL_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env,
		"STORAGECP_VOLUME_ADDR="+r.Stack.Addr(stack.Volume),
		"STORAGECP_ALLOCATOR_ADDR="+r.Stack.Addr(stack.Allocator),
		"STORAGECP_NOTIFIER_ADDR="+r.Stack.Addr(stack.Notifier),
		"STORAGECP_ORCHESTRATOR_ADDR="+r.Stack.Addr(stack.Orchestrator),
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		code = exit.ExitCode()
	case err != nil:
		t.Fatalf("storctl %v: %v", args, err)
	}
	return stdout.String(), stderr.String(), code
}

// normaliser replaces what differs between runs: ids the test knows get
// their role's name, other UUIDs, times, downstairs addresses and trace
// parents a placeholder.
type normaliser struct{ names map[string]string }

var (
	uuidRE  = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)
	timeRE  = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	addrRE  = regexp.MustCompile(`\[fd00:[0-9a-f:]+\]:\d+`)
	traceRE = regexp.MustCompile(`00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]`)
	// sizes depend on where regions landed.
	sizeRE = regexp.MustCompile(`\d+\.\d GiB`)
)

func (n normaliser) apply(s string) string {
	s = replace(s, traceRE, func(string) string { return "<traceparent>" })
	s = replace(s, uuidRE, func(id string) string {
		if name, ok := n.names[id]; ok {
			return "<" + name + ">"
		}
		return "<uuid>"
	})
	s = replace(s, timeRE, func(string) string { return "<time>" })
	s = replace(s, addrRE, func(string) string { return "<addr>" })
	return replace(s, sizeRE, func(string) string { return "<size>" })
}

// replace is ReplaceAllStringFunc that keeps table columns aligned: a
// match followed by a column gap is padded to its original width.
func replace(s string, re *regexp.Regexp, f func(string) string) string {
	var b strings.Builder
	last := 0
	for _, m := range re.FindAllStringIndex(s, -1) {
		b.WriteString(s[last:m[0]])
		r := f(s[m[0]:m[1]])
		if strings.HasPrefix(s[m[1]:], "  ") && len(r) < m[1]-m[0] {
			r += strings.Repeat(" ", m[1]-m[0]-len(r))
		}
		b.WriteString(r)
		last = m[1]
	}
	b.WriteString(s[last:])
	return b.String()
}

// sortRows sorts the lines of every table block after its header, for
// tables whose row order follows random ids.
func sortRows(s string) string {
	blocks := strings.Split(s, "\n\n")
	for i, b := range blocks {
		lines := strings.Split(b, "\n")
		for h, l := range lines {
			if l != "" && strings.ToUpper(l) == l && strings.ContainsAny(l, "ABCDEFGHIJKLMNOPQRSTUVWXYZ") {
				end := len(lines)
				if lines[end-1] == "" {
					end--
				}
				sort.Strings(lines[h+1 : end])
				break
			}
		}
		blocks[i] = strings.Join(lines, "\n")
	}
	return strings.Join(blocks, "\n\n")
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from %s (run with -update to accept):\n--- got ---\n%s\n--- want ---\n%s", name, path, got, want)
	}
}

// TestStorctlGolden runs storctl against a rack through a whole read-only
// replacement — preview, expunge, the views after — and compares each
// output, normalised, to testdata/<name>.golden.
func TestStorctlGolden(t *testing.T) {
	// One disk per sled and four sleds: every placement the test depends on
	// is forced (the disk volume's three regions on three sleds, the
	// replacement on the fourth).
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	n := normaliser{names: map[string]string{}}
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	n.names[disk], n.names[snap] = "disk-volume", "snapshot"
	rs := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
	for _, tg := range rs {
		n.names[tg.TargetId] = "region-snapshot"
	}
	n.names[rs[0].TargetId] = "victim-region-snapshot"
	for _, tg := range r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION) {
		n.names[tg.TargetId] = "disk-volume-region"
	}
	victim := r.DiskOf(t, rs[0].DatasetId)
	disks, err := r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks.Disks {
		n.names[d.DiskId], n.names[d.SledId], n.names[d.DatasetId] = "disk", "sled", "dataset"
		if d.RegionCount == 0 {
			n.names[d.DiskId] = "spare-disk"
		}
	}
	n.names[victim] = "victim-disk"

	type run struct {
		name   string
		args   []string
		code   int
		stderr bool // compare stderr instead of stdout
		sort   bool
		mask   *regexp.Regexp // also replaced by "<masked>", column widths kept
	}
	check := func(c run) {
		t.Helper()
		stdout, stderr, code := storctl(t, r, c.args...)
		if code != c.code {
			t.Fatalf("storctl %v: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", c.args, code, c.code, stdout, stderr)
		}
		out := stdout
		if c.stderr {
			out = stderr
		}
		out = n.apply(out)
		if c.mask != nil {
			out = replace(out, c.mask, func(string) string { return "<masked>" })
		}
		if c.sort {
			out = sortRows(out)
		}
		golden(t, c.name, out)
	}

	check(run{name: "help", args: []string{"help"}})
	check(run{name: "preview", args: []string{"disks", "expunge", victim, "--dry-run"}})
	check(run{name: "preview_json", args: []string{"disks", "expunge", "--dry-run", "-o", "json", victim}})
	// Three sleds hold the disk volume's region and the snapshot's region
	// snapshot, the fourth nothing; which serial is which is placement's
	// choice, so serials are masked and rows sorted.
	check(run{name: "sleds_list", args: []string{"sleds", "list"}, sort: true, mask: regexp.MustCompile(`sled-\S+`)})

	clone := r.Clone(t, snap)
	n.names[clone] = "clone"
	for _, tg := range r.Targets(t, clone, commonv1.TargetKind_TARGET_KIND_RW_REGION) {
		n.names[tg.TargetId] = "clone-region"
	}
	check(run{name: "refs", args: []string{"volumes", "refs", rs[1].TargetId}, sort: true})

	// The real expunge, as an operator does it.
	stdout, stderr, code := storctl(t, r, "disks", "expunge", victim)
	if code != 0 || !strings.Contains(stdout, "activated ro_replacement_detector, rw_replacement_detector") {
		t.Fatalf("expunge: exit %d\n%s%s", code, stdout, stderr)
	}
	reps := r.WaitRequests(t, 2*time.Minute)
	for _, rep := range reps {
		if rep.OldTargetId == rs[0].TargetId {
			n.names[rep.ReplacementId] = "ro-request"
			n.names[rep.NewRegionId] = "new-read-only-region"
		}
	}
	stdout, _, code = storctl(t, r, "replacements", "watch")
	if code != 0 || !strings.Contains(stdout, "nothing in flight") {
		t.Errorf("watch with nothing in flight: exit %d: %s", code, stdout)
	}
	check(run{name: "replacements_list", args: []string{"replacements", "list", "--kind", "region_snapshot"}})
	var roReq string
	for id, name := range n.names {
		if name == "ro-request" {
			roReq = id
		}
	}
	check(run{name: "replacement_show", args: []string{"replacements", "show", roReq}})
	check(run{name: "steps_list", args: []string{"steps", "list", "--replacement", roReq}})
	check(run{name: "steps_list_volume", args: []string{"steps", "list", "--volume-id", clone}})
	check(run{name: "locks_list", args: []string{"locks", "list"}})
	check(run{name: "snapshot_volume", args: []string{"volumes", "show", snap}})
	check(run{name: "validate", args: []string{"validate"}})
	check(run{name: "validate_json", args: []string{"validate", "-o", "json"}})
	check(run{name: "invariants", args: []string{"volumes", "invariants"}})

	// Errors: one line on stderr and the documented exit code.
	check(run{name: "err_unreachable", args: []string{"--orchestrator", "127.0.0.1:1", "replacements", "list"}, code: 1, stderr: true})
	check(run{name: "err_not_found", args: []string{"replacements", "show", "00000000-0000-0000-0000-000000000001"}, code: 1, stderr: true})
	check(run{name: "err_usage", args: []string{"sagas", "abandon", roReq}, code: 2, stderr: true})
	check(run{name: "err_preview_expunged", args: []string{"disks", "expunge", "--dry-run", victim}, code: 1, stderr: true})

	// Views whose content depends on timing are checked for shape only.
	for _, args := range [][]string{{"sagas", "list"}, {"tasks", "list"}, {"disks", "list"}, {"tasks", "show", "ro_replacement_detector"}} {
		stdout, stderr, code := storctl(t, r, args...)
		if code != 0 || stdout == "" {
			t.Errorf("storctl %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	stdout, _, _ = storctl(t, r, "sagas", "list", "-o", "json")
	if !strings.Contains(stdout, `"ro-replacement-start"`) {
		t.Errorf("sagas list -o json lacks ro-replacement-start:\n%s", stdout)
	}
	// The expunged disk shows in its sled's counts.
	stdout, _, _ = storctl(t, r, "sleds", "list")
	if !strings.Contains(stdout, "1 expunged/active") {
		t.Errorf("sleds list after the expunge lacks the expunged disk:\n%s", stdout)
	}
	// Every saga of the read-only request, its step's included, and only
	// those; a saga that unwound and was retried is one more row, so this
	// checks names, not a golden file.
	sagaNames := func(args ...string) map[string]bool {
		t.Helper()
		stdout, stderr, code := storctl(t, r, append([]string{"sagas", "list", "-o", "json"}, args...)...)
		if code != 0 {
			t.Fatalf("sagas list %v: exit %d\n%s", args, code, stderr)
		}
		var got orchestratorv1.ListSagasResponse
		if err := protojson.Unmarshal([]byte(stdout), &got); err != nil {
			t.Fatalf("sagas list %v: %v\n%s", args, err, stdout)
		}
		names := map[string]bool{}
		for _, s := range got.Sagas {
			names[s.Name] = true
		}
		return names
	}
	// No Upstairs runs the request's volumes: the step task swaps them in
	// a batch (--step-batch's default), not one ro-replacement-step each.
	want := []string{"ro-replacement-start", "ro-replacement-garbage-collect", "ro-replacement-step-batch", "ro-replacement-step-garbage-collect", "ro-replacement-finish"}
	got := sagaNames("--replacement", roReq)
	for _, w := range want {
		if !got[w] {
			t.Errorf("sagas list --replacement: no %s saga; got %v", w, got)
		}
	}
	if len(got) != len(want) {
		t.Errorf("sagas list --replacement: got %v, want only %v", got, want)
	}
	if got := sagaNames("--subject", clone, "--name", "volume-clone", "--state", "done"); len(got) != 1 || !got["volume-clone"] {
		t.Errorf("sagas list --subject CLONE --name volume-clone: got %v", got)
	}
	if got := sagaNames("--subject", roReq); got["ro-replacement-step-garbage-collect"] || !got["ro-replacement-start"] {
		t.Errorf("sagas list --subject REQUEST: got %v, want the request's own sagas only", got)
	}
	resp, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1})
	if err != nil || len(resp.Sagas) == 0 {
		t.Fatalf("ListSagas: %v", err)
	}
	stdout, _, code = storctl(t, r, "sagas", "show", resp.Sagas[0].SagaId)
	if code != 0 || !strings.Contains(stdout, "Nodes (") || !strings.Contains(stdout, "Events (") {
		t.Errorf("sagas show: exit %d\n%s", code, stdout)
	}
}

// storctl runs under its user's identity and the deployment's policy: a
// viewer reads but may not change anything, and the refusal names the
// caller and the method; without any certificate storctl says what to
// pass.
func TestStorctlIdentity(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0].TargetId
	viewer := r.StorctlTLS(t, "viewer/x")
	as := func(args ...string) (string, string, int) {
		t.Helper()
		return storctlIn(t, r, "", append(append([]string(nil), viewer...), args...)...)
	}

	for _, args := range [][]string{{"replacements", "list"}, {"disks", "list"}, {"volumes", "show", snap}, {"sagas", "list"}} {
		if stdout, stderr, code := as(args...); code != 0 || stdout == "" {
			t.Errorf("viewer: storctl %v: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	for _, c := range []struct {
		args   []string
		method string
	}{
		{[]string{"replacements", "request", target}, "/storage.orchestrator.v1.ReplacementService/RequestReplacement"},
		{[]string{"sagas", "abandon", "00000000-0000-0000-0000-000000000001", "--comment", "viewer tries"}, "/storage.orchestrator.v1.AdminService/AbandonSaga"},
		{[]string{"tasks", "activate", "ro_replacement_detector"}, "/storage.orchestrator.v1.AdminService/ActivateBackgroundTask"},
	} {
		stdout, stderr, code := as(c.args...)
		want := "storctl: replacement-orchestrator refused the call: PermissionDenied: spiffe://storagecp.local/viewer/x may not call " + c.method
		if code != 1 || !strings.HasPrefix(stderr, want) || strings.Count(stderr, "\n") != 1 {
			t.Errorf("viewer: storctl %v: exit %d, stderr %q; want exit 1 and one line starting %q\n%s", c.args, code, stderr, want, stdout)
		}
	}
	// The refused request did nothing; the operator may make it.
	if stdout, _, _ := storctl(t, r, "replacements", "list", "-o", "json"); strings.Contains(stdout, target) {
		t.Errorf("a refused request was made:\n%s", stdout)
	}
	if stdout, stderr, code := storctl(t, r, "replacements", "request", target); code != 0 || !strings.Contains(stdout, "created request") {
		t.Errorf("operator: replacements request: exit %d\n%s%s", code, stdout, stderr)
	}

	// No flags, no environment, no .run/pki above the working directory.
	_, stderr, code := storctlIn(t, r, t.TempDir(), "replacements", "list")
	if code != 1 || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "no TLS credentials: pass --ca, --cert and --key") ||
		!strings.Contains(stderr, "make run") || !strings.Contains(stderr, "--insecure") {
		t.Errorf("no certificate: exit %d, stderr %q", code, stderr)
	}
}
