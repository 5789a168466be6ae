// Package scenarios runs the numbered replacement scenarios (TestScenarioNN;
// docs/testing.md, "Layer 4: integration tests over real processes") over
// real processes: PostgreSQL, the four
// services and two sim-upstairs. Every task period is an hour, so a
// replacement advances only through activations — the ones the test makes
// and the ones each phase makes of the next. The comment of each test says
// which interleaving it exercises and how it is forced.
//
// Every test ends with the request(s) terminal, CheckInvariants and
// ValidateSystem empty and no data-loss probe on any sim-upstairs; then it
// deletes every remaining user object and expects nothing left in any
// service: no region, region snapshot, registered target or volume.
package scenarios

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// Short names for the read-only request and step states.
const (
	roRequested       = orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REQUESTED
	roReplacementDone = orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REPLACEMENT_DONE
	roDeletingOld     = orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DELETING_OLD_VOLUME
	roRunning         = orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_RUNNING
	roComplete        = orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE
	roDataLost        = orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST

	stepRequested     = orchestratorv1.StepState_STEP_STATE_REQUESTED
	stepVolumeDeleted = orchestratorv1.StepState_STEP_STATE_VOLUME_DELETED

	kindRegionSnapshot = commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT
	kindRORegion       = commonv1.TargetKind_TARGET_KIND_RO_REGION
)

// world is the scenarios' harness (names as in docs/replacement.md, "The
// cast"): disk D, snapshot P of D, disk F cloned from
// P, and A = the region snapshot of D's first region (named by both P's and
// F's volume). Users lists the user objects still to delete at the end,
// snapshots last (a disk's volume is kept while its regions are pinned by a
// snapshot's region snapshots).
type world struct {
	*rack.Rack
	ctx     context.Context
	D, P, F string
	A       *commonv1.Target

	faults   allocatorv1.AgentFaultServiceClient
	upFaults []upstairsv1.UpstairsFaultServiceClient

	disks     []string // user disks (D, clones) not yet deleted
	snapshots []string // user snapshots not yet deleted
	attached  map[string]string
}

// newWorld starts a rack of sleds×1 disk and builds D, P and F.
func newWorld(t *testing.T, sleds int) *world {
	t.Helper()
	// The scenarios choreograph single steps (a step held Requested while
	// F migrates, retired when F goes away): they run the per-volume path
	// they were written for. The batch saga meets the same user operations
	// in sagadef's interleavings harness and its own tests.
	cfg := stack.Config{ExtraArgs: map[string][]string{stack.Orchestrator: {"--step-batch=0"}}}
	if dir := os.Getenv("STORAGECP_SCENARIO_LOGS"); dir != "" {
		// Keep the processes' logs past the test (t.TempDir is removed).
		cfg.LogDir = filepath.Join(dir, t.Name())
	}
	w := &world{Rack: rack.Start(t, sleds, 1, cfg), ctx: context.Background(), attached: map[string]string{}}
	w.faults = allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, w.Stack, w.Stack.Addr(stack.Allocator)))
	for _, a := range w.Stack.SimUpstairsAddrs() {
		w.upFaults = append(w.upFaults, upstairsv1.NewUpstairsFaultServiceClient(harness.Dial(t, w.Stack, a)))
	}
	w.D = w.CreateDisk(t)
	w.P = w.Snapshot(t, w.D)
	w.F = w.Clone(t, w.P)
	t.Cleanup(func() {
		if t.Failed() {
			w.dump(t)
		}
	})
	w.disks = []string{w.D, w.F}
	w.snapshots = []string{w.P}
	w.A = w.Targets(t, w.P, kindRegionSnapshot)[0]
	if !slices.Contains(targetIDs(t, w, w.F), w.A.TargetId) {
		t.Fatalf("F does not name A %s", w.A.TargetId)
	}
	return w
}

func (w *world) clone(t *testing.T) string {
	t.Helper()
	c := w.Clone(t, w.P)
	w.disks = append(w.disks, c)
	return c
}

