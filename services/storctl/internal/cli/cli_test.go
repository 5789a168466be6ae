package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
	"storagecp.dev/storctl/creds"
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
		{[]string{"steps", "list", "--state", "finished"}, `--state: unknown "finished"`},
		{[]string{"disks", "expunge"}, "give either DISK or --sled SLED"},
		{[]string{"disks", "expunge", "d", "--sled", "s"}, "give either DISK or --sled SLED"},
		{[]string{"console", "--actions-cert", "op.pem"}, "console: --actions-cert and --actions-key go together"},
		{[]string{"console", "extra"}, "console: want no arguments, got 1 argument(s)"},
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

// testPKI creates a CA under dir/.run/pki, as make run does, and issues
// the identities named (paths such as "operator/local").
func testPKI(t *testing.T, dir string, ids ...string) (*pki.CA, map[string]pki.Identity) {
	t.Helper()
	ca, err := pki.LoadOrCreateCA(filepath.Join(dir, creds.RunPKI), mtls.DefaultTrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]pki.Identity{}
	for _, id := range ids {
		if out[id], err = ca.Ensure(id, mtls.ServiceID(mtls.DefaultTrustDomain, id), "127.0.0.1"); err != nil {
			t.Fatal(err)
		}
	}
	return ca, out
}

// withTLS adds an identity's files to getenv, as STORCTL_CA/CERT/KEY.
func withTLS(getenv func(string) string, ca *pki.CA, id pki.Identity) func(string) string {
	return func(k string) string {
		switch k {
		case "STORCTL_CA":
			return ca.BundlePath()
		case "STORCTL_CERT":
			return id.Cert
		case "STORCTL_KEY":
			return id.Key
		}
		return getenv(k)
	}
}

// Endpoints come from flags, then the environment, then the defaults; an
// unreachable one is named in one line with exit 1.
func TestEndpointsAndUnreachable(t *testing.T) {
	ca, ids := testPKI(t, t.TempDir(), creds.Operator)
	env := withTLS(func(k string) string {
		if k == "STORAGECP_ALLOCATOR_ADDR" {
			return "127.0.0.1:1"
		}
		return ""
	}, ca, ids[creds.Operator])
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
		"volumes show", "volumes refs", "volumes invariants", "volumes degraded", "validate", "disks list", "disks expunge",
		"disks ok-to-expunge", "rack seed", "demo", "health",
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

// Without flags or environment, storctl takes the operator identity of the
// nearest .run/pki above the working directory; with none there it says
// what to pass, in one line.
func TestDefaultCredentials(t *testing.T) {
	root := t.TempDir()
	sub := filepath.Join(root, "services", "storctl")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	o := newOptions(noEnv)
	if _, _, err := o.credentials(sub); !errors.Is(err, errNoCredentials) {
		t.Fatalf("no .run/pki: err %v", err)
	}
	t.Chdir(sub)
	_, stderr, code := runCLI(t, noEnv, "disks", "list")
	if code != ExitError || stderr != "storctl: "+errNoCredentials.Error()+"\n" {
		t.Fatalf("no .run/pki: exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"--ca, --cert and --key", "make run", "--insecure"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("the message lacks %q: %s", want, stderr)
		}
	}

	ca, ids := testPKI(t, root, creds.Operator, "viewer/v")
	files, found, err := o.credentials(sub)
	op := ids[creds.Operator]
	if err != nil || !found || files != (mtls.Files{CA: ca.BundlePath(), Cert: op.Cert, Key: op.Key}) {
		t.Fatalf("default: %+v found=%v err=%v", files, found, err)
	}
	// Flags win, the CA still found; a certificate needs its key.
	o = newOptions(noEnv)
	o.files.Cert, o.files.Key = ids["viewer/v"].Cert, ids["viewer/v"].Key
	if files, found, err = o.credentials(sub); err != nil || found || files.Cert != ids["viewer/v"].Cert || files.CA != ca.BundlePath() {
		t.Fatalf("--cert/--key: %+v found=%v err=%v", files, found, err)
	}
	_, stderr, code = runCLI(t, noEnv, "disks", "list", "--cert", op.Cert)
	if code != ExitUsage || !strings.Contains(stderr, "--cert and --key go together") {
		t.Fatalf("--cert alone: exit %d, stderr %q", code, stderr)
	}
}

// --insecure dials plaintext after a one-line warning.
func TestInsecureWarns(t *testing.T) {
	t.Chdir(t.TempDir())
	_, stderr, code := runCLI(t, noEnv, "--insecure", "--allocator", "127.0.0.1:1", "disks", "list")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != ExitError || len(lines) != 2 || !strings.Contains(lines[0], "WARNING: --insecure") ||
		lines[1] != "storctl: region-allocator at 127.0.0.1:1 is unreachable" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

// storctl talks only to the service it means: a server presenting another
// identity of the deployment fails the handshake, which is said as such
// rather than as "unreachable"; so is a server refusing storctl's
// certificate.
func TestHandshakeFailures(t *testing.T) {
	ca, ids := testPKI(t, t.TempDir(), creds.Operator, mtls.VolumeService)
	server, err := mtls.Load(mtls.DefaultTrustDomain, mtls.Files{CA: ca.BundlePath(), Cert: ids[mtls.VolumeService].Cert, Key: ids[mtls.VolumeService].Key},
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(server.ServerOption())
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	_, stderr, code := runCLI(t, withTLS(noEnv, ca, ids[creds.Operator]), "--allocator", lis.Addr().String(), "disks", "list")
	want := "storctl: region-allocator at " + lis.Addr().String() + ": TLS handshake failed: "
	if code != ExitError || !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, "volume-service") {
		t.Fatalf("exit %d, stderr %q; want it to start %q and name volume-service", code, stderr, want)
	}
	// A certificate from another deployment's CA: the server refuses it.
	_, other := testPKI(t, t.TempDir(), creds.Operator)
	_, stderr, code = runCLI(t, withTLS(noEnv, ca, other[creds.Operator]), "--volume", lis.Addr().String(), "volumes", "invariants")
	// The alert or, when it loses the race with storctl's first write, a
	// closed connection.
	want = "storctl: volume-service at " + lis.Addr().String()
	if code != ExitError || !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, "storctl's certificate") {
		t.Fatalf("foreign certificate: exit %d, stderr %q; want it to start %q and blame the certificate", code, stderr, want)
	}
}

// A refusal by the authorization policy is one line naming who may not
// call what.
func TestDescribePermissionDenied(t *testing.T) {
	e := &env{opts: newOptions(noEnv)}
	msg := "spiffe://storagecp.local/viewer/x may not call /storage.orchestrator.v1.AdminService/AbandonSaga"
	got := e.describe(callError{service: svcOrchestrator, err: status.Error(codes.PermissionDenied, msg)})
	if !strings.HasPrefix(got, "replacement-orchestrator refused the call: PermissionDenied: "+msg) {
		t.Fatalf("got %q", got)
	}
}

// STEP_STATE_VOLUME_DELETED reads as what it is in a table: the step is done
// and its stash volume, not the user's volume, was deleted.
func TestStepStateShownAsDone(t *testing.T) {
	if got := stepState(orchestratorv1.StepState_STEP_STATE_VOLUME_DELETED); got != "done (stash deleted)" {
		t.Fatalf("VOLUME_DELETED shown as %q", got)
	}
	if got := stepState(orchestratorv1.StepState_STEP_STATE_COMPLETE); got != "complete" {
		t.Fatalf("COMPLETE shown as %q", got)
	}
}
