package security

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	policy "storagecp.dev/deploy/authz"
	"storagecp.dev/integration/rack"
	"storagecp.dev/platform/authz"
	"storagecp.dev/testsupport/stack"
)

// mutatesDespiteName lists the RPCs that change state although their names
// start like a read (authz.ReadOnly judges by name): the policy must not
// grant them to a read-only role either.
var mutatesDespiteName = map[string]bool{
	// Bumps the generation of every region of the volume and returns the
	// VCR with its keys.
	"/storage.volume.v1.VolumeService/CheckoutVolume": true,
}

// call is one call the test made and its expected audit outcome.
type call struct {
	proc, caller, path string
}

// A caller with a valid certificate of the deployment but an identity the
// policy does not name (stranger/x) is refused every RPC of every process;
// a viewer (viewer/x) every RPC it is not granted, which includes every
// mutating one. Each refusal is PermissionDenied naming the caller and the
// method, leaves one audit line and counts in
// storagecp_authz_denied_total{method,identity}, and changes nothing: the
// whole state is identical afterwards and both consistency checks are
// clean. The viewer's reads succeed; the fault RPCs are refused to an
// operator and served to a test identity.
func TestWrongIdentitiesAreRefusedAndChangeNothing(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{SimUpstairs: 1})
	st := r.Stack
	wantProcesses(t, st)
	pol := loadPolicy(t)
	ctx := context.Background()

	// A rack with something in every list: a disk attached to an
	// Upstairs, a snapshot, a clone of it, and a finished replacement of
	// one of the snapshot's targets.
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	r.Construct(t, disk, 0)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	if _, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId}); err != nil {
		t.Fatal(err)
	}
	r.WaitRequests(t, 60*time.Second)
	r.Validate(t)
	r.Invariants(t)

	// Nothing the processes asked of each other while doing all that was
	// refused: the policy grants every call the system makes.
	for _, proc := range processes {
		for _, l := range auditLines(t, st.Proc(proc)) {
			if l.Outcome != "allowed" {
				t.Errorf("%s refused %s calling %s during normal operation (code %s)", proc, l.Caller, l.Method, l.Code)
			}
		}
		if n := len(scrape(t, st.MetricsURL(proc), "storagecp_authz_denied_total")); n != 0 {
			t.Errorf("%s counted refusals during normal operation: %d series", proc, n)
		}
	}

	before := takeState(t, r)
	t.Logf("state before: %s", before.counts())
	for _, kind := range []string{"volumes", "targets", "physical disks", "regions", "region snapshots", "replacements", "sagas", "attachments"} {
		if len(before[kind]) == 0 {
			t.Fatalf("no %s: the fixture should make every list non-empty", kind)
		}
	}

	served := map[string][]policy.Method{}
	for _, proc := range processes {
		served[proc] = servedMethods(t, st, proc)
	}

	var refusedCalls []call
	for _, caller := range []string{"stranger/x", "viewer/x"} {
		for _, proc := range processes {
			conn := dialAs(t, st, caller, st.Addr(proc))
			called, mutating := 0, 0
			for _, m := range served[proc] {
				if pol.Allows(spiffeID(caller), m.Path) {
					if !authz.ReadOnly(m.Path) || mutatesDespiteName[m.Path] {
						t.Errorf("the policy grants %s the mutating %s", spiffeID(caller), m.Path)
					}
					continue
				}
				err := invoke(conn, m)
				if wantRefused(t, proc, caller, m.Path, err) {
					refusedCalls = append(refusedCalls, call{proc, caller, m.Path})
				}
				called++
				if !authz.ReadOnly(m.Path) {
					mutating++
				}
			}
			t.Logf("%s on %s: %d calls refused (%d mutating), %d granted reads not called", caller, proc, called, mutating, len(served[proc])-called)
		}
	}
	for _, c := range refusedCalls[:min(3, len(refusedCalls))] {
		t.Logf("refusal: %s", refusal(c.caller, c.path))
	}

	after := takeState(t, r)
	before.diff(t, after)
	t.Logf("state after:  %s", after.counts())
	r.Invariants(t)
	validate(t, r.Admin)

	t.Run("viewer reads", func(t *testing.T) { viewerReads(t, r, before) })
	t.Run("keys only for the services", func(t *testing.T) {
		refusedCalls = append(refusedCalls, keysOnlyForServices(t, r, disk)...)
	})

	// Fault injection is for tests: an operator is refused it, a test
	// identity is served (an empty InjectAgentFault reaches the handler,
	// which finds it invalid; the others succeed).
	faults := []struct {
		proc string
		path string
		call func(t *testing.T, who string) error
		want codes.Code
	}{
		{stack.Allocator, "/storage.allocator.v1.AgentFaultService/ClearAgentFaults", func(t *testing.T, who string) error {
			_, err := allocatorv1.NewAgentFaultServiceClient(dialAs(t, st, who, st.Addr(stack.Allocator))).ClearAgentFaults(ctx, &allocatorv1.ClearAgentFaultsRequest{})
			return err
		}, codes.OK},
		{stack.Allocator, "/storage.allocator.v1.AgentFaultService/InjectAgentFault", func(t *testing.T, who string) error {
			_, err := allocatorv1.NewAgentFaultServiceClient(dialAs(t, st, who, st.Addr(stack.Allocator))).InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{})
			return err
		}, codes.InvalidArgument},
		{"sim-upstairs-0", "/storage.upstairs.v1.UpstairsFaultService/InjectUpstairsFault", func(t *testing.T, who string) error {
			_, err := upstairsv1.NewUpstairsFaultServiceClient(dialAs(t, st, who, st.Addr("sim-upstairs-0"))).InjectUpstairsFault(ctx, &upstairsv1.InjectUpstairsFaultRequest{
				Method: "Write", Count: 1, Delay: durationpb.New(time.Millisecond)})
			return err
		}, codes.OK},
		{"sim-upstairs-0", "/storage.upstairs.v1.UpstairsFaultService/ForgetAll", func(t *testing.T, who string) error {
			_, err := upstairsv1.NewUpstairsFaultServiceClient(dialAs(t, st, who, st.Addr("sim-upstairs-0"))).ForgetAll(ctx, &upstairsv1.ForgetAllRequest{})
			return err
		}, codes.OK},
	}
	var allowedCalls []call
	for _, f := range faults {
		if err := f.call(t, "operator/x"); wantRefused(t, f.proc, "operator/x", f.path, err) {
			refusedCalls = append(refusedCalls, call{f.proc, "operator/x", f.path})
		}
		err := f.call(t, "test/x")
		if status.Code(err) != f.want {
			t.Errorf("test/x calling %s: %v, want %v", f.path, err, f.want)
		}
		allowedCalls = append(allowedCalls, call{f.proc, "test/x", f.path})
	}

	checkAudit(t, st, refusedCalls, allowedCalls)
	checkHarnessAudited(t, st, disk, snap, clone)
	checkDeniedMetric(t, st, refusedCalls)
}