// construct builds a volume on sim-upstairs i and remembers the attachment
// so that the end detaches it before deleting the volume.
func (w *world) construct(t *testing.T, volume string, sim int, readOnly bool) *notifierv1.Attachment {
	t.Helper()
	resp, err := w.Notifier.ConstructVolume(w.ctx, &notifierv1.ConstructVolumeRequest{
		VolumeId: volume, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: w.Stack.SimUpstairsAddrs()[sim], ReadOnly: readOnly,
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Attachment.State != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
		t.Fatalf("attachment %+v", resp.Attachment)
	}
	w.attached[volume] = resp.Attachment.AttachmentId
	return resp.Attachment
}

func (w *world) setState(t *testing.T, volume string, s notifierv1.AttachmentState) {
	t.Helper()
	if _, err := w.Notifier.SetUpstairsState(w.ctx, &notifierv1.SetUpstairsStateRequest{AttachmentId: w.attached[volume], State: s}); err != nil {
		t.Fatalf("set %s %v: %v", volume, s, err)
	}
}

func (w *world) detach(t *testing.T, volume string) {
	t.Helper()
	id, ok := w.attached[volume]
	if !ok {
		return
	}
	if _, err := w.Notifier.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: id}); err != nil {
		t.Fatalf("detach %s: %v", volume, err)
	}
	delete(w.attached, volume)
}

// deleteUser detaches (if attached) and deletes a user volume.
func (w *world) deleteUser(t *testing.T, volume string) {
	t.Helper()
	w.detach(t, volume)
	w.DeleteVolume(t, volume)
	w.disks = slices.DeleteFunc(w.disks, func(s string) bool { return s == volume })
	w.snapshots = slices.DeleteFunc(w.snapshots, func(s string) bool { return s == volume })
}

func (w *world) activate(t *testing.T, tasks ...string) {
	t.Helper()
	for _, task := range tasks {
		if _, err := w.Admin.ActivateBackgroundTask(w.ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatalf("activate %s: %v", task, err)
		}
	}
}

func (w *world) waitIdle(t *testing.T) {
	t.Helper()
	if _, err := w.Admin.WaitIdle(w.ctx, &orchestratorv1.WaitIdleRequest{Timeout: durationpb.New(60 * time.Second)}); err != nil {
		t.Fatal(err)
	}
}

// request asks for the replacement of a read-only target by hand.
func (w *world) request(t *testing.T, target string) string {
	t.Helper()
	resp, err := w.Replacement.RequestReplacement(w.ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target})
	if err != nil {
		t.Fatalf("request replacement of %s: %v", target, err)
	}
	return resp.Replacement.ReplacementId
}

func (w *world) get(t *testing.T, id string) *orchestratorv1.GetReplacementResponse {
	t.Helper()
	resp, err := w.Replacement.GetReplacement(w.ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// waitState waits until request id is in one of states and returns it.
func (w *world) waitState(t *testing.T, id string, timeout time.Duration, states ...orchestratorv1.ReadOnlyReplacementState) *orchestratorv1.GetReplacementResponse {
	t.Helper()
	return w.waitStateWith(t, id, timeout, true, states...)
}

// waitStatePassive is waitState without the later passes: only what the
// request's own phases activate runs.
func (w *world) waitStatePassive(t *testing.T, id string, timeout time.Duration, states ...orchestratorv1.ReadOnlyReplacementState) *orchestratorv1.GetReplacementResponse {
	t.Helper()
	return w.waitStateWith(t, id, timeout, false, states...)
}

func (w *world) waitStateWith(t *testing.T, id string, timeout time.Duration, passes bool, states ...orchestratorv1.ReadOnlyReplacementState) *orchestratorv1.GetReplacementResponse {
	t.Helper()
	var out *orchestratorv1.GetReplacementResponse
	harness.Eventually(t, timeout, fmt.Sprintf("request %s in %v", id, states), func() error {
		if !passes {
			return w.isIn(id, states, &out)
		}
		// The later passes the period would make (an hour here): an unwound
		// saga is retried only on a later pass, and a step's completion can
		// be missed by the very activation it triggers (see
		// TestStepCompletionCollectedWithoutPeriod).
		for _, task := range []string{"ro_replacement_start", "ro_replacement_step", "ro_replacement_finish"} {
			_, _ = w.Admin.ActivateBackgroundTask(w.ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task})
		}
		resp, err := w.Replacement.GetReplacement(w.ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id})
		if err != nil {
			return err
		}
		if !slices.Contains(states, resp.Replacement.ReadOnlyState) {
			return fmt.Errorf("state %v", resp.Replacement.ReadOnlyState)
		}
		out = resp
		return nil
	})
	return out
}

// stepOf returns the request's latest step for a volume, or nil.
func stepOf(resp *orchestratorv1.GetReplacementResponse, volume string) *orchestratorv1.Step {
	var out *orchestratorv1.Step
	for _, s := range resp.Steps {
		if s.VolumeId == volume {
			out = s
		}
	}
	return out
}

