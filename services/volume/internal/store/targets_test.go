package store

import (
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/ids"
)

func TestRegisterTargetsIsIdempotentAndDerivesIDs(t *testing.T) {
	f := newFixture(t)
	owner := uuid.New()
	region := uuid.New()
	snap := uuid.New()
	regs := []Registration{{Kind: KindRWRegion, RegionID: region, OwnerVolumeID: owner}}
	a, err := f.s.RegisterTargets(f.ctx, regs)
	if err != nil || a[0].ID != region || a[0].State != StatePending || a[0].Address != "" {
		t.Fatalf("%+v %v", a, err)
	}
	b, err := f.s.RegisterTargets(f.ctx, regs)
	if err != nil || b[0] != a[0] {
		t.Fatalf("replay %+v %v", b, err)
	}
	rs, err := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRegionSnapshot, RegionID: region, SnapshotID: snap}})
	if err != nil || rs[0].ID != ids.RegionSnapshotTargetID(region, snap) {
		t.Fatalf("%+v %v", rs, err)
	}
	_, err = f.s.RegisterTargets(f.ctx, []Registration{{TargetID: uuid.New(), Kind: KindRWRegion, RegionID: uuid.New(), OwnerVolumeID: owner}})
	wantKind(t, err, apierr.Invalid)
	_, err = f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRORegion, RegionID: region}})
	wantKind(t, err, apierr.Precondition)
	_, err = f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRWRegion, RegionID: uuid.New()}})
	wantKind(t, err, apierr.Invalid)
}

func TestRegisterRegionSnapshotRefusedWhenParentOwnerSoftDeleted(t *testing.T) {
	f := newFixture(t)
	id, rw := f.newDisk(nil)
	f.softDelete(id)
	_, err := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRegionSnapshot, RegionID: rw[0].RegionID, SnapshotID: uuid.New()}})
	wantKind(t, err, apierr.Precondition)
	_, err = f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRegionSnapshot, RegionID: uuid.New(), SnapshotID: uuid.New()}})
	wantKind(t, err, apierr.Precondition) // parent not registered
	ro := f.roRegion(uuid.New())
	_, err = f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRegionSnapshot, RegionID: ro.RegionID, SnapshotID: uuid.New()}})
	wantKind(t, err, apierr.Precondition) // read-only regions are never snapshotted
	if n := f.count(`SELECT count(*) FROM target WHERE kind = 'REGION_SNAPSHOT'`); n != 0 {
		t.Fatalf("%d snapshot rows", n)
	}
}

func TestActivateTargetsIdempotentAndGuarded(t *testing.T) {
	f := newFixture(t)
	ts, _ := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRORegion, RegionID: uuid.New()}, {Kind: KindRORegion, RegionID: uuid.New()}})
	ds := uuid.New()
	addr := f.addr()
	act := []Activation{{TargetID: ts[0].ID, DatasetID: ds, Address: addr}}
	a, err := f.s.ActivateTargets(f.ctx, act)
	if err != nil || a[0].State != StateActive || a[0].Address != canon(t, addr) || a[0].DatasetID != ds {
		t.Fatalf("%+v %v", a, err)
	}
	if _, err := f.s.ActivateTargets(f.ctx, act); err != nil {
		t.Fatalf("replay: %v", err)
	}
	_, err = f.s.ActivateTargets(f.ctx, []Activation{{TargetID: ts[0].ID, DatasetID: ds, Address: f.addr()}})
	wantKind(t, err, apierr.Precondition)
	_, err = f.s.ActivateTargets(f.ctx, []Activation{{TargetID: ts[1].ID, DatasetID: ds, Address: addr}})
	wantKind(t, err, apierr.Precondition) // address served by a live target
	_, err = f.s.ActivateTargets(f.ctx, []Activation{{TargetID: ts[1].ID, DatasetID: ds, Address: "10.0.0.1:19000"}})
	wantKind(t, err, apierr.Invalid)
	_, err = f.s.ActivateTargets(f.ctx, []Activation{{TargetID: uuid.New(), DatasetID: ds, Address: f.addr()}})
	wantKind(t, err, apierr.NotFound)
}

