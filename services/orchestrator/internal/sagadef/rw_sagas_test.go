package sagadef_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
	"storagecp.dev/platform/grpcclient"
)

// rwEnv is a deployment with sims sim-upstairs, also used as Pantries.
func rwEnv(t *testing.T, sims int) *testenv.Env {
	e := testenv.Start(t, testenv.Options{SimUpstairs: sims})
	e.SeedRack(t, 4, 2, 100*gib)
	e.Deps.PantryEndpoints = e.Stack.SimUpstairsAddrs()
	return e
}

func rwSim(t testing.TB, e *testenv.Env, i int) upstairsv1.UpstairsServiceClient {
	conn, err := grpcclient.Dial(e.Stack.SimUpstairsAddrs()[i], e.Stack.DialOption())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return upstairsv1.NewUpstairsServiceClient(conn)
}

// rwRequest creates a disk and a rw replacement request for its first
// region, as the detector would.
func rwRequest(t testing.TB, e *testenv.Env) store.RWReplacement {
	t.Helper()
	p := diskParams()
	e.MustSucceed(t, sagadef.VolumeCreate, p)
	return rwRequestFor(t, e, p.VolumeID)
}

// rwRequestFor creates a rw replacement request for a volume's first
// region.
func rwRequestFor(t testing.TB, e *testenv.Env, volume uuid.UUID) store.RWReplacement {
	t.Helper()
	resp, err := e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: volume.String()})
	if err != nil {
		t.Fatal(err)
	}
	old := uuid.MustParse(resp.Volume.Targets[0].TargetId)
	r, created, err := e.Store.InsertRWReplacement(context.Background(), store.RWReplacement{
		ID: uuid.New(), OldRegionID: old, VolumeID: volume,
	})
	if err != nil || !created {
		t.Fatalf("insert request: %v (created %v)", err, created)
	}
	return r
}

func rwStartParamsOf(r store.RWReplacement) sagadef.RWStartParams {
	return sagadef.RWStartParams{RequestID: r.ID, VolumeID: r.VolumeID, OldRegionID: r.OldRegionID}
}

func rwGet(t testing.TB, e *testenv.Env, id uuid.UUID) store.RWReplacement {
	t.Helper()
	r, err := e.Store.GetRWReplacement(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func rwWant(t testing.TB, e *testenv.Env, id uuid.UUID, want store.RegionState) store.RWReplacement {
	t.Helper()
	r := rwGet(t, e, id)
	if r.State != want || r.OperatingSagaID != nil {
		t.Fatalf("request %s is %s (saga %v), want %s with no saga", id, r.State, r.OperatingSagaID, want)
	}
	return r
}

// regionGen returns the addresses and generation of a volume's region set.
func rwRegionSet(t testing.TB, e *testenv.Env, volume uuid.UUID) ([]string, uint64) {
	t.Helper()
	resp, err := e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: volume.String()})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.Volume.GetVcr().GetVolume().GetSubVolumes()[0].GetRegion()
	return r.GetOpts().GetTarget(), r.GetGen()
}

func rwTarget(t testing.TB, e *testenv.Env, id uuid.UUID) *commonv1.Target {
	t.Helper()
	resp, err := e.Volumes.GetTarget(context.Background(), &volumev1.GetTargetRequest{TargetId: id.String()})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Target
}