func validate(t *testing.T, admin orchestratorv1.AdminServiceClient) {
	t.Helper()
	resp, err := admin.ValidateSystem(context.Background(), &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Violations {
		t.Errorf("system %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
}

// viewerReads makes the reads a viewer is for, with its own certificate,
// and expects what the harness listed.
func viewerReads(t *testing.T, r *rack.Rack, want state) {
	st := r.Stack
	ctx := context.Background()
	const who = "viewer/x"
	vols := volumev1.NewVolumeServiceClient(dialAs(t, st, who, st.Addr(stack.Volume)))
	alloc := allocatorv1.NewRegionAllocatorServiceClient(dialAs(t, st, who, st.Addr(stack.Allocator)))
	notif := notifierv1.NewUpstairsNotifierServiceClient(dialAs(t, st, who, st.Addr(stack.Notifier)))
	orch := dialAs(t, st, who, st.Addr(stack.Orchestrator))
	admin := orchestratorv1.NewAdminServiceClient(orch)
	repl := orchestratorv1.NewReplacementServiceClient(orch)

	count := func(what string, n int, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("viewer %s: %v", what, err)
			return
		}
		if n != len(want[what]) {
			t.Errorf("viewer %s: %d, the harness listed %d", what, n, len(want[what]))
		}
	}
	v, err := vols.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: pageSize, IncludeDeleted: true})
	count("volumes", len(v.GetVolumes()), err)
	d, err := alloc.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: pageSize})
	count("physical disks", len(d.GetDisks()), err)
	a, err := notif.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{PageSize: pageSize})
	count("attachments", len(a.GetAttachments()), err)
	rp, err := repl.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: pageSize})
	count("replacements", len(rp.GetReplacements()), err)
	sg, err := admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: pageSize})
	count("sagas", len(sg.GetSagas()), err)
	if l, err := admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{}); err != nil || !l.IsLeader {
		t.Errorf("viewer GetLeadership: %v, %v", l, err)
	}
	if resp, err := admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{}); err != nil || len(resp.Violations) != 0 {
		t.Errorf("viewer ValidateSystem: %v, %v", resp, err)
	}
	if resp, err := vols.CheckInvariants(ctx, &volumev1.CheckInvariantsRequest{}); err != nil || len(resp.Violations) != 0 {
		t.Errorf("viewer CheckInvariants: %v, %v", resp, err)
	}
	t.Logf("viewer listed %d volumes, %d disks, %d attachments, %d replacements, %d sagas; GetLeadership, ValidateSystem and CheckInvariants answered",
		len(v.GetVolumes()), len(d.GetDisks()), len(a.GetAttachments()), len(rp.GetReplacements()), len(sg.GetSagas()))
}

