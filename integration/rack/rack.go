// Package rack is the fixture of the end-to-end tests: a whole deployment
// (testsupport/stack) with a seeded rack and clients for every service, and the
// checks every test ends with.
package rack

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/testsupport/stack"
)

// Rack is a running deployment with clients for every service.
type Rack struct {
	Stack       *stack.Stack
	Volumes     volumev1.VolumeServiceClient
	Allocator   allocatorv1.RegionAllocatorServiceClient
	Notifier    notifierv1.UpstairsNotifierServiceClient
	Lifecycle   orchestratorv1.LifecycleServiceClient
	Replacement orchestratorv1.ReplacementServiceClient
	Admin       orchestratorv1.AdminServiceClient
	Sims        []upstairsv1.UpstairsServiceClient
}

// GiB is a gibibyte.
const GiB = 1 << 30

// Start starts the stack with every task period set to an hour, so
// anything that completes did so through activations, and seeds sleds.
func Start(t *testing.T, sleds, disksPerSled int, cfg stack.Config) *Rack {
	t.Helper()
	if cfg.SimUpstairs == 0 {
		cfg.SimUpstairs = 2
	}
	if cfg.ExtraArgs == nil {
		cfg.ExtraArgs = map[string][]string{}
	}
	cfg.ExtraArgs[stack.Orchestrator] = append([]string{"--task-period", "1h", "--lease-ttl", "2s"}, cfg.ExtraArgs[stack.Orchestrator]...)
	st := harness.Start(t, cfg)
	r := &Rack{
		Stack:       st,
		Volumes:     volumev1.NewVolumeServiceClient(harness.Dial(t, st, st.Addr(stack.Volume))),
		Allocator:   allocatorv1.NewRegionAllocatorServiceClient(harness.Dial(t, st, st.Addr(stack.Allocator))),
		Notifier:    notifierv1.NewUpstairsNotifierServiceClient(harness.Dial(t, st, st.Addr(stack.Notifier))),
		Lifecycle:   orchestratorv1.NewLifecycleServiceClient(harness.Dial(t, st, st.Addr(stack.Orchestrator))),
		Replacement: orchestratorv1.NewReplacementServiceClient(harness.Dial(t, st, st.Addr(stack.Orchestrator))),
		Admin:       orchestratorv1.NewAdminServiceClient(harness.Dial(t, st, st.Addr(stack.Orchestrator))),
	}
	for _, a := range st.SimUpstairsAddrs() {
		r.Sims = append(r.Sims, upstairsv1.NewUpstairsServiceClient(harness.Dial(t, st, a)))
	}
	ctx := context.Background()
	for s := 0; s < sleds; s++ {
		sled, err := r.Allocator.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprintf("sled-%d", s)})
		if err != nil {
			t.Fatal(err)
		}
		for d := 0; d < disksPerSled; d++ {
			if _, err := r.Allocator.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
				SledId: sled.Sled.SledId, CapacityBytes: 200 * GiB, DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::%x", 0x100+s, d+1),
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if cfg.Orchestrators <= 1 {
		r.WaitLeader(t, r.Admin)
	}
	return r
}

// StorctlTLS is storctl's --ca, --cert and --key for the identity
// spiffe://storagecp.local/<path> (stack.OperatorID, "viewer/x"), issued
// by the stack's CA: an operator's tool runs under an operator's identity,
// not the harness's.
func (r *Rack) StorctlTLS(t *testing.T, path string) []string {
	t.Helper()
	id, err := r.Stack.Identity(path)
	if err != nil {
		t.Fatal(err)
	}
	return []string{"--ca", r.Stack.CA().BundlePath(), "--cert", id.Cert, "--key", id.Key}
}

// WaitLeader waits until the orchestrator behind admin leads and is ready.
func (r *Rack) WaitLeader(t *testing.T, admin orchestratorv1.AdminServiceClient) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "orchestrator leads", func() error {
		l, err := admin.GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
		if err != nil {
			return err
		}
		if !l.IsLeader {
			return fmt.Errorf("not leader yet: %+v", l)
		}
		return nil
	})
}

func WantSucceeded(t *testing.T, what string, s *orchestratorv1.SagaResult) {
	t.Helper()
	if s.GetOutcome() != orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED {
		t.Fatalf("%s: saga %s ended %v at %s: %s", what, s.GetSagaId(), s.GetOutcome(), s.GetFailedNode(), s.GetError())
	}
}