func TestUnregisterTargetsRules(t *testing.T) {
	f := newFixture(t)
	id, rw := f.newDisk(nil)
	ro := f.roRegion(uuid.New())
	holder := uuid.New()
	f.create(holder, snapshotVCR([]Target{ro}))
	pendingRO, _ := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRORegion, RegionID: uuid.New()}})
	pendingRW, _ := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRWRegion, RegionID: uuid.New(), OwnerVolumeID: id}})

	for name, target := range map[string]uuid.UUID{"rw of live volume": rw[0].ID, "active read-only": ro.ID} {
		_, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{target})
		if apierr.KindOf(err) != apierr.Precondition {
			t.Fatalf("%s: %v", name, err)
		}
	}
	// All or nothing.
	_, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{pendingRO[0].ID, rw[0].ID})
	wantKind(t, err, apierr.Precondition)
	if f.count(`SELECT count(*) FROM target WHERE target_id = $1`, pendingRO[0].ID) != 1 {
		t.Fatal("partial unregister")
	}
	n, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{pendingRO[0].ID, pendingRW[0].ID, uuid.New()})
	if err != nil || n != 2 {
		t.Fatalf("pending: %d %v", n, err)
	}
	// A rw region with a registered snapshot stays even after its owner is deleted.
	snapID := uuid.New()
	f.snapshots(rw[:1], snapID)
	f.softDelete(id)
	_, err = f.s.UnregisterTargets(f.ctx, []uuid.UUID{rw[0].ID})
	wantKind(t, err, apierr.Precondition)
	if n, err := f.s.UnregisterTargets(f.ctx, targetIDs(rw[1:])); err != nil || n != 2 {
		t.Fatalf("%d %v", n, err)
	}
	f.softDelete(holder)
	if n, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{ro.ID}); err != nil || n != 1 {
		t.Fatalf("deleting ro: %d %v", n, err)
	}
	if _, err := f.s.GetTarget(f.ctx, ro.ID, true); apierr.KindOf(err) != apierr.NotFound {
		t.Fatalf("gone target: %v", err)
	}
	f.healthy()
}

func TestListTargetsFiltersAndPages(t *testing.T) {
	f := newFixture(t)
	owner := uuid.New()
	f.rwRegions(owner, 3)
	f.roRegion(uuid.New())
	ts, next, err := f.s.ListTargets(f.ctx, TargetFilter{OwnerVolumeID: owner}, uuid.Nil, 2)
	if err != nil || len(ts) != 2 || next == uuid.Nil {
		t.Fatalf("%v %v %v", ts, next, err)
	}
	ts2, next2, _ := f.s.ListTargets(f.ctx, TargetFilter{OwnerVolumeID: owner}, next, 2)
	if len(ts2) != 1 || next2 != uuid.Nil {
		t.Fatalf("%v", ts2)
	}
	ro, _, _ := f.s.ListTargets(f.ctx, TargetFilter{Kind: KindRORegion, State: StateActive}, uuid.Nil, 10)
	if len(ro) != 1 {
		t.Fatalf("%v", ro)
	}
}

func TestGetVolumeListsRegisteredTargetsInVCROrder(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	_, snaps := f.newSnapshot(rw)
	clone, crw := f.newDisk(snapshotVCR(snaps))
	v, err := f.s.GetVolume(f.ctx, clone, true)
	if err != nil {
		t.Fatal(err)
	}
	want := append(targetIDs(crw), targetIDs(snaps)...)
	if len(v.Targets) != len(want) {
		t.Fatalf("%d targets", len(v.Targets))
	}
	for i, tg := range v.Targets {
		if tg.ID != want[i] {
			t.Fatalf("targets[%d] = %s, want %s", i, tg.ID, want[i])
		}
	}
	if v.Targets[3].RefCount != 2 {
		t.Fatalf("ref count %d", v.Targets[3].RefCount)
	}
	vols, next, err := f.s.ListVolumes(f.ctx, uuid.Nil, 2, false)
	if err != nil || len(vols) != 2 || next == uuid.Nil {
		t.Fatalf("%d %v %v", len(vols), next, err)
	}
	rest, next, _ := f.s.ListVolumes(f.ctx, next, 2, false)
	if len(rest) != 1 || next != uuid.Nil {
		t.Fatalf("%d", len(rest))
	}
	f.softDelete(clone)
	live, _, _ := f.s.ListVolumes(f.ctx, uuid.Nil, 10, false)
	all, _, _ := f.s.ListVolumes(f.ctx, uuid.Nil, 10, true)
	if len(live) != 2 || len(all) != 3 {
		t.Fatalf("live %d all %d", len(live), len(all))
	}
}