// checkAudit expects, in each process's log, exactly one "audit" line with
// outcome "denied" per refused call (and no other refusal), one "allowed"
// line per allowed mutating call, and no audit line for a granted read.
func checkAudit(t *testing.T, st *stack.Stack, refusedCalls, allowedCalls []call) {
	t.Helper()
	type key struct{ caller, method, outcome string }
	for _, proc := range processes {
		got := map[key]int{}
		codesSeen := map[key]string{}
		denied := 0
		for _, l := range auditLines(t, st.Proc(proc)) {
			k := key{l.Caller, l.Method, l.Outcome}
			got[k]++
			codesSeen[k] = l.Code
			if l.Outcome == "denied" {
				denied++
			}
			if l.Caller == spiffeID("viewer/x") && l.Outcome == "allowed" {
				t.Errorf("%s audited the viewer's read %s: reads are not audited", proc, l.Method)
			}
		}
		want := 0
		wantEach := map[key]int{}
		for _, c := range refusedCalls {
			if c.proc == proc {
				want++
				wantEach[key{spiffeID(c.caller), c.path, "denied"}]++
			}
		}
		for k, n := range wantEach {
			if got[k] != n || codesSeen[k] != codes.PermissionDenied.String() {
				t.Errorf("%s: %d audit lines for %s refused %s (code %q), want %d (PermissionDenied)", proc, got[k], k.caller, k.method, codesSeen[k], n)
			}
		}
		if denied != want {
			t.Errorf("%s: %d audit lines with outcome denied, want %d (one per refused call)", proc, denied, want)
		}
		for _, c := range allowedCalls {
			if c.proc == proc && got[key{spiffeID(c.caller), c.path, "allowed"}] != 1 {
				t.Errorf("%s: %d audit lines for %s allowed %s, want 1", proc, got[key{spiffeID(c.caller), c.path, "allowed"}], c.caller, c.path)
			}
		}
		t.Logf("%s: %d audit lines of refusals, as many as refused calls", proc, denied)
	}
}

// checkHarnessAudited finds the audit lines of the fixture's own mutating
// calls: the harness's snapshot and clone requests at the orchestrator,
// and the orchestrator's CreateVolume of the clone at the volume-service,
// each "allowed" with the ids it named.
func checkHarnessAudited(t *testing.T, st *stack.Stack, disk, snap, clone string) {
	t.Helper()
	find := func(proc, caller, method, idField, id string) {
		t.Helper()
		for _, l := range auditLines(t, st.Proc(proc)) {
			if l.Caller == caller && l.Method == method && l.Outcome == "allowed" && l.Code == "OK" && fmt.Sprint(l.IDs[idField]) == id {
				t.Logf("%s audit: caller=%s method=%s outcome=%s code=%s ids=%v trace_id=%q", proc, l.Caller, l.Method, l.Outcome, l.Code, l.IDs, l.TraceID)
				return
			}
		}
		t.Errorf("%s: no audit line of %s allowed to call %s with %s=%s", proc, caller, method, idField, id)
	}
	harness := spiffeID(stack.HarnessID)
	find(stack.Orchestrator, harness, "/storage.orchestrator.v1.LifecycleService/SnapshotVolume", "volume_id", disk)
	find(stack.Orchestrator, harness, "/storage.orchestrator.v1.LifecycleService/CloneVolume", "snapshot_id", snap)
	find(stack.Volume, spiffeID("replacement-orchestrator"), "/storage.volume.v1.VolumeService/CreateVolume", "volume_id", clone)
}

