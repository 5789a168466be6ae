package store

import (
	"sync"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
)

// RetireTargets proves a created target unreferenced before an unwinding
// saga destroys it, and keeps one a volume made meanwhile names.
func TestRetireTargets(t *testing.T) {
	f := newFixture(t)
	unused := f.roRegion(uuid.New())
	escaped := f.roRegion(uuid.New())
	clone := uuid.New()
	f.create(clone, snapshotVCR([]Target{escaped}))
	pending, err := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRORegion, RegionID: uuid.New(), OwnerVolumeID: uuid.New()}})
	if err != nil {
		t.Fatal(err)
	}
	unknown := uuid.New()

	got, err := f.s.RetireTargets(f.ctx, []uuid.UUID{unused.ID, escaped.ID, pending[0].ID, unknown})
	if err != nil {
		t.Fatal(err)
	}
	if !sameIDs(got.Retired, []uuid.UUID{unused.ID, pending[0].ID}) || !sameIDs(got.Kept, []uuid.UUID{escaped.ID}) || !sameIDs(got.Absent, []uuid.UUID{unknown}) {
		t.Fatalf("retire: %+v", got)
	}
	if s := f.target(unused.ID).State; s != StateDeleting {
		t.Fatalf("retired active target is %s, want DELETING", s)
	}
	if s := f.target(escaped.ID).State; s != StateActive {
		t.Fatalf("kept target is %s, want ACTIVE", s)
	}
	// A retired target can no longer be named.
	_, _, err = f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: snapshotVCR([]Target{unused})})
	wantKind(t, err, apierr.Precondition)
	// Again: the same answer, nothing changed.
	again, err := f.s.RetireTargets(f.ctx, []uuid.UUID{unused.ID, escaped.ID, pending[0].ID, unknown})
	if err != nil || !sameIDs(again.Retired, got.Retired) || !sameIDs(again.Kept, got.Kept) || !sameIDs(again.Absent, got.Absent) {
		t.Fatalf("retire again: %+v %v", again, err)
	}
	// What was retired unregisters; the kept target is the clone's: its
	// delete frees it.
	if n, err := f.s.UnregisterTargets(f.ctx, got.Retired); err != nil || n != 2 {
		t.Fatalf("unregister retired: %d %v", n, err)
	}
	res := f.softDelete(clone)
	if !sameIDs(res.Regions, []uuid.UUID{escaped.RegionID}) {
		t.Fatalf("deleting the clone freed %v, want the kept region", res.Regions)
	}
	f.healthy()
}

// Bad input changes nothing: a rw region, a nil id.
func TestRetireTargetsRefusesBadInput(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	ro := f.roRegion(uuid.New())
	_, err := f.s.RetireTargets(f.ctx, []uuid.UUID{ro.ID, rw[0].ID})
	wantKind(t, err, apierr.Invalid)
	wantContains(t, err, "target_ids[1]")
	_, err = f.s.RetireTargets(f.ctx, []uuid.UUID{uuid.Nil})
	wantKind(t, err, apierr.Invalid)
	if s := f.target(ro.ID).State; s != StateActive {
		t.Fatalf("a refused call changed %s to %s", ro.ID, s)
	}
}

// A clone racing the retire either commits first (the target is kept) or
// cannot name the target (it is DELETING): never both a reference and a
// retired target.
func TestRetireTargetsRacesCreateVolume(t *testing.T) {
	f := newFixture(t)
	for i := 0; i < 20; i++ {
		ro := f.roRegion(uuid.New())
		var wg sync.WaitGroup
		var res RetireResult
		var rerr, cerr error
		wg.Go(func() { res, rerr = f.s.RetireTargets(f.ctx, []uuid.UUID{ro.ID}) })
		wg.Go(func() {
			_, _, cerr = f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: snapshotVCR([]Target{ro})})
		})
		wg.Wait()
		if rerr != nil {
			t.Fatal(rerr)
		}
		retired := len(res.Retired) == 1
		if retired == (cerr == nil) {
			t.Fatalf("round %d: retired=%v, clone err=%v", i, retired, cerr)
		}
	}
	f.healthy()
}

