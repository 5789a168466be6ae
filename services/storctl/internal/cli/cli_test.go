package cli

import (
	"bytes"
	"context"
	"flag"
	"slices"
	"strings"
	"testing"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

func noEnv(string) string { return "" }

// runCLI runs storctl in-process against addresses nothing listens on.
func runCLI(t *testing.T, getenv func(string) string, args ...string) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, getenv)
	return stdout.String(), stderr.String(), code
}

func TestParseInterleaved(t *testing.T) {
	for _, c := range []struct {
		args    []string
		pos     []string
		comment string
		force   bool
	}{
		{[]string{"ID"}, []string{"ID"}, "", false},
		{[]string{"ID", "--comment", "why"}, []string{"ID"}, "why", false},
		{[]string{"--force", "ID", "--comment=x y"}, []string{"ID"}, "x y", true},
		{[]string{"A", "-force", "B"}, []string{"A", "B"}, "", true},
		{[]string{"A", "--", "--force"}, []string{"A", "--force"}, "", false},
	} {
		fs := flag.NewFlagSet("t", flag.ContinueOnError)
		comment := fs.String("comment", "", "")
		force := fs.Bool("force", false, "")
		pos, err := parseInterleaved(fs, c.args)
		if err != nil || !slices.Equal(pos, c.pos) || *comment != c.comment || *force != c.force {
			t.Errorf("parse %q: pos=%q comment=%q force=%v err=%v; want %q %q %v", c.args, pos, *comment, *force, err, c.pos, c.comment, c.force)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "no command"},
		{[]string{"nope"}, `unknown command "nope"`},
		{[]string{"sagas"}, "sagas: missing subcommand (one of: list, show, abandon)"},
		{[]string{"sagas", "frob"}, `sagas: unknown subcommand "frob"`},
		{[]string{"sagas", "show"}, "sagas show: want ID, got 0 argument(s)"},
		{[]string{"sagas", "show", "a", "b"}, "sagas show: want ID, got 2 argument(s)"},
		{[]string{"sagas", "abandon", "x"}, "--comment is required"},
		{[]string{"sagas", "list", "--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"-o", "yaml", "validate"}, `-o: want "table" or "json", got "yaml"`},
		{[]string{"replacements", "list", "--kind", "x"}, `--kind: unknown "x" (one of: read_only_region, read_write_region, region_snapshot)`},
		{[]string{"steps", "list", "--state", "done"}, `--state: unknown "done"`},
		{[]string{"disks", "expunge"}, "give either DISK or --sled SLED"},
		{[]string{"disks", "expunge", "d", "--sled", "s"}, "give either DISK or --sled SLED"},
	} {
		_, stderr, code := runCLI(t, noEnv, c.args...)
		if code != ExitUsage || !strings.Contains(stderr, c.want) {
			t.Errorf("storctl %q: exit %d, stderr %q; want exit 2 containing %q", c.args, code, stderr, c.want)
		}
	}
}

func TestHelp(t *testing.T) {
	stdout, _, code := runCLI(t, noEnv, "help")
	if code != ExitOK || !strings.Contains(stdout, "disks expunge DISK") || !strings.Contains(stdout, "Exit codes: 0 ok, 1 error, 2 usage, 3") {
		t.Fatalf("help: exit %d\n%s", code, stdout)
	}
	stdout, _, code = runCLI(t, noEnv, "disks", "expunge", "-h")
	if code != ExitOK || !strings.Contains(stdout, "-dry-run") {
		t.Fatalf("disks expunge -h: exit %d\n%s", code, stdout)
	}
}

// Endpoints come from flags, then the environment, then the defaults; an
// unreachable one is named in one line with exit 1.
func TestEndpointsAndUnreachable(t *testing.T) {
	env := func(k string) string {
		if k == "STORAGECP_ALLOCATOR_ADDR" {
			return "127.0.0.1:1"
		}
		return ""
	}
	o := newOptions(env)
	if *o.addrs[svcAllocator] != "127.0.0.1:1" || *o.addrs[svcVolume] != "127.0.0.1:7101" || *o.addrs[svcOrchestrator] != "127.0.0.1:7104" {
		t.Fatalf("endpoints %v %v %v", *o.addrs[svcAllocator], *o.addrs[svcVolume], *o.addrs[svcOrchestrator])
	}
	_, stderr, code := runCLI(t, env, "disks", "list")
	if code != ExitError || stderr != "storctl: region-allocator at 127.0.0.1:1 is unreachable\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	// A flag after the command beats the environment.
	_, stderr, code = runCLI(t, env, "disks", "list", "--allocator", "127.0.0.1:2")
	if code != ExitError || stderr != "storctl: region-allocator at 127.0.0.1:2 is unreachable\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	_, stderr, code = runCLI(t, env, "--volume", "127.0.0.1:3", "volumes", "invariants")
	if code != ExitError || stderr != "storctl: volume-service at 127.0.0.1:3 is unreachable\n" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestRenderTable(t *testing.T) {
	var b bytes.Buffer
	if err := renderTable(&b, []string{"ID", "STATE", "SAGA"}, [][]string{{"a", "running", ""}, {"bbbbbb", "complete\tx", "s"}}); err != nil {
		t.Fatal(err)
	}
	want := "" +
		"ID      STATE       SAGA\n" +
		"a       running     -\n" +
		"bbbbbb  complete x  s\n"
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestEnumNames(t *testing.T) {
	if got := enum(orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST, prefixROState); got != "data_lost" {
		t.Errorf("enum = %q", got)
	}
	if got := enum(orchestratorv1.StepState_STEP_STATE_UNSPECIFIED, prefixStep); got != "" {
		t.Errorf("unspecified enum = %q", got)
	}
	s, err := parseEnum[orchestratorv1.ReadOnlyReplacementState]("--state", prefixROState, "data-lost", orchestratorv1.ReadOnlyReplacementState_value)
	if err != nil || s != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
		t.Errorf("parseEnum = %v, %v", s, err)
	}
	if _, err := parseEnum[orchestratorv1.StepState]("--state", prefixStep, "unspecified", orchestratorv1.StepState_value); err == nil {
		t.Errorf("UNSPECIFIED parsed as a filter")
	}
}

// JSON output is stable (protojson varies its whitespace on purpose).
func TestMarshalJSONStable(t *testing.T) {
	m := &orchestratorv1.Step{StepId: "s", State: orchestratorv1.StepState_STEP_STATE_RUNNING}
	b, err := marshalJSON(m)
	if err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"stepId\": \"s\",\n  \"state\": \"STEP_STATE_RUNNING\"\n}\n"
	if string(b) != want {
		t.Fatalf("got %q want %q", b, want)
	}
}

func secret(s string) *string { return &s }

// volumes show never prints key material, in either output, wherever the
// region set sits in the VCR tree.
func TestRedactVCR(t *testing.T) {
	region := func() *commonv1.VolumeConstructionRequest {
		return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
			BlockSize: 512, Gen: 1,
			Opts: &commonv1.CrucibleOpts{
				Target: []string{"[fd00::1]:19000"}, Key: secret("S3CRET-KEY"), KeyPem: secret("S3CRET-PEM"),
				CertPem: secret("S3CRET-CERT"), RootCertPem: secret("S3CRET-ROOT"),
			},
		}}}
	}
	vcr := &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
		Id: "v", BlockSize: 512, SubVolumes: []*commonv1.VolumeConstructionRequest{region()},
		ReadOnlyParent: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
			Id: "p", SubVolumes: []*commonv1.VolumeConstructionRequest{region()},
		}}},
	}}}
	red := redactVCR(vcr)
	b, err := marshalJSON(red)
	if err != nil {
		t.Fatal(err)
	}
	var tree strings.Builder
	writeVCR(&tree, red, "")
	for _, out := range []string{string(b), tree.String()} {
		if strings.Contains(out, "S3CRET") {
			t.Fatalf("key material printed:\n%s", out)
		}
		if !strings.Contains(out, "[fd00::1]:19000") {
			t.Fatalf("targets lost:\n%s", out)
		}
	}
	// The input is untouched (redaction works on a copy).
	if vcr.GetVolume().SubVolumes[0].GetRegion().Opts.GetKey() != "S3CRET-KEY" {
		t.Fatalf("redactVCR changed its input")
	}
}