// checkDeniedMetric expects, in each process's /metrics, the refusal
// counter at 1 for each refused (method, identity) and nothing else.
func checkDeniedMetric(t *testing.T, st *stack.Stack, refusedCalls []call) {
	t.Helper()
	for _, proc := range processes {
		samples := scrape(t, st.MetricsURL(proc), "storagecp_authz_denied_total")
		got := map[[2]string]float64{}
		for _, s := range samples {
			got[[2]string{s.Labels["method"], s.Labels["identity"]}] += s.Value
		}
		want := map[[2]string]float64{}
		for _, c := range refusedCalls {
			if c.proc == proc {
				want[[2]string{c.path, spiffeID(c.caller)}]++
			}
		}
		for k, n := range want {
			if got[k] != n {
				t.Errorf("%s: storagecp_authz_denied_total{method=%q,identity=%q} = %v, want %v", proc, k[0], k[1], got[k], n)
			}
		}
		for k, n := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("%s: unexpected storagecp_authz_denied_total{method=%q,identity=%q} = %v", proc, k[0], k[1], n)
			}
		}
		if len(samples) > 0 {
			t.Logf("%s: %d storagecp_authz_denied_total series, e.g. %v = %v", proc, len(samples), samples[0].Labels, samples[0].Value)
		}
	}
}

// keysOnlyForServices checks that no one who may merely look at a volume
// reads its encryption key: GetVolume refuses the full view
// (InvalidArgument naming the field) to everyone, and GetVolumeWithKeys,
// the one method that returns keys, is refused to viewers and operators.
// The harness's read through GetVolumeWithKeys holding a key shows the
// check looks at a populated field.
//
// It returns the refused calls it made, for the audit accounting.
func keysOnlyForServices(t *testing.T, r *rack.Rack, disk string) []call {
	ctx := context.Background()
	keyOf := func(v *volumev1.Volume) string {
		for _, sv := range v.GetVcr().GetVolume().GetSubVolumes() {
			if k := sv.GetRegion().GetOpts().GetKey(); k != "" {
				return k
			}
		}
		return ""
	}
	if g, err := r.Volumes.GetVolumeWithKeys(ctx, &volumev1.GetVolumeWithKeysRequest{VolumeId: disk}); err != nil || keyOf(g.GetVolume()) == "" {
		t.Fatalf("the harness's GetVolumeWithKeys of %s has no key (%v): nothing to check", disk, err)
	}
	var made []call
	for _, who := range []string{"viewer/x", "operator/x"} {
		c := volumev1.NewVolumeServiceClient(dialAs(t, r.Stack, who, r.Stack.Addr(stack.Volume)))
		g, err := c.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: disk, View: volumev1.VolumeView_VOLUME_VIEW_FULL})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "view") {
			t.Errorf("%s: GetVolume(view=FULL) = %v (key %d characters), want InvalidArgument naming view", who, err, len(keyOf(g.GetVolume())))
		}
		g, err = c.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: disk})
		if err != nil || keyOf(g.GetVolume()) != "" {
			t.Errorf("%s: GetVolume = %v, key %d characters; want the redacted volume", who, err, len(keyOf(g.GetVolume())))
		}
		const keys = "/storage.volume.v1.VolumeService/GetVolumeWithKeys"
		k, err := c.GetVolumeWithKeys(ctx, &volumev1.GetVolumeWithKeysRequest{VolumeId: disk})
		if !refused(who, keys, err) {
			t.Errorf("%s: GetVolumeWithKeys = %v (key %d characters), want PermissionDenied", who, err, len(keyOf(k.GetVolume())))
			continue
		}
		made = append(made, call{stack.Volume, who, keys})
	}
	return made
}