// rwCheckStarted asserts what rw-replacement-start leaves: the volume names N instead of
// O with the generation bumped, N owned by the volume, O by the stash, N on
// a fourth sled.
func rwCheckStarted(t testing.TB, e *testenv.Env, req store.RWReplacement, prevGen uint64) store.RWReplacement {
	t.Helper()
	r := rwWant(t, e, req.ID, store.RWRunning)
	if r.NewRegionID == nil || r.OldRegionVolumeID == nil {
		t.Fatalf("running request without new region or stash: %+v", r)
	}
	oldT, newT := rwTarget(t, e, req.OldRegionID), rwTarget(t, e, *r.NewRegionID)
	addrs, gen := rwRegionSet(t, e, req.VolumeID)
	if !slices.Contains(addrs, newT.Address) || slices.Contains(addrs, oldT.Address) || gen != prevGen+1 {
		t.Errorf("region set %v gen %d: want %s instead of %s at gen %d", addrs, gen, newT.Address, oldT.Address, prevGen+1)
	}
	if newT.OwnerVolumeId != req.VolumeID.String() || oldT.OwnerVolumeId != r.OldRegionVolumeID.String() {
		t.Errorf("owners: new %s (want volume %s), old %s (want stash %s)", newT.OwnerVolumeId, req.VolumeID, oldT.OwnerVolumeId, r.OldRegionVolumeID)
	}
	rs, err := e.Allocator.ListRegions(context.Background(), &allocatorv1.ListRegionsRequest{AllocatedFor: req.VolumeID.String(), PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	sleds := map[string]bool{}
	for _, x := range rs.Regions {
		sleds[x.SledId] = true
	}
	if len(rs.Regions) != 4 || len(sleds) != 4 {
		t.Errorf("volume has %d regions on %d sleds, want 3+1 on distinct sleds", len(rs.Regions), len(sleds))
	}
	invariantsHold(t, e)
	return r
}

func TestRWStartHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	req := rwRequest(t, e)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.RWStart, rwStartParamsOf(req))
	rwCheckStarted(t, e, req, 1)

	// Every failure unwinds to the world before the saga, the request back
	// in Requested holding its lock.
	var base world
	var cur store.RWReplacement
	setup := func() any {
		cur = rwRequest(t, e)
		base = census(t, e)
		return rwStartParamsOf(cur)
	}
	check := func(t testing.TB) {
		expectWorld(t, e, base)
		rwWant(t, e, cur.ID, store.RWRequested)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.RWStart, setup, check)
	lostAnswersUnwind(t, e, sagadef.RWStart, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.RWStart, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.RWStart, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// The user deletes the disk right before each node of rw-replacement-start: the saga
// either unwinds (the request stays Requested for the task to complete) or
// finished before the delete mattered; nothing leaks either way.
func TestRWStartRacesVolumeDelete(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var cur store.RWReplacement
	var base world
	setup := func() any {
		base = census(t, e)
		cur = rwRequest(t, e)
		return rwStartParamsOf(cur)
	}
	before := func(ctx context.Context, node string) {
		o, err := e.SEC.Run(ctx, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: cur.VolumeID})
		if err != nil || o.Kind != saga.Succeeded {
			t.Errorf("delete before %s: %v %v", node, err, o.Error())
		}
	}
	sagatest.BeforeEachNode(t, e.SEC, sagadef.RWStart, setup, before, func(t testing.TB, node string, o saga.Outcome) {
		r := rwGet(t, e, cur.ID)
		switch {
		case o.Kind == saga.Succeeded && r.State == store.RWRunning:
			// The swap happened before the delete could see N; finish it
			// as the tasks would: drive (volume gone → done), finish.
			e.MustSucceed(t, sagadef.RWDrive, sagadef.RWDriveParams{RequestID: r.ID, VolumeID: r.VolumeID, NewRegionID: *r.NewRegionID})
			e.MustSucceed(t, sagadef.RWFinish, sagadef.RWFinishParams{RequestID: r.ID, StashVolumeID: *r.OldRegionVolumeID})
		case o.Kind == saga.Failed && r.State == store.RWRequested && r.OperatingSagaID == nil:
			if err := e.Store.SetRWCompleteFromRequested(context.Background(), r.ID); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("before %s: outcome %v (%v), request %s", node, o.Kind, o.Error(), r.State)
		}
		rwWant(t, e, cur.ID, store.RWComplete)
		expectWorld(t, e, base)
	})
	sagatest.NoUndoFailed(t, e.Pool)
}

// rwStarted runs rw-replacement-start for a new request and returns it Running.
func rwStarted(t testing.TB, e *testenv.Env) store.RWReplacement {
	t.Helper()
	req := rwRequest(t, e)
	e.MustSucceed(t, sagadef.RWStart, rwStartParamsOf(req))
	return rwGet(t, e, req.ID)
}

func rwDriveParamsOf(r store.RWReplacement) sagadef.RWDriveParams {
	return sagadef.RWDriveParams{RequestID: r.ID, VolumeID: r.VolumeID, NewRegionID: *r.NewRegionID}
}

func rwConstruct(t testing.TB, e *testenv.Env, volume uuid.UUID, kind notifierv1.UpstairsKind, sim int) *notifierv1.Attachment {
	t.Helper()
	resp, err := e.Notifier.ConstructVolume(context.Background(), &notifierv1.ConstructVolumeRequest{
		VolumeId: volume.String(), Kind: kind, Endpoint: e.Stack.SimUpstairsAddrs()[sim],
	})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Attachment
}

// rwWrite writes to a volume running on sim i once its activation has
// reconciled, so the volume's rw regions hold written content, not blank.
func rwWrite(t testing.TB, e *testenv.Env, sim int, volume uuid.UUID) string {
	t.Helper()
	up := rwSim(t, e, sim)
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := up.Write(context.Background(), &upstairsv1.WriteRequest{VolumeId: volume.String()})
		if err == nil {
			return resp.Content
		}
		if time.Now().After(deadline) {
			t.Fatalf("write to %s: %v", volume, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rwWaitRepaired polls until the Upstairs reported the new region repaired.
func rwWaitRepaired(t testing.TB, e *testenv.Env, region uuid.UUID) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		rs, err := sagadef.RegionRepairState(context.Background(), e.Deps, region)
		if err != nil {
			t.Fatal(err)
		}
		if rs.Succeeded {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("region %s never reported repaired", region)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func rwDriveOnce(t testing.TB, e *testenv.Env, r store.RWReplacement) bool {
	t.Helper()
	var done bool
	if err := e.MustSucceed(t, sagadef.RWDrive, rwDriveParamsOf(r)).Decode(&done); err != nil {
		t.Fatal(err)
	}
	return done
}

// Live repair through a running consumer: drive tells it (every action
// twice), the Upstairs repairs and reports, the next drive concludes done,
// finish frees the old region.
func TestRWDriveLiveRepairAndFinish(t *testing.T) {
	t.Parallel()
	e := rwEnv(t, 1)
	ctx := context.Background()
	req := rwRequest(t, e)
	att := rwConstruct(t, e, req.VolumeID, notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, 0)
	// Written data, so that the new region must really be filled.
	written := rwWrite(t, e, 0, req.VolumeID)
	_, gen := rwRegionSet(t, e, req.VolumeID) // the checkout bumped it
	e.MustSucceed(t, sagadef.RWStart, rwStartParamsOf(req))
	r := rwCheckStarted(t, e, req, gen)
	oldAddr := rwTarget(t, e, req.OldRegionID).Address

	var done bool
	if err := sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.RWDrive, rwDriveParamsOf(r)).Decode(&done); err != nil {
		t.Fatal(err)
	}
	r = rwWant(t, e, r.ID, store.RWRunning)
	steps, err := e.Store.DriveSteps(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if done || len(steps) != 1 || steps[0].StepType != sagadef.StepPropolis || steps[0].AttachmentID.String() != att.AttachmentId {
		t.Fatalf("first drive: done %v, steps %+v", done, steps)
	}
	rwWaitRepaired(t, e, *r.NewRegionID)
	if !rwDriveOnce(t, e, r) {
		t.Fatal("drive after the repair finished did not conclude done")
	}
	rwWant(t, e, r.ID, store.RWReplacementDone)

	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.RWFinish, sagadef.RWFinishParams{RequestID: r.ID, StashVolumeID: *r.OldRegionVolumeID})
	rwWant(t, e, r.ID, store.RWComplete)
	if _, err := e.Store.GetLock(ctx, r.VolumeID); err == nil {
		t.Error("volume lock not released")
	}
	if _, err := e.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: r.OldRegionID.String()}); err == nil {
		t.Error("old region still exists")
	}
	// The running Upstairs names the new region, never probed a destroyed
	// one, and read what it should throughout (the live repair filled the
	// new region with the set's content).
	st, err := rwSim(t, e, 0).GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: r.VolumeID.String()})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range st.Status.Downstairs {
		if d.Address == oldAddr {
			t.Errorf("Upstairs still runs the old region %s", oldAddr)
		}
		if d.State != upstairsv1.DownstairsState_DOWNSTAIRS_STATE_ACTIVE {
			t.Errorf("downstairs %s is %s", d.Address, d.State)
		}
	}
	if st.Status.DataLossEvents != 0 {
		t.Errorf("%d data-loss events", st.Status.DataLossEvents)
	}
	if st.Status.ContentMismatchEvents != 0 {
		t.Errorf("%d content mismatches: %v", st.Status.ContentMismatchEvents, st.Status.ContentMismatches)
	}
	for _, p := range st.Status.Positions {
		if !p.ReadOnly && p.Expected != written {
			t.Errorf("position %s expected to hold %q, want the write %q", p.Position, p.Expected, written)
		}
	}
	// One disk: 3 regions, 3 targets, 1 volume (the stash is gone).
	expectWorld(t, e, world{regions: 3, targets: 3, volumes: 1})
}