func TestRenderPreview(t *testing.T) {
	var b bytes.Buffer
	err := renderPreview(&b, &orchestratorv1.PreviewExpungeRequest{DiskId: "d1"}, &orchestratorv1.PreviewExpungeResponse{
		ReadOnlyTargets: []*orchestratorv1.ReadOnlyTargetPreview{
			{TargetId: "t1", Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT, SnapshotId: "s1", ReferencingVolumes: 3,
				CloneSourceTargetId: "t2", CloneSourceKind: "region_snapshot", NewRegionDiskId: "d9", CapacityOk: true},
			{TargetId: "t3", Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION, SnapshotId: "s2", ReferencingVolumes: 1, DataLoss: true, CapacityOk: true},
		},
		ReadWriteRegions: []*orchestratorv1.ReadWriteRegionPreview{
			{RegionId: "r1", VolumeId: "v1", OtherMembers: []*orchestratorv1.RegionSetMember{{Lost: true}, {}}, CapacityOk: false},
		},
		CapacityOk: false, CapacityDetail: "1 of 2 replacement regions do not fit", DataLoss: true, DiskIds: []string{"d1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := `Dry run: expunging disk d1 would replace (nothing was changed):

Read-only targets (2):
TARGET  KIND              SNAPSHOT  REFS  CLONE_SOURCE          NEW_REGION_DISK  STATUS
t1      region_snapshot   s1        3     t2 (region_snapshot)  d9               ok
t3      read_only_region  s2        1     -                     -                DATA LOSS

Read/write regions (1):
REGION  VOLUME  OTHERS_SURVIVING  NEW_REGION_DISK  STATUS
r1      v1      1 of 2            -                NO ROOM

Capacity: NOT ENOUGH — 1 of 2 replacement regions do not fit
Data loss: YES — some data would have no surviving copy
`
	if b.String() != want {
		t.Fatalf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// Every command is reachable by its path, and paths are unique.
func TestCommandTable(t *testing.T) {
	seen := map[string]bool{}
	for _, c := range commands() {
		if seen[c.path] {
			t.Errorf("duplicate command %q", c.path)
		}
		seen[c.path] = true
		got, _, err := find(strings.Fields(c.path))
		if err != nil || got.path != c.path {
			t.Errorf("find(%q) = %q, %v", c.path, got.path, err)
		}
	}
	for _, want := range []string{
		"replacements list", "replacements show", "replacements watch", "replacements request", "steps list",
		"sagas list", "sagas show", "sagas abandon", "tasks list", "tasks activate", "locks list",
		"volumes show", "volumes refs", "volumes invariants", "validate", "disks list", "disks expunge", "rack seed", "demo",
	} {
		if !seen[want] {
			t.Errorf("missing command %q", want)
		}
	}
}

// sagas show says why a node failed, why a stuck saga's undo was not
// retried, and what a retrying undo waits on.
func TestRenderSagaErrorsAndRetries(t *testing.T) {
	var b bytes.Buffer
	err := renderSaga(&b, &orchestratorv1.GetSagaResponse{
		Saga: &orchestratorv1.Saga{SagaId: "s1", Name: "snapshot-create", Outcome: "stuck"},
		Nodes: []*orchestratorv1.SagaNode{
			{NodeIndex: 1, Name: "lock", Kind: "action", Status: "undo_finished", HasUndo: true, Attempts: 4},
			{NodeIndex: 2, Name: "register_snapshots", Kind: "action", Status: "undo_failed", HasUndo: true, Attempts: 3,
				ErrorReason: "grpc:NotFound", DataJson: `{"kind":"undo","message":"rpc error: code = NotFound desc = gone","attempts":3}`},
			{NodeIndex: 3, Name: "create_snapshots", Kind: "action", Status: "failed", ErrorReason: "grpc:Unavailable",
				DataJson: `{"kind":"action","message":"agent down","retryable":true,"attempts":4}`, Attempts: 4},
			{NodeIndex: 4, Name: "x", Kind: "action", Status: "undo_started", HasUndo: true, Attempts: 2, RetryError: "rpc error: code = Unavailable desc = down"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"1     0      lock                action  undo_finished  -        undo  4\n",
		"Errors and retries:\n",
		"  register_snapshots: undo failed after 3 runs with a permanent error (grpc:NotFound), so the saga is stuck: rpc error: code = NotFound desc = gone\n",
		"  create_snapshots: failed after 4 runs (grpc:Unavailable): agent down\n",
		"  x: retrying (run 2 failed): rpc error: code = Unavailable desc = down\n",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, b.String())
		}
	}
}