// The purpose a volume is created with is stored and reported by every
// lookup a step scan uses. A temporary volume taking a volume's read-only
// parent keeps its own: it is the user's (a scrub's), holds real
// references until deleted, and is stepped like any data volume.
func TestVolumePurpose(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snap, snaps := f.newSnapshot(rw)
	stash := uuid.New()
	if _, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: stash, VCR: volumeNode(nil), Purpose: PurposeStash}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: volumeNode(nil), Purpose: "bogus"}); apierr.KindOf(err) != apierr.Invalid {
		t.Fatalf("bogus purpose: %v", err)
	}
	clone, _ := f.newDisk(snapshotVCR(snaps))
	for id, want := range map[uuid.UUID]Purpose{snap: PurposeData, stash: PurposeStash, clone: PurposeData} {
		v, err := f.s.GetVolume(f.ctx, id, false)
		if err != nil || v.Purpose != want {
			t.Fatalf("volume %s: purpose %q (%v), want %q", id, v.Purpose, err, want)
		}
	}
	temp := uuid.New()
	if _, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: temp, VCR: volumeNode(nil)}); err != nil {
		t.Fatal(err)
	}
	if ok, err := f.s.RemoveReadOnlyParent(f.ctx, clone, temp); err != nil || !ok {
		t.Fatalf("remove read-only parent: %v %v", ok, err)
	}
	refs, _, err := f.s.FindVolumesReferencingTarget(f.ctx, snaps[0].ID, false, uuid.Nil, 100)
	if err != nil {
		t.Fatal(err)
	}
	got := map[uuid.UUID]Purpose{}
	for _, r := range refs {
		got[r.ID] = r.Purpose
	}
	if len(got) != 2 || got[snap] != PurposeData || got[temp] != PurposeData {
		t.Fatalf("volumes referencing the region snapshot: %v", got)
	}
	ref, err := f.s.VolumeReferencesReadOnlyTarget(f.ctx, temp, snaps[0].ID)
	if err != nil || !ref.Referenced || ref.Purpose != PurposeData {
		t.Fatalf("reference by the temporary volume: %+v %v", ref, err)
	}
	f.healthy()
}

// A user's delete names the purpose it expects: a replacement's stash or
// reference volume is refused with nothing changed, while a missing or
// already deleted volume answers as always.
func TestSoftDeleteOnlyPurpose(t *testing.T) {
	f := newFixture(t)
	ro := f.roRegion(uuid.New())
	stash := uuid.New()
	if _, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: stash, VCR: snapshotVCR([]Target{ro}), Purpose: PurposeStash}); err != nil {
		t.Fatal(err)
	}
	_, err := f.s.SoftDeleteVolumeWith(f.ctx, stash, SoftDeleteOptions{OnlyPurpose: PurposeData})
	wantKind(t, err, apierr.Precondition)
	wantContains(t, err, "stash")
	if v, err := f.s.GetVolume(f.ctx, stash, false); err != nil || v.SoftDeleted() {
		t.Fatalf("a refused delete changed the stash: %+v %v", v, err)
	}
	if res, err := f.s.SoftDeleteVolumeWith(f.ctx, uuid.New(), SoftDeleteOptions{OnlyPurpose: PurposeData}); err != nil || !res.VolumeMissing {
		t.Fatalf("missing volume: %+v %v", res, err)
	}
	// The replacement's own delete names no purpose.
	if res, err := f.s.SoftDeleteVolume(f.ctx, stash); err != nil || !sameIDs(res.Regions, []uuid.UUID{ro.RegionID}) {
		t.Fatalf("the replacement's delete: %+v %v", res, err)
	}
	if res, err := f.s.SoftDeleteVolumeWith(f.ctx, stash, SoftDeleteOptions{OnlyPurpose: PurposeData}); err != nil || !res.AlreadyDeleted {
		t.Fatalf("already deleted: %+v %v", res, err)
	}
	f.healthy()
}
