package sagadef_test

import (
	"context"
	"testing"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/testenv"
	"storagecp.dev/orchestrator/internal/validate"
)

// Every test that needs the services starts a deployment of its own
// (testenv.Start: its own PostgreSQL cluster, processes and SEC), so they
// all run in parallel: most of a test is waiting on round trips between
// the processes, which leaves a core idle when they run one at a time.
func TestMain(m *testing.M) { testenv.Main(m) }

const gib = 1 << 30

func diskParams() sagadef.RegionSetParams {
	g, _ := sagadef.GeometryFor(gib, 512)
	return sagadef.RegionSetParams{VolumeID: uuid.New(), Geometry: &g}
}

func newEnv(t *testing.T) *testenv.Env {
	e := testenv.Start(t, testenv.Options{})
	e.SeedRack(t, 4, 2, 100*gib)
	return e
}

func createDisk(t *testing.T, e *testenv.Env) uuid.UUID {
	t.Helper()
	p := diskParams()
	e.MustSucceed(t, sagadef.VolumeCreate, p)
	return p.VolumeID
}

func snapshot(t *testing.T, e *testenv.Env, disk uuid.UUID) uuid.UUID {
	t.Helper()
	p := sagadef.SnapshotParams{DiskVolumeID: disk, SnapshotID: uuid.New()}
	e.MustSucceed(t, sagadef.SnapshotCreate, p)
	return p.SnapshotID
}

// world counts what exists in every service.
type world struct {
	regions, regionSnapshots, targets, volumes, locks int
}

func census(t testing.TB, e *testenv.Env) world {
	t.Helper()
	ctx := context.Background()
	var w world
	rs, err := e.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	w.regions = len(rs.Regions)
	ss, err := e.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	w.regionSnapshots = len(ss.RegionSnapshots)
	ts, err := e.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	w.targets = len(ts.Targets)
	vs, err := e.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true})
	if err != nil {
		t.Fatal(err)
	}
	w.volumes = len(vs.Volumes)
	locks, err := e.Store.ListLocks(ctx, uuid.Nil, 1000)
	if err != nil {
		t.Fatal(err)
	}
	w.locks = len(locks)
	return w
}

// lostAnswersUnwind is sagatest.LostAnswerCanUnwind with check, and with
// the world counted around each run: an unwound saga whose answers were
// lost at some node must leave no volume, region, region snapshot, target
// or lock more than it found.
func lostAnswersUnwind(t *testing.T, e *testenv.Env, tmpl *saga.Template, setup func() any, check func(testing.TB)) {
	t.Helper()
	var before world
	sagatest.LostAnswerCanUnwind(t, e.SEC, tmpl, func() any {
		p := setup()
		before = census(t, e)
		return p
	}, func(t testing.TB) {
		if check != nil {
			check(t)
		}
		// Nothing more than it found; less only where a deletion
		// landed, which the run that follows finishes.
		after := census(t, e)
		if after.regions > before.regions || after.regionSnapshots > before.regionSnapshots || after.targets > before.targets ||
			after.volumes > before.volumes || after.locks > before.locks {
			t.Fatalf("the unwound saga left the world %+v; it found it %+v", after, before)
		}
		invariantsHold(t, e)
	})
}

func invariantsHold(t testing.TB, e *testenv.Env) {
	t.Helper()
	resp, err := e.Volumes.CheckInvariants(context.Background(), &volumev1.CheckInvariantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Violations {
		t.Errorf("invariant %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
}

// validateHolds runs ValidateSystem's checks against the test's services.
func validateHolds(t testing.TB, e *testenv.Env) {
	t.Helper()
	vs, err := validate.Run(context.Background(), e.Deps, e.Store)
	if err != nil {
		t.Fatalf("validate: %v", err)
	}
	for _, v := range vs {
		t.Errorf("ValidateSystem: %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
}

func expectWorld(t testing.TB, e *testenv.Env, want world) {
	t.Helper()
	if got := census(t, e); got != want {
		t.Fatalf("world is %+v, want %+v", got, want)
	}
	invariantsHold(t, e)
}

func TestVolumeCreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	disk := createDisk(t, e)
	resp, err := e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: disk.String()})
	if err != nil {
		t.Fatal(err)
	}
	sleds := map[string]bool{}
	rs, err := e.Allocator.ListRegions(context.Background(), &allocatorv1.ListRegionsRequest{AllocatedFor: disk.String()})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs.Regions {
		sleds[r.SledId] = true
	}
	if len(rs.Regions) != 3 || len(sleds) != 3 {
		t.Fatalf("%d regions on %d sleds", len(rs.Regions), len(sleds))
	}
	for _, tg := range resp.Volume.Targets {
		if tg.State != commonv1.TargetState_TARGET_STATE_ACTIVE || tg.OwnerVolumeId != disk.String() {
			t.Errorf("target %+v", tg)
		}
	}
	if k := resp.Volume.GetVcr().GetVolume().GetSubVolumes()[0].GetRegion().GetOpts().GetKey(); k != "" {
		t.Errorf("GetVolume's default view leaks the key")
	}
	expectWorld(t, e, world{regions: 3, targets: 3, volumes: 1})
}

func TestVolumeCreateHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.VolumeCreate, diskParams())
	base := census(t, e)
	check := func(t testing.TB) { expectWorld(t, e, base) }
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.VolumeCreate, func() any { return diskParams() }, check)
	lostAnswersUnwind(t, e, sagadef.VolumeCreate, func() any { return diskParams() }, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.VolumeCreate, func() any { return diskParams() }, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.VolumeCreate, func() any { return diskParams() }, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

func TestSnapshotAndClone(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	disk := createDisk(t, e)
	snap := snapshot(t, e, disk)
	if _, err := e.Store.GetLock(context.Background(), disk); err == nil {
		t.Fatal("snapshot lock not released")
	}
	clone := sagadef.RegionSetParams{VolumeID: uuid.New(), SnapshotID: &snap}
	e.MustSucceed(t, sagadef.VolumeClone, clone)
	resp, err := e.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: clone.VolumeID.String(), IncludeReferenceCounts: true})
	if err != nil {
		t.Fatal(err)
	}
	var ro int
	for _, tg := range resp.Volume.Targets {
		if tg.Kind == commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT {
			ro++
			if tg.ReferenceCount != 2 { // the snapshot volume and the clone
				t.Errorf("region snapshot %s has %d references, want 2", tg.TargetId, tg.ReferenceCount)
			}
		}
	}
	if ro != 3 {
		t.Fatalf("clone names %d region snapshots, want 3", ro)
	}
	// disk 3 + clone 3 regions; 3 region snapshots; 9 targets; 3 volumes.
	expectWorld(t, e, world{regions: 6, regionSnapshots: 3, targets: 9, volumes: 3})
}

func TestSnapshotCreateHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	disk := createDisk(t, e)
	params := func() any { return sagadef.SnapshotParams{DiskVolumeID: disk, SnapshotID: uuid.New()} }
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.SnapshotCreate, params())
	base := census(t, e)
	check := func(t testing.TB) { expectWorld(t, e, base) }
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.SnapshotCreate, params, check)
	lostAnswersUnwind(t, e, sagadef.SnapshotCreate, params, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.SnapshotCreate, params, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.SnapshotCreate, params, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

func TestVolumeCloneHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	snap := snapshot(t, e, createDisk(t, e))
	params := func() any { return sagadef.RegionSetParams{VolumeID: uuid.New(), SnapshotID: &snap} }
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.VolumeClone, params())
	base := census(t, e)
	check := func(t testing.TB) { expectWorld(t, e, base) }
	sagatest.ActionFailureCanUnwind(t, e.SEC, sagadef.VolumeClone, params, check)
	lostAnswersUnwind(t, e, sagadef.VolumeClone, params, check)
	sagatest.ActionFailureCanUnwindIdempotently(t, e.SEC, sagadef.VolumeClone, params, check)
	sagatest.UndoTransientFaultRecovers(t, e.SEC, sagadef.VolumeClone, params, check)
	sagatest.NoUndoFailed(t, e.Pool)
}

// volume-delete has no undos; every action twice must still converge.
func TestVolumeDeleteHelpers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	disk := createDisk(t, e)
	sagatest.ActionsSucceedIdempotently(t, e.SEC, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: disk})
	expectWorld(t, e, world{})
	// Deleting a missing volume succeeds and changes nothing.
	e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: uuid.New()})
	expectWorld(t, e, world{})
}

// The seed's premature hard delete, through the service split: the disk's
// volume stays (KEPT) while the snapshot pins its regions, and deleting the
// snapshot later frees everything.
func TestDeleteDiskThenSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	disk := createDisk(t, e)
	snap := snapshot(t, e, disk)
	var dr sagadef.DeleteResult
	if err := e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: disk}).Decode(&dr); err != nil {
		t.Fatal(err)
	}
	if dr.HardDeleted {
		t.Fatal("disk volume hard-deleted while its regions have snapshots")
	}
	// The regions are kept for the snapshots; the volume row stays soft-deleted.
	expectWorld(t, e, world{regions: 3, regionSnapshots: 3, targets: 6, volumes: 2})
	if err := e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: snap}).Decode(&dr); err != nil {
		t.Fatal(err)
	}
	expectWorld(t, e, world{})
}

// Deleting the disk raced against a snapshot of it at every node of the
// snapshot saga: never a destroyed region that still has a snapshot, never
// a leak, whichever wins.
func TestDeleteRacesSnapshotAtEveryNode(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var disk uuid.UUID
	setup := func() any {
		disk = createDisk(t, e)
		return sagadef.SnapshotParams{DiskVolumeID: disk, SnapshotID: uuid.New()}
	}
	before := func(ctx context.Context, node string) {
		// The user deletes the disk right before this node.
		o, err := e.SEC.Run(ctx, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: disk})
		if err != nil || o.Kind != saga.Succeeded {
			t.Errorf("delete before %s: %v %v", node, err, o.Error())
		}
	}
	// Whichever won, the counts stay exact (a destroyed region that still
	// had a snapshot would also have failed the delete above: the allocator
	// refuses it).
	sagatest.BeforeEachNode(t, e.SEC, sagadef.SnapshotCreate, setup, before, func(t testing.TB, node string, o saga.Outcome) {
		invariantsHold(t, e)
	})
	// Clean up everything that remains: every snapshot volume, then disks.
	ctx := context.Background()
	vs, err := e.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vs.Volumes {
		id := uuid.MustParse(v.VolumeId)
		e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: id})
	}
	for _, v := range vs.Volumes {
		id := uuid.MustParse(v.VolumeId)
		e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: id})
	}
	expectWorld(t, e, world{})
}
