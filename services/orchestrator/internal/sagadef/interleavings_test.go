package sagadef_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// The three interleavings of user operations with a replacement that an
// outside tester found misbehaving, each pinned down as it was seen.

// A clone of the snapshot made while ro-replacement-start is between its swap and its
// end copies the new region B into the clone. If the saga then unwinds, the
// swap goes back, but the clone keeps naming B: B must survive (it is the
// clone's now), the saga must not get stuck on it, and the request must
// still complete. Before the fix, the allocation's undo destroyed B under
// the clone and the registration's undo was refused, so the saga was stuck
// and the request stayed Allocating for good.
//
// The rack has a fifth sled: B, kept for the clone, still counts among the
// snapshot's regions and keeps its sled out of the retry's placement (the
// three region snapshots take three others), so on four sleds the retry
// would wait for capacity until the clone is deleted.
func TestCloneDuringROStartSurvivesItsUnwind(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, testenv.Options{})
	e.SeedRack(t, 5, 2, 100*gib)
	h := newROHarness(t, e)
	r := h.request(t, 0)
	clone := uuid.New()
	hooks := (&saga.Hooks{BeforeNode: func(ctx context.Context, node string) {
		if node != "update_request" {
			return
		}
		o, err := e.SEC.Run(ctx, sagadef.VolumeClone, sagadef.RegionSetParams{VolumeID: clone, SnapshotID: &h.snap})
		if err != nil || o.Kind != saga.Succeeded {
			t.Errorf("clone the snapshot mid-saga: %v %v", err, o.Error())
		}
	}}).InjectError("update_request")
	o := e.Run(t, sagadef.ROStart, startParamsOf(r), saga.WithHooks(hooks))
	if o.Kind != saga.Failed || o.FailedNode != "update_request" {
		t.Fatalf("ro-replacement-start: outcome %v at %q (%v), want failed at update_request", o.Kind, o.FailedNode, o.Error())
	}
	sagatest.NoUndoFailed(t, e.Pool)
	if got := getRequest(t, e, r.ID); got.State != store.RORequested || got.OperatingSagaID != nil {
		t.Fatalf("request after the unwind: %s (saga %v), want requested", got.State, got.OperatingSagaID)
	}
	// The clone names the region the unwound saga made, and it is served.
	var escaped bool
	for _, tg := range volumeTargets(t, e, clone, commonv1.TargetKind_TARGET_KIND_RO_REGION) {
		escaped = true
		if tg.State != commonv1.TargetState_TARGET_STATE_ACTIVE {
			t.Errorf("clone's read-only region %s is %s", tg.TargetId, tg.State)
		}
	}
	if !escaped {
		t.Fatal("the clone does not name the new region: the interleaving did not happen")
	}
	namedTargetsAllocated(t, e)
	invariantsHold(t, e)
	validateHolds(t, e)

	// The tasks start only now: running, the start task would pick the
	// request up again as soon as the unwind woke it, racing the checks
	// above (it won once a plan pass no longer listed every copy).
	d := newDrainer(t, e)
	d.drain(t, r.ID)
	namedTargetsAllocated(t, e)
	invariantsHold(t, e)
	validateHolds(t, e)
	deleteEverything(t, e)
	expectWorld(t, e, world{})
}