// failedSagas counts the sagas of a template that ended unwound (outcome
// "failed"), optionally only those working on subject.
func (w *world) failedSagas(t *testing.T, template, subject string) int {
	t.Helper()
	return w.sagasEnded(t, template, subject, "failed")
}

// sagasEnded counts the sagas of a template that ended with outcome
// ("succeeded", "failed", "stuck"), optionally only those working on
// subject.
func (w *world) sagasEnded(t *testing.T, template, subject, outcome string) int {
	t.Helper()
	n := 0
	token := ""
	for {
		resp, err := w.Admin.ListSagas(w.ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Sagas {
			if s.Name != template || s.State != orchestratorv1.SagaState_SAGA_STATE_DONE || (subject != "" && s.SubjectId != subject) {
				continue
			}
			// The list leaves the outcome out; the saga view has it.
			g, err := w.Admin.GetSaga(w.ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
			if err != nil {
				t.Fatal(err)
			}
			if g.Saga.Outcome == outcome {
				n++
			}
		}
		if token = resp.NextPageToken; token == "" {
			return n
		}
	}
}

// waitFailedSagas waits until at least n sagas of template failed.
func (w *world) waitFailedSagas(t *testing.T, template, subject string, n int) {
	t.Helper()
	harness.Eventually(t, 60*time.Second, fmt.Sprintf("%d failed %s sagas", n, template), func() error {
		if got := w.failedSagas(t, template, subject); got < n {
			return fmt.Errorf("%d failed", got)
		}
		return nil
	})
	w.waitIdle(t)
}

func targetIDs(t *testing.T, w *world, volume string) []string {
	t.Helper()
	resp, err := w.Volumes.GetVolume(w.ctx, &volumev1.GetVolumeRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, tg := range resp.Volume.Targets {
		ids = append(ids, tg.TargetId)
	}
	return ids
}

// wantNames checks that a volume names target want and not old.
func (w *world) wantNames(t *testing.T, volume, old, want string) {
	t.Helper()
	ids := targetIDs(t, w, volume)
	if slices.Contains(ids, old) || !slices.Contains(ids, want) {
		t.Errorf("volume %s targets %v: want %s instead of %s", volume, ids, want, old)
	}
}

// wantGone checks that a target is no longer registered (nor DELETING).
func (w *world) wantGone(t *testing.T, target string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "target "+target+" unregistered", func() error {
		resp, err := w.Volumes.GetTarget(w.ctx, &volumev1.GetTargetRequest{TargetId: target})
		if err == nil {
			return fmt.Errorf("still registered: %v", resp.Target)
		}
		return nil
	})
}

// wantAlive checks that a target is registered ACTIVE with references.
func (w *world) wantAlive(t *testing.T, target string) *commonv1.Target {
	t.Helper()
	resp, err := w.Volumes.GetTarget(w.ctx, &volumev1.GetTargetRequest{TargetId: target, IncludeReferenceCount: true})
	if err != nil {
		t.Fatalf("target %s: %v", target, err)
	}
	if resp.Target.State != commonv1.TargetState_TARGET_STATE_ACTIVE || resp.Target.ReferenceCount < 1 {
		t.Fatalf("target %s is %v with %d references", target, resp.Target.State, resp.Target.ReferenceCount)
	}
	return resp.Target
}

// runs reports the downstairs addresses sim-upstairs i runs a volume with.
func (w *world) runs(t *testing.T, sim int, volume string) []string {
	t.Helper()
	st, err := w.Sims[sim].GetVolumeStatus(w.ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range st.Status.Downstairs {
		out = append(out, d.Address)
	}
	return out
}

// requestHeldInRequested requests the replacement of target with every
// ro-replacement-start saga failing at its region ensure (the agent refuses to create
// regions; nothing else the tests run meanwhile ensures regions), and waits
// until the first one unwound: the request is Requested with nothing
// allocated, and stays so until unblockStart (the start task is only
// activated by the request itself and by later deletes, whose sagas fail
// the same way).
func (w *world) requestHeldInRequested(t *testing.T, target string) string {
	t.Helper()
	if _, err := w.faults.InjectAgentFault(w.ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 100000, Fail: true,
	}); err != nil {
		t.Fatal(err)
	}
	id := w.request(t, target)
	w.waitFailedSagas(t, "ro-replacement-start", id, 1)
	if got := w.get(t, id).Replacement; got.ReadOnlyState != roRequested || got.NewRegionId != "" {
		t.Fatalf("request after a failed start: %+v", got)
	}
	return id
}

// unblockStart clears the agent faults.
func (w *world) unblockStart(t *testing.T) {
	t.Helper()
	if _, err := w.faults.ClearAgentFaults(w.ctx, &allocatorv1.ClearAgentFaultsRequest{}); err != nil {
		t.Fatal(err)
	}
}

// allRequestsTerminal waits until every read-only and rw request is
// terminal.
func (w *world) allRequestsTerminal() error {
	token := ""
	for {
		resp, err := w.Replacement.ListReplacements(w.ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return err
		}
		for _, q := range resp.Replacements {
			if q.Kind == orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION {
				if q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
					return fmt.Errorf("rw request %s is %v", q.ReplacementId, q.RegionState)
				}
				continue
			}
			if q.ReadOnlyState != roComplete && q.ReadOnlyState != roDataLost {
				return fmt.Errorf("request %s is %v", q.ReplacementId, q.ReadOnlyState)
			}
		}
		if token = resp.NextPageToken; token == "" {
			return nil
		}
	}
}

// onExpunged lists what still lives on expunged disks.
func (w *world) onExpunged(t *testing.T) []string {
	t.Helper()
	resp, err := w.Allocator.ListPhysicalDisks(w.ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range resp.Disks {
		if d.Policy != allocatorv1.Policy_POLICY_EXPUNGED {
			continue
		}
		if d.RegionCount != 0 || d.RegionSnapshotCount != 0 {
			out = append(out, fmt.Sprintf("disk %s: %d regions, %d region snapshots", d.DiskId, d.RegionCount, d.RegionSnapshotCount))
		}
	}
	return out
}

// drain runs the replacement tasks until no region or region snapshot is
// left on an expunged disk and every request is terminal.
func (w *world) drain(t *testing.T, timeout time.Duration) {
	t.Helper()
	harness.Eventually(t, timeout, "drained", func() error {
		for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector", "ro_replacement_start", "ro_replacement_step", "ro_replacement_finish"} {
			_, _ = w.Admin.ActivateBackgroundTask(w.ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task})
		}
		if left := w.onExpunged(t); len(left) > 0 {
			return fmt.Errorf("on expunged disks: %s", strings.Join(left, "; "))
		}
		return w.allRequestsTerminal()
	})
	w.waitIdle(t)
}