// No consumer: drive reconciles on a Pantry, done comes from the
// reconciliation's finish, and finish detaches the Pantry.
func TestRWDrivePantryReconciles(t *testing.T) {
	t.Parallel()
	e := rwEnv(t, 2)
	ctx := context.Background()
	r := rwStarted(t, e)
	if rwDriveOnce(t, e, r) {
		t.Fatal("first drive concluded done before any repair")
	}
	steps, err := e.Store.DriveSteps(ctx, r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 1 || steps[0].StepType != sagadef.StepPantry || steps[0].AttachmentID == nil {
		t.Fatalf("steps %+v", steps)
	}
	rwWaitRepaired(t, e, *r.NewRegionID)
	if !rwDriveOnce(t, e, r) {
		t.Fatal("drive after reconciliation did not conclude done")
	}
	e.MustSucceed(t, sagadef.RWFinish, sagadef.RWFinishParams{RequestID: r.ID, StashVolumeID: *r.OldRegionVolumeID})
	rwWant(t, e, r.ID, store.RWComplete)
	atts, err := e.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{VolumeId: r.VolumeID.String()})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts.Attachments {
		if a.State == notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
			t.Errorf("Pantry attachment %s still running after finish", a.AttachmentId)
		}
	}
	expectWorld(t, e, world{regions: 3, targets: 3, volumes: 1})
}