func (r *Rack) CreateDisk(t *testing.T) string {
	t.Helper()
	resp, err := r.Lifecycle.CreateVolume(context.Background(), &orchestratorv1.CreateVolumeRequest{SizeBytes: GiB, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	WantSucceeded(t, "create disk", resp.Saga)
	return resp.VolumeId
}

func (r *Rack) Snapshot(t *testing.T, disk string) string {
	t.Helper()
	resp, err := r.Lifecycle.SnapshotVolume(context.Background(), &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	WantSucceeded(t, "snapshot", resp.Saga)
	return resp.SnapshotId
}

func (r *Rack) Clone(t *testing.T, snap string) string {
	t.Helper()
	resp, err := r.Lifecycle.CloneVolume(context.Background(), &orchestratorv1.CloneVolumeRequest{SnapshotId: snap, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	WantSucceeded(t, "clone", resp.Saga)
	return resp.VolumeId
}

func (r *Rack) DeleteVolume(t *testing.T, id string) {
	t.Helper()
	resp, err := r.Lifecycle.DeleteVolume(context.Background(), &orchestratorv1.DeleteVolumeRequest{VolumeId: id, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	WantSucceeded(t, "delete "+id, resp.Saga)
}

// Construct builds a volume on sim-upstairs i through the notifier.
func (r *Rack) Construct(t *testing.T, volume string, sim int) *notifierv1.Attachment {
	t.Helper()
	resp, err := r.Notifier.ConstructVolume(context.Background(), &notifierv1.ConstructVolumeRequest{
		VolumeId: volume, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: r.Stack.UpstairsEndpoints()[sim],
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Attachment.State != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
		t.Fatalf("attachment %+v", resp.Attachment)
	}
	return resp.Attachment
}

// Targets returns a volume's registered targets of a kind.
func (r *Rack) Targets(t *testing.T, volume string, kind commonv1.TargetKind) []*commonv1.Target {
	t.Helper()
	resp, err := r.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	var out []*commonv1.Target
	for _, tg := range resp.Volume.Targets {
		if tg.Kind == kind {
			out = append(out, tg)
		}
	}
	return out
}

// DiskOf returns the physical disk holding a dataset.
func (r *Rack) DiskOf(t *testing.T, dataset string) string {
	t.Helper()
	resp, err := r.Allocator.ListPhysicalDisks(context.Background(), &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range resp.Disks {
		if d.DatasetId == dataset {
			return d.DiskId
		}
	}
	t.Fatalf("no disk holds dataset %s", dataset)
	return ""
}

// Expunge expunges a disk and tells the orchestrator's detectors, as
// `storctl disks expunge` does.
func (r *Rack) Expunge(t *testing.T, disk string) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: disk}); err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}
}

// RestartOrchestrator stops the (first) orchestrator and starts it again
// with extra environment (a crash point, say), then waits for it to lead.
func (r *Rack) RestartOrchestrator(t *testing.T, env ...string) {
	t.Helper()
	p := r.Stack.Proc(stack.Orchestrator)
	p.Stop(10 * time.Second)
	if err := p.RestartWithEnv(env...); err != nil {
		t.Fatal(err)
	}
	r.WaitLeader(t, r.Admin)
}

// ExpectEmpty asserts that no region, region snapshot, registered target,
// volume or repair lock is left in any service.
func (r *Rack) ExpectEmpty(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	regions, err := r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	snaps, err := r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	targets, err := r.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	vols, err := r.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true})
	if err != nil {
		t.Fatal(err)
	}
	locks, err := r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(regions.Regions) + len(snaps.RegionSnapshots) + len(targets.Targets) + len(vols.Volumes) + len(locks.Locks); n != 0 {
		t.Errorf("left behind: %d regions, %d region snapshots, %d targets, %d volumes, %d locks",
			len(regions.Regions), len(snaps.RegionSnapshots), len(targets.Targets), len(vols.Volumes), len(locks.Locks))
		for _, v := range vols.Volumes {
			t.Logf("volume %s deleted=%v targets=%d", v.VolumeId, v.TimeDeleted != nil, len(v.Targets))
		}
		for _, g := range regions.Regions {
			t.Logf("region %s for %s on dataset %s", g.RegionId, g.AllocatedFor, g.DatasetId)
		}
	}
}

// Terminal reports whether a replacement request (read-only or rw) ended.
func Terminal(rep *orchestratorv1.Replacement) bool {
	if rep.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
		switch rep.RegionState {
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DATA_LOST,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_NEEDS_OPERATOR,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_CANCELLED:
			return true
		}
		return false
	}
	s := rep.ReadOnlyState
	return s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE ||
		s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST ||
		s == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED
}

// WaitRequests waits until every read-only request is terminal and returns
// them.
func (r *Rack) WaitRequests(t *testing.T, timeout time.Duration) []*orchestratorv1.Replacement {
	t.Helper()
	var out []*orchestratorv1.Replacement
	harness.Eventually(t, timeout, "every replacement terminal", func() error {
		resp, err := r.Replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if len(resp.Replacements) == 0 {
			return fmt.Errorf("no request yet")
		}
		for _, rep := range resp.Replacements {
			if !Terminal(rep) {
				return fmt.Errorf("%v request %s is %v%v", rep.Kind, rep.ReplacementId, rep.ReadOnlyState, rep.RegionState)
			}
		}
		out = resp.Replacements
		return nil
	})
	return out
}

func (r *Rack) Invariants(t *testing.T) {
	t.Helper()
	resp, err := r.Volumes.CheckInvariants(context.Background(), &volumev1.CheckInvariantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Violations {
		t.Errorf("invariant %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
}

// Validate waits for the sagas to settle and expects ValidateSystem empty.
func (r *Rack) Validate(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := r.Admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Violations {
		t.Errorf("system %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
}

// NoDataLoss expects both oracles of every sim-upstairs clean: no probe
// found a target of a running volume destroyed (liveness), and no running
// volume read other content than its positions held, had copies that
// disagree or a position it could no longer read (content).
func (r *Rack) NoDataLoss(t *testing.T) {
	t.Helper()
	for i, s := range r.Sims {
		resp, err := s.ListVolumes(context.Background(), &upstairsv1.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.TotalDataLossEvents != 0 {
			t.Errorf("sim-upstairs-%d saw %d data-loss probes", i, resp.TotalDataLossEvents)
		}
		if resp.TotalContentMismatchEvents != 0 {
			t.Errorf("sim-upstairs-%d saw %d content mismatches", i, resp.TotalContentMismatchEvents)
			for _, v := range resp.Volumes {
				for _, m := range v.ContentMismatches {
					t.Logf("volume %s: %v at %s on %v: expected %q, read %q", v.VolumeId, m.Kind, m.Position, m.Addresses, m.Expected, m.Observed)
				}
			}
		}
	}
}

// ContentMismatches returns the content-mismatch total of every sim-upstairs
// and the violations of the volumes each still runs.
func (r *Rack) ContentMismatches(t *testing.T) (total int64, found []*upstairsv1.ContentMismatch) {
	t.Helper()
	for _, s := range r.Sims {
		resp, err := s.ListVolumes(context.Background(), &upstairsv1.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		total += resp.TotalContentMismatchEvents
		for _, v := range resp.Volumes {
			found = append(found, v.ContentMismatches...)
		}
	}
	return total, found
}

// UpstairsCurrent checks, at rest, that every attachment the notifier has
// running on a sim-upstairs is served there on exactly the targets its
// volume names now. An Upstairs left on an older VCR refuses every later
// replacement of the volume (two targets would differ) and reads from freed
// targets; one that lost the volume no longer serves its consumer.
func (r *Rack) UpstairsCurrent(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	sims := map[string]upstairsv1.UpstairsServiceClient{}
	for i, a := range r.Stack.UpstairsEndpoints() {
		sims[a] = r.Sims[i]
	}
	token := ""
	for {
		resp, err := r.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range resp.Attachments {
			if sim := sims[a.Endpoint]; sim != nil && (a.State == notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING ||
				a.State == notifierv1.AttachmentState_ATTACHMENT_STATE_REBOOTING) {
				r.servedCurrent(t, sim, a)
			}
		}
		if token = resp.NextPageToken; token == "" {
			return
		}
	}
}

func (r *Rack) servedCurrent(t *testing.T, sim upstairsv1.UpstairsServiceClient, a *notifierv1.Attachment) {
	t.Helper()
	ctx := context.Background()
	vol, err := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: a.VolumeId})
	if status.Code(err) == codes.NotFound {
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	st, err := sim.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: a.VolumeId})
	if err != nil {
		t.Errorf("attachment %s (%s) of volume %s is running at %s: %v", a.AttachmentId, a.Kind, a.VolumeId, a.Endpoint, err)
		return
	}
	want := map[string]bool{}
	for _, tg := range vol.Volume.Targets {
		want[tg.Address] = true
	}
	got := map[string]bool{}
	for _, d := range st.Status.Downstairs {
		got[d.Address] = true
	}
	if !maps.Equal(got, want) {
		t.Errorf("%s runs volume %s on %v; the volume names %v",
			a.Endpoint, a.VolumeId, slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
}

// UseOrchestrator points the rack's orchestrator clients (Lifecycle,
// Replacement, Admin) at another orchestrator process: the one leading
// after a failover, when the first is cut off.
func (r *Rack) UseOrchestrator(t *testing.T, proc string) {
	t.Helper()
	conn := harness.Dial(t, r.Stack, r.Stack.Addr(proc))
	r.Lifecycle = orchestratorv1.NewLifecycleServiceClient(conn)
	r.Replacement = orchestratorv1.NewReplacementServiceClient(conn)
	r.Admin = orchestratorv1.NewAdminServiceClient(conn)
}