// expungeDiskOf expunges the disk holding a dataset (the detectors are
// activated by drain).
func (w *world) expungeDiskOf(t *testing.T, dataset string) string {
	t.Helper()
	disk := w.DiskOf(t, dataset)
	w.Expunge(t, disk)
	return disk
}

// checks are the checks every scenario ends its run with.
func (w *world) checks(t *testing.T) {
	t.Helper()
	w.waitIdle(t)
	w.Invariants(t)
	w.Validate(t)
	w.NoDataLoss(t)
	w.UpstairsCurrent(t)
	locks, err := w.Replacement.ListLocks(w.ctx, &orchestratorv1.ListLocksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(locks.Locks) != 0 {
		t.Errorf("locks left: %v", locks.Locks)
	}
}

// finish deletes every remaining user object (detaching constructed ones
// first; disks before snapshots), drains the sagas and expects nothing left
// in any service.
func (w *world) finish(t *testing.T, extra ...string) {
	t.Helper()
	w.checks(t)
	for v := range w.attached {
		w.detach(t, v)
	}
	for _, v := range append(append(append([]string(nil), extra...), w.disks...), w.snapshots...) {
		w.DeleteVolume(t, v)
	}
	// A disk kept while its regions were pinned is freed by the snapshot's
	// delete; deleting again is safe and covers any other order.
	for _, v := range w.disks {
		w.DeleteVolume(t, v)
	}
	w.disks, w.snapshots = nil, nil
	w.waitIdle(t)
	expectEmpty(t, w)
	w.Invariants(t)
	w.Validate(t)
	w.NoDataLoss(t)
}

// expectEmpty expects no region, region snapshot, registered target or
// volume (soft-deleted ones included) left in any service.
func expectEmpty(t *testing.T, w *world) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "nothing left in any service", func() error {
		var left []string
		regions, err := w.Allocator.ListRegions(w.ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, r := range regions.Regions {
			left = append(left, fmt.Sprintf("region %s (ro=%v, for %s, disk %s)", r.RegionId, r.ReadOnly, r.AllocatedFor, r.DiskId))
		}
		rs, err := w.Allocator.ListRegionSnapshots(w.ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, s := range rs.RegionSnapshots {
			left = append(left, fmt.Sprintf("region snapshot %s", s.TargetId))
		}
		targets, err := w.Volumes.ListTargets(w.ctx, &volumev1.ListTargetsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, tg := range targets.Targets {
			left = append(left, fmt.Sprintf("target %s (%v %v, owner %s, refs %d)", tg.TargetId, tg.Kind, tg.State, tg.OwnerVolumeId, tg.ReferenceCount))
		}
		vols, err := w.Volumes.ListVolumes(w.ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true})
		if err != nil {
			return err
		}
		for _, v := range vols.Volumes {
			left = append(left, fmt.Sprintf("volume %s (deleted=%v)", v.VolumeId, v.TimeDeleted != nil))
		}
		if len(left) > 0 {
			return fmt.Errorf("left: %s", strings.Join(left, "; "))
		}
		return nil
	})
}

// blankVolume creates an empty volume in the volume-service (the shape of
// the sagas' stash volumes), e.g. the temporary volume RemoveReadOnlyParent
// moves a read-only parent into.
func (w *world) blankVolume(t *testing.T) string {
	t.Helper()
	id := uuid.NewString()
	if _, err := w.Volumes.CreateVolume(w.ctx, &volumev1.CreateVolumeRequest{
		VolumeId: id,
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{
			Volume: &commonv1.VcrVolume{Id: id, BlockSize: 512},
		}},
	}); err != nil {
		t.Fatal(err)
	}
	return id
}

