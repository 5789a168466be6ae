package sagadef_test

import (
	"context"
	"sort"
	"testing"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// harness of the read-only replacement tests (names as in docs/replacement.md,
// "The cast"): a disk D, its snapshot P, a clone F.
type roHarness struct {
	e             *testenv.Env
	disk, snap, f uuid.UUID
	snapshots     []*commonv1.Target // P's region snapshots, by address
}

func newROHarness(t *testing.T, e *testenv.Env) *roHarness {
	t.Helper()
	h := &roHarness{e: e, disk: createDisk(t, e)}
	h.snap = snapshot(t, e, h.disk)
	h.f = uuid.New()
	e.MustSucceed(t, sagadef.VolumeClone, sagadef.RegionSetParams{VolumeID: h.f, SnapshotID: &h.snap})
	h.snapshots = volumeTargets(t, e, h.snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
	return h
}

func volumeTargets(t testing.TB, e *testenv.Env, v uuid.UUID, kind commonv1.TargetKind) []*commonv1.Target {
	t.Helper()
	resp, err := e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: v.String()})
	if err != nil {
		t.Fatal(err)
	}
	var out []*commonv1.Target
	for _, tg := range resp.Volume.Targets {
		if kind == commonv1.TargetKind_TARGET_KIND_UNSPECIFIED || tg.Kind == kind {
			out = append(out, tg)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out
}

// request inserts a request for P's i-th region snapshot.
func (h *roHarness) request(t testing.TB, i int) store.ROReplacement {
	t.Helper()
	tg := h.snapshots[i]
	ds := uuid.MustParse(tg.DatasetId)
	r, _, err := h.e.Store.InsertROReplacement(context.Background(), store.ROReplacement{
		ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.MustParse(tg.TargetId),
		OldRegionID: uuid.MustParse(tg.RegionId), OldDatasetID: &ds, OldSnapshotID: h.snap, LockVolumeID: h.snap,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func startParamsOf(r store.ROReplacement) sagadef.StartParams {
	return sagadef.StartParams{
		RequestID: r.ID, Kind: string(r.Kind), OldTargetID: r.OldTargetID, OldRegionID: r.OldRegionID,
		OldSnapshotID: r.OldSnapshotID, OldDatasetID: r.OldDatasetID,
	}
}

func getRequest(t testing.TB, e *testenv.Env, id uuid.UUID) store.ROReplacement {
	t.Helper()
	r, err := e.Store.GetROReplacement(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func regionsFor(t testing.TB, e *testenv.Env, v uuid.UUID) []*allocatorv1.Region {
	t.Helper()
	rs, err := e.Allocator.ListRegions(context.Background(), &allocatorv1.ListRegionsRequest{AllocatedFor: v.String(), PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return rs.Regions
}

// Scenario 9: the start saga's happy path.
func TestROStartHappyPath(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r := h.request(t, 0)
	e.MustSucceed(t, sagadef.ROStart, startParamsOf(r))
	got := getRequest(t, e, r.ID)
	if got.State != store.ROReplacementDone || got.OperatingSagaID != nil || got.NewRegionID == nil ||
		got.NewRegionVolumeID == nil || got.OldSnapshotVolumeID == nil {
		t.Fatalf("request %+v", got)
	}
	if n := len(regionsFor(t, e, h.disk)); n != 3 {
		t.Fatalf("disk has %d regions", n)
	}
	ro := regionsFor(t, e, h.snap)
	if len(ro) != 1 || !ro[0].ReadOnly || ro[0].RegionId != got.NewRegionID.String() {
		t.Fatalf("snapshot volume regions %v", ro)
	}
	ref, err := e.Volumes.FindVolumesReferencingTarget(context.Background(), &volumev1.FindVolumesReferencingTargetRequest{TargetId: got.NewRegionID.String()})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, v := range ref.Volumes {
		names = append(names, v.VolumeId)
	}
	if !contains(names, h.snap.String()) {
		t.Fatalf("snapshot volume not among volumes referencing the new region: %v", names)
	}
	invariantsHold(t, e)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Scenarios 10–12: every action twice; an error at each node unwinds to the
// state before (request Requested with no new region, snapshot VCR as it
// was, no region or target left); the same with the first undo twice.
func TestROStartHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	{
		h := newROHarness(t, e)
		o := sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROStart, startParamsOf(h.request(t, 0)))
		_ = o
	}
	var h *roHarness
	var req store.ROReplacement
	var before world
	var snapTargets []*commonv1.Target
	setup := func() any {
		h = newROHarness(t, e)
		req = h.request(t, 0)
		before = census(t, e)
		snapTargets = volumeTargets(t, e, h.snap, commonv1.TargetKind_TARGET_KIND_UNSPECIFIED)
		return startParamsOf(req)
	}
	check := func(t testing.TB) {
		expectWorld(t, e, before)
		got := getRequest(t, e, req.ID)
		if got.State != store.RORequested || got.OperatingSagaID != nil || got.NewRegionID != nil {
			t.Fatalf("request after unwind %+v", got)
		}
		after := volumeTargets(t, e, h.snap, commonv1.TargetKind_TARGET_KIND_UNSPECIFIED)
		if len(after) != len(snapTargets) {
			t.Fatalf("snapshot volume targets changed: %v → %v", snapTargets, after)
		}
		for i := range after {
			if after[i].TargetId != snapTargets[i].TargetId {
				t.Fatalf("snapshot volume targets changed: %v → %v", snapTargets, after)
			}
		}
		if n := len(regionsFor(t, e, h.snap)); n != 0 {
			t.Fatalf("%d regions left for the snapshot volume", n)
		}
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROStart, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROStart, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROStart, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROStart, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// Scenario 13: the agent fails every create; the saga unwinds cleanly and
// the failed region is deleted on the agent.
func TestROStartAgentFailsCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r := h.request(t, 0)
	before := census(t, e)
	faults := allocatorv1.NewAgentFaultServiceClient(dialAllocator(t, e))
	if _, err := faults.InjectAgentFault(context.Background(), &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1000, Fail: true,
	}); err != nil {
		t.Fatal(err)
	}
	o := e.Run(t, sagadef.ROStart, startParamsOf(r))
	if o.Kind != saga.Failed || o.FailedNode != "ensure_new_region" {
		t.Fatalf("outcome %v at %s", o.Kind, o.FailedNode)
	}
	expectWorld(t, e, before)
	if got := getRequest(t, e, r.ID); got.State != store.RORequested {
		t.Fatalf("request %s", got.State)
	}
	sagatest.NoUndoFailed(t, e.Pool)
}

// Scenarios 14 and 15: the clone source prefers another copy, and falls
// back to the target itself only when its own disk is in service.
func TestROCloneSourceChoice(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		sleds         int
		expunge       []int // region snapshots whose disks are expunged
		request, want int
	}{
		{"prefer another copy", 4, []int{0}, 1, 2},
		{"last resort is itself", 5, []int{0, 1}, 2, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := testenv.Start(t, testenv.Options{})
			e.SeedRack(t, tc.sleds, 1, 100*gib)
			h := newROHarness(t, e)
			for _, i := range tc.expunge {
				expungeDatasetDisk(t, e, h.snapshots[i].DatasetId)
			}
			r := h.request(t, tc.request)
			o := e.MustSucceed(t, sagadef.ROStart, startParamsOf(r))
			view, err := e.SEC.Get(context.Background(), o.SagaID)
			if err != nil {
				t.Fatal(err)
			}
			var src sagadef.CloneSource
			for _, n := range view.Nodes {
				if n.Name == "get_clone_source" {
					if err := jsonDecode(n.Output, &src); err != nil {
						t.Fatal(err)
					}
				}
			}
			if src.TargetID.String() != h.snapshots[tc.want].TargetId {
				t.Fatalf("clone source %s, want region snapshot %d (%s)", src.TargetID, tc.want, h.snapshots[tc.want].TargetId)
			}
			if n := len(regionsFor(t, e, h.snap)); n != 1 {
				t.Fatalf("snapshot volume has %d read-only regions, want 1", n)
			}
		})
	}
}

func expungeDatasetDisk(t testing.TB, e *testenv.Env, dataset string) {
	t.Helper()
	ctx := context.Background()
	disks, err := e.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks.Disks {
		if d.DatasetId == dataset {
			if _, err := e.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d.DiskId}); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no disk for dataset %s", dataset)
}

// runToReplacementDone runs the start saga for P's i-th region snapshot.
func (h *roHarness) runToReplacementDone(t testing.TB, i int) store.ROReplacement {
	t.Helper()
	r := h.request(t, i)
	h.e.MustSucceed(t, sagadef.ROStart, startParamsOf(r))
	return getRequest(t, h.e, r.ID)
}

func volumeExists(t testing.TB, e *testenv.Env, id uuid.UUID) bool {
	t.Helper()
	_, err := e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: id.String()})
	return err == nil
}

// Scenario 16 and the helpers on the garbage-collect saga.
func TestROGarbageCollect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r := h.runToReplacementDone(t, 0)
	p := sagadef.GCParams{RequestID: r.ID, StashID: *r.OldSnapshotVolumeID}
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROGarbageCollect, p)
	if got := getRequest(t, e, r.ID); got.State != store.RORunning {
		t.Fatalf("request %s", got.State)
	}
	if volumeExists(t, e, p.StashID) {
		t.Fatal("stash volume still exists")
	}
	var req store.ROReplacement
	setup := func() any {
		req = newROHarness(t, e).runToReplacementDone(t, 0)
		return sagadef.GCParams{RequestID: req.ID, StashID: *req.OldSnapshotVolumeID}
	}
	check := func(t testing.TB) {
		// The volume-delete subsaga has no undo: if it ran, the stash is
		// gone, but the request is back where it was and a retry finishes.
		if got := getRequest(t, e, req.ID); got.State != store.ROReplacementDone || got.OperatingSagaID != nil {
			t.Fatalf("request after unwind %+v", got)
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROGarbageCollect, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROGarbageCollect, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROGarbageCollect, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROGarbageCollect, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// runToRunning drives a request through start and garbage collect.
func (h *roHarness) runToRunning(t testing.TB, i int) store.ROReplacement {
	t.Helper()
	r := h.runToReplacementDone(t, i)
	h.e.MustSucceed(t, sagadef.ROGarbageCollect, sagadef.GCParams{RequestID: r.ID, StashID: *r.OldSnapshotVolumeID})
	return getRequest(t, h.e, r.ID)
}

func (h *roHarness) step(t testing.TB, r store.ROReplacement, v uuid.UUID) store.Step {
	t.Helper()
	st := store.Step{ID: uuid.New(), RequestID: r.ID, VolumeID: v}
	res, err := h.e.Store.InsertStep(context.Background(), st)
	if err != nil || !res.Inserted {
		t.Fatalf("insert step: %+v %v", res, err)
	}
	return st
}

func stepParamsOf(s store.Step) sagadef.StepParams {
	return sagadef.StepParams{StepID: s.ID, RequestID: s.RequestID, VolumeID: s.VolumeID}
}

// The step saga replaces A with B in the clone; the helpers on it.
func TestROStep(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r := h.runToRunning(t, 0)
	s := h.step(t, r, h.f)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROStep, stepParamsOf(s))
	got, err := e.Store.GetStep(context.Background(), s.ID)
	if err != nil || got.State != store.StepComplete || got.OldSnapshotVolumeID == nil {
		t.Fatalf("step %+v %v", got, err)
	}
	ids := []string{}
	for _, tg := range volumeTargets(t, e, h.f, commonv1.TargetKind_TARGET_KIND_UNSPECIFIED) {
		ids = append(ids, tg.TargetId)
	}
	if contains(ids, r.OldTargetID.String()) || !contains(ids, r.NewRegionID.String()) {
		t.Fatalf("clone targets %v", ids)
	}
	invariantsHold(t, e)

	var step store.Step
	var fTargets []*commonv1.Target
	var hh *roHarness
	setup := func() any {
		hh = newROHarness(t, e)
		step = hh.step(t, hh.runToRunning(t, 0), hh.f)
		fTargets = volumeTargets(t, e, hh.f, commonv1.TargetKind_TARGET_KIND_UNSPECIFIED)
		return stepParamsOf(step)
	}
	check := func(t testing.TB) {
		got, err := e.Store.GetStep(context.Background(), step.ID)
		if err != nil || got.State != store.StepRequested || got.OperatingSagaID != nil {
			t.Fatalf("step after unwind %+v %v", got, err)
		}
		after := volumeTargets(t, e, hh.f, commonv1.TargetKind_TARGET_KIND_UNSPECIFIED)
		for i := range after {
			if after[i].TargetId != fTargets[i].TargetId {
				t.Fatalf("clone VCR changed by an unwound step: %v → %v", fTargets, after)
			}
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROStep, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROStep, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROStep, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROStep, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// Scenario 17 and the helpers on the step garbage collect.
func TestROStepGarbageCollect(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	completeStep := func() store.Step {
		h := newROHarness(t, e)
		s := h.step(t, h.runToRunning(t, 0), h.f)
		e.MustSucceed(t, sagadef.ROStep, stepParamsOf(s))
		got, err := e.Store.GetStep(context.Background(), s.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	s := completeStep()
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROStepGarbageCollect, sagadef.StepGCParams{StepID: s.ID, StashID: *s.OldSnapshotVolumeID})
	got, err := e.Store.GetStep(context.Background(), s.ID)
	if err != nil || got.State != store.StepVolumeDeleted {
		t.Fatalf("step %+v %v", got, err)
	}
	if volumeExists(t, e, *s.OldSnapshotVolumeID) {
		t.Fatal("step stash still exists")
	}
	var cur store.Step
	setup := func() any {
		cur = completeStep()
		return sagadef.StepGCParams{StepID: cur.ID, StashID: *cur.OldSnapshotVolumeID}
	}
	check := func(t testing.TB) {
		got, err := e.Store.GetStep(context.Background(), cur.ID)
		if err != nil || got.State != store.StepComplete || got.OperatingSagaID != nil {
			t.Fatalf("step after unwind %+v %v", got, err)
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROStepGarbageCollect, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROStepGarbageCollect, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROStepGarbageCollect, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROStepGarbageCollect, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// The finish saga and its helpers: after every step is collected and A is
// gone, it deletes the reference volume (B survives in real volumes) and
// completes the request, releasing the snapshot volume's lock.
func TestROFinish(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ready := func() (*roHarness, store.ROReplacement) {
		h := newROHarness(t, e)
		r := h.runToRunning(t, 0)
		s := h.step(t, r, h.f)
		e.MustSucceed(t, sagadef.ROStep, stepParamsOf(s))
		got, err := e.Store.GetStep(context.Background(), s.ID)
		if err != nil {
			t.Fatal(err)
		}
		e.MustSucceed(t, sagadef.ROStepGarbageCollect, sagadef.StepGCParams{StepID: s.ID, StashID: *got.OldSnapshotVolumeID})
		return h, getRequest(t, e, r.ID)
	}
	h, r := ready()
	if gone, err := sagadef.TargetGone(context.Background(), e.Deps, r.OldTargetID); err != nil || !gone {
		t.Fatalf("old target not gone after every reference was replaced: %v %v", gone, err)
	}
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.ROFinish, sagadef.FinishParams{RequestID: r.ID, NewRegionVolumeID: r.NewRegionVolumeID})
	if got := getRequest(t, e, r.ID); got.State != store.ROComplete {
		t.Fatalf("request %s", got.State)
	}
	if _, err := e.Store.GetLock(context.Background(), h.snap); err == nil {
		t.Fatal("snapshot volume lock kept")
	}
	if gone, _ := sagadef.TargetGone(context.Background(), e.Deps, *r.NewRegionID); gone {
		t.Fatal("B freed while the snapshot and the clone use it")
	}
	invariantsHold(t, e)
	var cur store.ROReplacement
	setup := func() any {
		_, cur = ready()
		return sagadef.FinishParams{RequestID: cur.ID, NewRegionVolumeID: cur.NewRegionVolumeID}
	}
	check := func(t testing.TB) {
		if got := getRequest(t, e, cur.ID); got.State != store.RORunning || got.OperatingSagaID != nil {
			t.Fatalf("request after unwind %+v", got)
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.ROFinish, setup, check)
	lostAnswersUnwind(t, e, sagadef.ROFinish, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.ROFinish, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.ROFinish, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// A start saga whose target is already gone (every volume naming it was
// deleted) completes the request: nothing to replace and nothing lost —
// not DataLost, even though the same deletes destroyed every copy.
func TestROStartTargetGoneCompletes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	disk := createDisk(t, e)
	snap := snapshot(t, e, disk)
	h := &roHarness{e: e, disk: disk, snap: snap}
	h.snapshots = volumeTargets(t, e, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
	r := h.request(t, 0)
	e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: snap})
	e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: disk})
	o := e.MustSucceed(t, sagadef.ROStart, startParamsOf(r))
	_ = o
	got := getRequest(t, e, r.ID)
	if got.State != store.ROComplete || got.NewRegionID != nil {
		t.Fatalf("request %+v, want Complete with no new region", got)
	}
	if _, err := e.Store.GetLock(context.Background(), snap); err == nil {
		t.Fatal("lock kept")
	}
	expectWorld(t, e, world{})
}

// A step saga that unwinds after its swap, when the volume was deleted in
// between, cannot swap back: its stash keeps the old target's last
// reference. Removing the stash must destroy and unregister the target,
// not leave it DELETING forever (found by the scenario tests).
func TestROStepUnwindAfterVolumeDeletedFreesTheTarget(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r := h.runToRunning(t, 0)
	s := h.step(t, r, h.f)
	hooks := (&saga.Hooks{BeforeNode: func(ctx context.Context, node string) {
		if node == "notify_upstairs" {
			o, err := e.SEC.Run(ctx, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: h.f})
			if err != nil || o.Kind != saga.Succeeded {
				t.Errorf("delete clone: %v %v", err, o.Error())
			}
		}
	}}).InjectError("notify_upstairs")
	o := e.Run(t, sagadef.ROStep, stepParamsOf(s), saga.WithHooks(hooks))
	if o.Kind != saga.Failed || o.FailedNode != "notify_upstairs" {
		t.Fatalf("outcome %v at %s", o.Kind, o.FailedNode)
	}
	// The clone and the snapshot volume no longer name A, the stash is
	// gone: A must be gone too, not stuck DELETING.
	if _, err := e.Volumes.GetTarget(context.Background(), &volumev1.GetTargetRequest{TargetId: r.OldTargetID.String()}); err == nil {
		t.Fatalf("old target %s still registered after the unwind", r.OldTargetID)
	}
	invariantsHold(t, e)
	sagatest.NoUndoFailed(t, e.Pool)
}