func TestRWDriveHelpers(t *testing.T) {
	t.Parallel()
	e := rwEnv(t, 1)
	r := rwStarted(t, e)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.RWDrive, rwDriveParamsOf(r))
	rwWant(t, e, r.ID, store.RWRunning)

	var cur store.RWReplacement
	setup := func() any {
		cur = rwStarted(t, e)
		return rwDriveParamsOf(cur)
	}
	check := func(t testing.TB) {
		rwWant(t, e, cur.ID, store.RWRunning)
		steps, err := e.Store.DriveSteps(context.Background(), cur.ID)
		if err != nil || len(steps) != 0 {
			t.Errorf("unwound drive recorded steps %+v (%v)", steps, err)
		}
		invariantsHold(t, e)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.RWDrive, setup, check)
	lostAnswersUnwind(t, e, sagadef.RWDrive, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.RWDrive, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.RWDrive, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// rwDone returns a ReplacementDone request whose volume the user
// deleted mid-drive: drive skips every notification.
func rwDone(t testing.TB, e *testenv.Env) store.RWReplacement {
	t.Helper()
	r := rwStarted(t, e)
	e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: r.VolumeID})
	if !rwDriveOnce(t, e, r) {
		t.Fatal("drive of a deleted volume did not conclude done")
	}
	steps, err := e.Store.DriveSteps(context.Background(), r.ID)
	if err != nil || len(steps) != 0 {
		t.Fatalf("drive of a deleted volume recorded steps %+v (%v)", steps, err)
	}
	return rwWant(t, e, r.ID, store.RWReplacementDone)
}

func TestRWFinishHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	r := rwDone(t, e)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.RWFinish, sagadef.RWFinishParams{RequestID: r.ID, StashVolumeID: *r.OldRegionVolumeID})
	rwWant(t, e, r.ID, store.RWComplete)
	expectWorld(t, e, world{})

	var cur store.RWReplacement
	var base world
	setup := func() any {
		base = census(t, e)
		cur = rwDone(t, e)
		return sagadef.RWFinishParams{RequestID: cur.ID, StashVolumeID: *cur.OldRegionVolumeID}
	}
	// volume-delete has no undos: an unwind inside it leaves the stash half
	// deleted (the old region destroyed on its agent, still registered),
	// which only the retried finish repairs. Retry at once, as the task
	// would, so the next setup's allocation cannot reuse that port.
	check := func(t testing.TB) {
		rwWant(t, e, cur.ID, store.RWReplacementDone)
		invariantsHold(t, e)
		e.MustSucceed(t, sagadef.RWFinish, sagadef.RWFinishParams{RequestID: cur.ID, StashVolumeID: *cur.OldRegionVolumeID})
		rwWant(t, e, cur.ID, store.RWComplete)
		expectWorld(t, e, base)
	}
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.RWFinish, setup, check)
	lostAnswersUnwind(t, e, sagadef.RWFinish, setup, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.RWFinish, setup, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.RWFinish, setup, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// The swap happened, the user deletes the volume, then the commit fails:
// the swap back answers "volume deleted" and changes nothing, so the old
// region stays parked in the stash. The unwind must still free it and
// leave nothing behind (and the request back in Requested, for the task
// to complete).
func TestRWStartUnwindAfterSwapOnDeletedVolume(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	base := census(t, e)
	req := rwRequest(t, e)
	h := (&saga.Hooks{BeforeNode: func(ctx context.Context, node string) {
		if node == "update_request" {
			o, err := e.SEC.Run(ctx, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: req.VolumeID})
			if err != nil || o.Kind != saga.Succeeded {
				t.Errorf("delete: %v %v", err, o.Error())
			}
		}
	}}).InjectError("update_request")
	o := e.Run(t, sagadef.RWStart, rwStartParamsOf(req), saga.WithHooks(h))
	if o.Kind != saga.Failed || o.FailedNode != "update_request" {
		t.Fatalf("outcome %v at %q: %v", o.Kind, o.FailedNode, o.Error())
	}
	rwWant(t, e, req.ID, store.RWRequested)
	if err := e.Store.SetRWCompleteFromRequested(context.Background(), req.ID); err != nil {
		t.Fatal(err)
	}
	expectWorld(t, e, base)
	sagatest.NoUndoFailed(t, e.Pool)
}