func volumeReq(id string) *volumev1.GetVolumeRequest { return &volumev1.GetVolumeRequest{VolumeId: id} }

// taskStatusContains checks that a task's last status mentions s.
func (w *world) taskStatusContains(task, s string) error {
	tasks, err := w.Admin.ListBackgroundTasks(w.ctx, &orchestratorv1.ListBackgroundTasksRequest{})
	if err != nil {
		return err
	}
	for _, tk := range tasks.Tasks {
		if tk.Name == task {
			if strings.Contains(tk.LastStatusJson, s) {
				return nil
			}
			return fmt.Errorf("%s status %s does not mention %q", task, tk.LastStatusJson, s)
		}
	}
	return fmt.Errorf("no task %s", task)
}

// dump logs the task statuses, requests and steps (on failure).
func (w *world) dump(t *testing.T) {
	ctx := context.Background()
	if tasks, err := w.Admin.ListBackgroundTasks(ctx, &orchestratorv1.ListBackgroundTasksRequest{}); err == nil {
		for _, tk := range tasks.Tasks {
			t.Logf("task %s (%d activations): %s", tk.Name, tk.Activations, tk.LastStatusJson)
		}
	}
	if reqs, err := w.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000}); err == nil {
		for _, q := range reqs.Replacements {
			t.Logf("request %s %v %v/%v target %s new %s saga %s", q.ReplacementId, q.Kind, q.ReadOnlyState, q.RegionState, q.OldTargetId, q.NewRegionId, q.OperatingSagaId)
		}
	}
	if steps, err := w.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{PageSize: 1000}); err == nil {
		for _, s := range steps.Steps {
			t.Logf("step %s of %s: volume %s %v saga %s", s.StepId, s.ReplacementId, s.VolumeId, s.State, s.OperatingSagaId)
		}
	}
	if locks, err := w.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{PageSize: 1000}); err == nil {
		for _, l := range locks.Locks {
			t.Logf("lock on %s by %s (%s)", l.VolumeId, l.RepairId, l.HolderKind)
		}
	}
	if tg, err := w.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000}); err == nil {
		for _, x := range tg.Targets {
			t.Logf("target %s %v %v owner %s refs %d", x.TargetId, x.Kind, x.State, x.OwnerVolumeId, x.ReferenceCount)
		}
	}
}

func (w *world) isIn(id string, states []orchestratorv1.ReadOnlyReplacementState, out **orchestratorv1.GetReplacementResponse) error {
	resp, err := w.Replacement.GetReplacement(w.ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id})
	if err != nil {
		return err
	}
	if !slices.Contains(states, resp.Replacement.ReadOnlyState) {
		return fmt.Errorf("state %v", resp.Replacement.ReadOnlyState)
	}
	*out = resp
	return nil
}