// CreateVolume's two server-side builders keep keys inside the service.
func TestCreateVolumeFromReadOnlyParentSourceAndSnapshotOf(t *testing.T) {
	f := newFixture(t)
	diskID, rw := f.newDisk(nil)
	snapID := uuid.New()
	snaps := f.snapshots(rw, snapID)
	m := map[string]string{}
	for i := range rw {
		m[rw[i].Address] = snaps[i].Address
	}
	// An unmapped rw target is InvalidArgument and writes nothing.
	_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: snapID, SnapshotOf: &SnapshotOf{Source: diskID, TargetMap: map[string]string{rw[0].Address: snaps[0].Address}}})
	wantKind(t, err, apierr.Invalid)
	before, _ := f.s.GetVolume(f.ctx, diskID, true)
	if g := before.VCR.Volume.SubVolumes[0].Region.Gen; g != 1 {
		t.Fatalf("refused snapshot bumped gen to %d", g)
	}
	sv, created, err := f.s.CreateVolume(f.ctx, CreateParams{ID: snapID, SnapshotOf: &SnapshotOf{Source: diskID, TargetMap: m}})
	if err != nil || !created {
		t.Fatal(err)
	}
	r := sv.VCR.Volume.SubVolumes[0].Region
	if !r.Opts.ReadOnly || r.Opts.Key == nil || r.Opts.Target[0] != snaps[0].Address || r.Gen != 1 {
		t.Fatalf("snapshot region %+v", r)
	}
	after, _ := f.s.GetVolume(f.ctx, diskID, true)
	if g := after.VCR.Volume.SubVolumes[0].Region.Gen; g != 2 {
		t.Fatalf("source gen %d, want 2 (COPY_AND_MODIFY checkout)", g)
	}
	cloneID := uuid.New()
	crw := f.rwRegions(cloneID, 3)
	cv, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: cloneID, VCR: disk(crw, nil), ReadOnlyParentFrom: snapID})
	if err != nil {
		t.Fatal(err)
	}
	rop := cv.VCR.Volume.ReadOnlyParent
	if rop == nil || rop.Volume.ID == sv.VCR.Volume.ID || rop.Volume.SubVolumes[0].Region.Opts.Target[0] != snaps[0].Address {
		t.Fatal("ROP not a randomised copy of the snapshot")
	}
	if n := f.target(snaps[0].ID).RefCount; n != 2 {
		t.Fatalf("count %d", n)
	}
	// A disk cannot be the read-only parent source.
	_, _, err = f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: volumeNode(nil), ReadOnlyParentFrom: diskID})
	wantKind(t, err, apierr.Precondition)
	f.healthy()
}

// Agents reuse ports. A rw region freed by its owner's delete stays
// registered until the deleting saga unregisters it, after destroying it;
// a region created in between gets its port back and must be able to
// activate. A holder that may still be in use keeps the address.
func TestActivateTakesOverAFreedRWRegionsAddress(t *testing.T) {
	f := newFixture(t)
	owner, rw := f.newDisk(nil)
	_, liveRW := f.newDisk(nil)
	f.softDelete(owner)
	ts, err := f.s.RegisterTargets(f.ctx, []Registration{
		{Kind: KindRWRegion, RegionID: uuid.New(), OwnerVolumeID: uuid.New()},
		{Kind: KindRWRegion, RegionID: uuid.New(), OwnerVolumeID: uuid.New()},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The live disk's region keeps its address.
	_, err = f.s.ActivateTargets(f.ctx, []Activation{{TargetID: ts[0].ID, DatasetID: liveRW[0].DatasetID, Address: liveRW[0].Address}})
	wantKind(t, err, apierr.Precondition)
	// The deleted disk's does not.
	got, err := f.s.ActivateTargets(f.ctx, []Activation{{TargetID: ts[0].ID, DatasetID: rw[0].DatasetID, Address: rw[0].Address}})
	if err != nil || got[0].Address != rw[0].Address {
		t.Fatalf("activate at a freed region's address: %+v %v", got, err)
	}
	if _, err := f.s.GetTarget(f.ctx, rw[0].ID, false); apierr.KindOf(err) != apierr.NotFound {
		t.Fatalf("the freed region is still registered: %v", err)
	}
	// Its saga's own unregister finds nothing left.
	if n, err := f.s.UnregisterTargets(f.ctx, targetIDs(rw)); err != nil || n != 2 {
		t.Fatalf("unregister the rest: %d %v", n, err)
	}
	// A freed region that still has a region snapshot is not destroyed:
	// its address stays taken.
	owner2, rw2 := f.newDisk(nil)
	f.snapshots(rw2[:1], uuid.New())
	f.softDelete(owner2)
	_, err = f.s.ActivateTargets(f.ctx, []Activation{{TargetID: ts[1].ID, DatasetID: rw2[0].DatasetID, Address: rw2[0].Address}})
	wantKind(t, err, apierr.Precondition)
}