// A step's stash names the old target from its swap on, but the step
// record names the stash only at its final commit. A step-task pass in
// that window used to give the stash a step of its own; if the first step
// then unwound, its swap-back was refused (the stash had moved on) and it
// was stuck for good, holding the volume's repair lock.
//
// The tasks start inside the window, so that the step task's first scan of
// the request (never paced) happens there.
func TestStashIsNeverStepped(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	h := newROHarness(t, e)
	r := h.runToRunning(t, 0)
	s := h.step(t, r, h.f)
	var stash uuid.UUID
	var d *drainer
	hooks := (&saga.Hooks{BeforeNode: func(ctx context.Context, node string) {
		if node != "update_request" {
			return
		}
		d = newDrainer(t, e)
		d.activateAndWait(t, tasks.ROStepName)
	}}).InjectError("update_request")
	o := e.Run(t, sagadef.ROStep, stepParamsOf(s), saga.WithHooks(hooks))
	if o.Kind != saga.Failed || o.FailedNode != "update_request" {
		t.Fatalf("ro-replacement-step: outcome %v at %q (%v), want failed at update_request", o.Kind, o.FailedNode, o.Error())
	}
	v, err := e.SEC.Get(context.Background(), o.SagaID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range v.Nodes {
		if n.Name == "new_volume_id" {
			if err := json.Unmarshal(n.Output, &stash); err != nil {
				t.Fatal(err)
			}
		}
	}
	if stash == uuid.Nil {
		t.Fatal("no stash id in the saga's log")
	}
	sagatest.NoUndoFailed(t, e.Pool)
	steps, err := e.Store.StepsOfRequest(context.Background(), r.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range steps {
		if st.VolumeID == stash {
			t.Fatalf("step %s was made for stash %s", st.ID, stash)
		}
	}
	if got := getStep(t, e, s.ID); got.State != store.StepRequested {
		t.Fatalf("step after the unwind: %s, want requested", got.State)
	}

	d.drain(t, r.ID)
	steps, err = e.Store.StepsOfRequest(context.Background(), r.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 1 {
		t.Fatalf("%d steps for a request whose old target one data volume named", len(steps))
	}
	invariantsHold(t, e)
	deleteEverything(t, e)
	expectWorld(t, e, world{})
}

// A volume deleted after the step's swap and before its notification: the
// delete detaches the volume's Upstairs, so the notification found an
// Upstairs that no longer ran the volume, counted a FAILED notification,
// and unwound the step to wait for the next period. The seed's rule is
// that a step whose volume is deleted skips the notification and
// completes; it holds whenever the delete lands.
func TestVolumeDeletedBetweenSwapAndNotify(t *testing.T) {
	t.Parallel()
	e := rwEnv(t, 1)
	h := newROHarness(t, e)
	rwConstruct(t, e, h.f, notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, 0)
	r := h.runToRunning(t, 0)
	s := h.step(t, r, h.f)
	sim := rwSim(t, e, 0)
	hooks := &saga.Hooks{BeforeNode: func(ctx context.Context, node string) {
		if node != "notify_upstairs" {
			return
		}
		// The user's delete, caught between its soft delete and its detach's
		// end: the volume is soft-deleted and its Upstairs deactivated,
		// while the attachment's record is not forgotten yet.
		if _, err := e.Volumes.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: h.f.String()}); err != nil {
			t.Errorf("soft delete: %v", err)
		}
		if _, err := sim.Deactivate(ctx, &upstairsv1.DeactivateRequest{VolumeId: h.f.String()}); err != nil {
			t.Errorf("deactivate: %v", err)
		}
	}}
	o := e.Run(t, sagadef.ROStep, stepParamsOf(s), saga.WithHooks(hooks))
	if o.Kind != saga.Succeeded {
		t.Fatalf("ro-replacement-step: %v at %q (%v), want it to complete", o.Kind, o.FailedNode, o.Error())
	}
	if got := getStep(t, e, s.ID); got.State != store.StepComplete {
		t.Fatalf("step %s, want complete", got.State)
	}
	ns, err := e.Notifier.ListNotifications(context.Background(), &notifierv1.ListNotificationsRequest{VolumeId: h.f.String()})
	if err != nil {
		t.Fatal(err)
	}
	var deleted bool
	for _, n := range ns.Notifications {
		switch n.Outcome {
		case notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED:
			t.Errorf("a FAILED notification was counted: %s", n.Error)
		case notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED:
			deleted = true
		}
	}
	if !deleted {
		t.Errorf("no VOLUME_DELETED notification recorded: %v", ns.Notifications)
	}
	// The user's delete finishes.
	e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: h.f})
	d := newDrainer(t, e)
	d.drain(t, r.ID)
	invariantsHold(t, e)
	validateHolds(t, e)
	deleteEverything(t, e)
	expectWorld(t, e, world{})
}

func getStep(t testing.TB, e *testenv.Env, id uuid.UUID) store.Step {
	t.Helper()
	s, err := e.Store.GetStep(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// namedTargetsAllocated fails the test for any live volume naming a target
// address the allocator no longer has (a region or region snapshot
// destroyed under a volume that still needs it).
func namedTargetsAllocated(t testing.TB, e *testenv.Env) {
	t.Helper()
	ctx := context.Background()
	served := map[string]bool{}
	for token := ""; ; {
		rs, err := e.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs.Regions {
			served[r.Address] = true
		}
		if token = rs.NextPageToken; token == "" {
			break
		}
	}
	for token := ""; ; {
		ss, err := e.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range ss.RegionSnapshots {
			served[s.Address] = true
		}
		if token = ss.NextPageToken; token == "" {
			break
		}
	}
	for token := ""; ; {
		vs, err := e.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range vs.Volumes {
			for _, addr := range vcrAddresses(v.Vcr) {
				if !served[addr] {
					t.Errorf("live volume %s names %s, which the allocator no longer has", v.VolumeId, addr)
				}
			}
		}
		if token = vs.NextPageToken; token == "" {
			break
		}
	}
}

// vcrAddresses lists every target address a VCR names.
func vcrAddresses(v *commonv1.VolumeConstructionRequest) []string {
	if v == nil {
		return nil
	}
	if r := v.GetRegion(); r != nil {
		return append([]string(nil), r.GetOpts().GetTarget()...)
	}
	var out []string
	if vol := v.GetVolume(); vol != nil {
		for _, sv := range vol.GetSubVolumes() {
			out = append(out, vcrAddresses(sv)...)
		}
		out = append(out, vcrAddresses(vol.GetReadOnlyParent())...)
	}
	return out
}

// activateAndWait activates a task and waits until a pass that started
// after the activation has finished.
func (d *drainer) activateAndWait(t testing.TB, name string) {
	t.Helper()
	asked := time.Now()
	if err := d.driver.Activate(name); err != nil {
		t.Errorf("activate %s: %v", name, err)
		return
	}
	deadline := asked.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		for _, st := range d.driver.Statuses() {
			if st.Name == name && st.LastStarted.After(asked) && !st.LastFinished.Before(st.LastStarted) {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Errorf("task %s: no pass finished within 30s of its activation", name)
}
