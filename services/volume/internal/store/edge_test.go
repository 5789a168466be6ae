package store

// One test per edge case of the volume-service's contract (the proto
// comments and services/volume/README.md), plus this service's deliberate
// deviations from the reference.

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/vcr"
)

func TestCreateVolumeExistingIDReturnsStoredRowIgnoringVCRAndCounts(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	id := uuid.New()
	f.create(id, volumeNode(snapshotVCR(snaps)))
	again, created, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: volumeNode(nil)})
	if err != nil || created {
		t.Fatalf("replay: created=%v err=%v", created, err)
	}
	if again.VCR.Volume.ReadOnlyParent == nil {
		t.Fatal("replay returned the new VCR, not the stored one")
	}
	if n := f.target(snaps[0].ID).RefCount; n != 2 {
		t.Fatalf("count after replay = %d, want 2 (snapshot + clone)", n)
	}
	// Also for a soft-deleted row.
	f.softDelete(id)
	if _, created, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: volumeNode(snapshotVCR(snaps))}); err != nil || created {
		t.Fatalf("replay on soft-deleted: created=%v err=%v", created, err)
	}
	if n := f.target(snaps[0].ID).RefCount; n != 1 {
		t.Fatalf("count = %d, want 1", n)
	}
	_ = snapID
	f.healthy()
}

func TestCreateVolumeUnresolvableReadOnlyTargetFailsAndCreatesNothing(t *testing.T) {
	f := newFixture(t)
	good := f.roRegion(uuid.New())
	f.create(uuid.New(), snapshotVCR([]Target{good}))
	unknown := Target{Address: f.addr()}
	id := uuid.New()
	_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: snapshotVCR([]Target{good, unknown})})
	wantKind(t, err, apierr.Precondition)
	wantContains(t, err, canon(t, unknown.Address))
	for _, table := range []string{"volume WHERE id", "volume_resource_usage WHERE volume_id", "volume_target WHERE volume_id"} {
		if n := f.count(`SELECT count(*) FROM `+table+` = $1`, id); n != 0 {
			t.Fatalf("%s: %d rows written", table, n)
		}
	}
	if n := f.target(good.ID).RefCount; n != 1 {
		t.Fatalf("count = %d, want 1", n)
	}
	f.healthy()
}

// A PENDING target has no address yet (the reference's NULL port): nothing
// can resolve to it until it is activated.
func TestPendingTargetCannotBeResolvedUntilActive(t *testing.T) {
	f := newFixture(t)
	pending, err := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRORegion, RegionID: uuid.New()}})
	if err != nil {
		t.Fatal(err)
	}
	addr := f.addr()
	_, _, err = f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: snapshotVCR([]Target{{Address: addr}})})
	wantKind(t, err, apierr.Precondition)
	if _, err := f.s.ResolveAddress(f.ctx, addr); apierr.KindOf(err) != apierr.NotFound {
		t.Fatalf("resolve pending: %v", err)
	}
	if _, err := f.s.ActivateTargets(f.ctx, []Activation{{TargetID: pending[0].ID, DatasetID: uuid.New(), Address: addr}}); err != nil {
		t.Fatal(err)
	}
	f.create(uuid.New(), snapshotVCR([]Target{{Address: addr}}))
	if n := f.target(pending[0].ID).RefCount; n != 1 {
		t.Fatalf("count %d", n)
	}
	f.healthy()
}

func TestCreateVolumeOnDeletingSnapshotFailsEvenAfterEarlierCheckout(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	copyVCR, err := f.s.Checkout(f.ctx, snapID, ReasonReadOnlyCopy, true)
	if err != nil {
		t.Fatal(err)
	}
	res := f.softDelete(snapID)
	if len(res.RegionSnapshots) != 3 {
		t.Fatalf("freed %d region snapshots, want 3", len(res.RegionSnapshots))
	}
	_, _, err = f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: volumeNode(copyVCR)})
	wantKind(t, err, apierr.Precondition)
	// And through the server-side clone path.
	_, _, err = f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: volumeNode(nil), ReadOnlyParentFrom: snapID})
	wantKind(t, err, apierr.Precondition)
	if st := f.target(snaps[0].ID).State; st != StateDeleting {
		t.Fatalf("state = %s", st)
	}
	f.healthy()
}

// Deviation from the reference (documented): rw targets are validated at
// create — they must be registered ACTIVE rw regions owned by the volume —
// so "soft delete later fails" cannot be reached through the API; it is
// shown here by corrupting the registry.
func TestCreateVolumeValidatesReadWriteTargetsAndSoftDeleteFailsIfTheyVanish(t *testing.T) {
	f := newFixture(t)
	id := uuid.New()
	rw := f.rwRegions(uuid.New(), 3) // owned by someone else
	_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: disk(rw, nil)})
	wantKind(t, err, apierr.Precondition)
	wantContains(t, err, "owned by")
	_, _, err = f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: disk([]Target{{Address: f.addr()}}, nil)})
	wantKind(t, err, apierr.Precondition)

	id2, rw2 := f.newDisk(nil)
	f.exec(`DELETE FROM target WHERE target_id = $1`, rw2[1].ID)
	_, err = f.s.SoftDeleteVolume(f.ctx, id2)
	wantKind(t, err, apierr.Precondition)
	v, _ := f.s.GetVolume(f.ctx, id2, true)
	if v.SoftDeleted() {
		t.Fatal("failed soft delete left the volume deleted")
	}
}

func TestCreateVolumeRejectsReadOnlyTargetListedTwice(t *testing.T) {
	f := newFixture(t)
	ro := f.roRegion(uuid.New())
	id := uuid.New()
	v := volumeNode(snapshotVCR([]Target{ro}), regionNode(true, 1, ro))
	_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: v})
	wantKind(t, err, apierr.Invalid)
	wantContains(t, err, "vcr.volume.read_only_parent.volume.sub_volumes[0].region.opts.target[0]")
	if strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatal("error carries the key")
	}
	if n := f.count(`SELECT count(*) FROM volume_resource_usage`); n != 0 {
		t.Fatalf("%d usage rows written", n)
	}
}

// The reference's "unique" usage index never fired (NULL columns). Here
// uniqueness holds because a VCR may name a read-only target once (above)
// and a duplicate row is reported by CheckInvariants.
func TestUsageUniquenessEnforcedOutsideTheIndex(t *testing.T) {
	f := newFixture(t)
	ro := f.roRegion(uuid.New())
	id := uuid.New()
	f.create(id, snapshotVCR([]Target{ro}))
	f.exec(`INSERT INTO volume_resource_usage (usage_id, volume_id, target_id) VALUES (gen_random_uuid(), $1, $2)`, id, ro.ID)
	if got := f.violationCodes(); strings.Join(got, ",") != VDuplicateUsageRow {
		t.Fatalf("violations = %v", got)
	}
	_, err := f.s.SoftDeleteVolume(f.ctx, id)
	wantKind(t, err, apierr.Internal)
}

func TestSoftDeleteOfHardDeletedVolumeReturnsEmpty(t *testing.T) {
	f := newFixture(t)
	r := f.softDelete(uuid.New())
	if !r.VolumeMissing || len(r.Regions)+len(r.RegionSnapshots) != 0 {
		t.Fatalf("result = %+v", r)
	}
}

func TestSoftDeleteTwiceReturnsStoredListAndChangesNoCounts(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	_, snaps := f.newSnapshot(rw)
	a := uuid.New()
	f.create(a, volumeNode(snapshotVCR(snaps)))
	b := uuid.New()
	f.create(b, volumeNode(snapshotVCR(snaps)))
	first := f.softDelete(a)
	second := f.softDelete(a)
	if !second.AlreadyDeleted || !sameIDs(first.Regions, second.Regions) || len(first.RegionSnapshots) != len(second.RegionSnapshots) {
		t.Fatalf("first %+v second %+v", first, second)
	}
	if n := f.target(snaps[0].ID).RefCount; n != 2 {
		t.Fatalf("count = %d, want 2", n)
	}
	f.healthy()
}

func TestSoftDeleteOfDeletedRowWithNullCleanupListReturnsEmpty(t *testing.T) {
	f := newFixture(t)
	id, _ := f.newDisk(nil)
	f.exec(`UPDATE volume SET time_deleted = now() WHERE id = $1`, id)
	r := f.softDelete(id)
	if !r.AlreadyDeleted || len(r.Regions)+len(r.RegionSnapshots) != 0 {
		t.Fatalf("result = %+v", r)
	}
}

func TestStoredCleanupListWithNullListsDecodesEmpty(t *testing.T) {
	var r SoftDeleteResult
	if err := decodeResources([]byte(`{"V3":{"regions":null,"region_snapshots":null}}`), &r); err != nil {
		t.Fatal(err)
	}
	if len(r.Regions)+len(r.RegionSnapshots) != 0 {
		t.Fatalf("%+v", r)
	}
	b, _ := json.Marshal(crucibleResources{V3: &crucibleResourcesV3{Regions: []uuid.UUID{}, RegionSnapshots: []regionSnapshotV3{}}})
	if string(b) != `{"V3":{"regions":[],"region_snapshots":[]}}` {
		t.Fatalf("stored shape = %s", b)
	}
}

func TestSoftDeleteKeepsRWRegionWithAnySnapshotForLater(t *testing.T) {
	for _, state := range []string{"PENDING", "ACTIVE", "DELETING"} {
		t.Run(state, func(t *testing.T) {
			f := newFixture(t)
			id, rw := f.newDisk(nil)
			snapID := uuid.New()
			reg := []Registration{{Kind: KindRegionSnapshot, RegionID: rw[0].RegionID, SnapshotID: snapID}}
			if _, err := f.s.RegisterTargets(f.ctx, reg); err != nil {
				t.Fatal(err)
			}
			if state != "PENDING" {
				f.exec(`UPDATE target SET state = $2, address = $3, dataset_id = gen_random_uuid() WHERE target_id = $1`,
					snapshotRefTarget(RegionSnapshotRef{RegionID: rw[0].RegionID, SnapshotID: snapID}), state, canon(t, f.addr()))
			}
			r := f.softDelete(id)
			if !sameIDs(r.Regions, regionIDs(rw[1:])) {
				t.Fatalf("freed %v, want %v", r.Regions, regionIDs(rw[1:]))
			}
			regions, vols, err := f.s.FindDeletedVolumeRegions(f.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if !sameIDs(regions, targetIDs(rw[1:])) || len(vols) != 0 {
				t.Fatalf("find = %v %v", regions, vols)
			}
		})
	}
}

func TestSoftDeleteFlagsSharedTargetOnlyWhenCountReachesZero(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	c1 := uuid.New()
	f.create(c1, volumeNode(snapshotVCR(snaps)))
	c2 := uuid.New()
	f.create(c2, volumeNode(snapshotVCR(snaps)))
	for _, id := range []uuid.UUID{c1, snapID} {
		if r := f.softDelete(id); len(r.RegionSnapshots) != 0 {
			t.Fatalf("%s freed %v while referenced", id, r.RegionSnapshots)
		}
	}
	if st := f.target(snaps[0].ID).State; st != StateActive {
		t.Fatalf("state %s before zero", st)
	}
	r := f.softDelete(c2)
	if len(r.RegionSnapshots) != 3 {
		t.Fatalf("freed %v", r.RegionSnapshots)
	}
	for i, rs := range r.RegionSnapshots {
		if snapshotRefTarget(rs) != snaps[i].ID || rs.DatasetID != snaps[i].DatasetID {
			t.Fatalf("freed[%d] = %+v, want %s", i, rs, snaps[i].ID)
		}
		if st := f.target(snaps[i].ID).State; st != StateDeleting {
			t.Fatalf("state %s", st)
		}
	}
	f.healthy()
}

func TestSoftDeleteRecomputesTargetsFromCurrentVCR(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	cloneID, _ := f.newDisk(snapshotVCR(snaps))
	// Replace one snapshot target in the clone by a read-only region.
	ro := f.roRegion(snapID)
	holder := uuid.New()
	f.create(holder, snapshotVCR([]Target{ro}))
	stash := uuid.New()
	f.create(stash, volumeNode(nil))
	if r, err := f.s.ReplaceReadOnlyTarget(f.ctx, cloneID, snaps[1].ID, ro.ID, stash); err != nil || r != ReplaceDone {
		t.Fatalf("replace: %v %v", r, err)
	}
	f.softDelete(cloneID)
	// The clone released ro (current VCR), not snaps[1] (held by the stash).
	if n := f.target(ro.ID).RefCount; n != 1 {
		t.Fatalf("ro count = %d, want 1 (holder)", n)
	}
	if n := f.target(snaps[1].ID).RefCount; n != 2 {
		t.Fatalf("snaps[1] count = %d, want 2 (snapshot volume + stash)", n)
	}
	f.healthy()
}

func TestSoftDeleteWalksEveryROPLevelButNeverLooksForRWRegionsUnderROP(t *testing.T) {
	f := newFixture(t)
	a := f.roRegion(uuid.New())
	b := f.roRegion(uuid.New())
	c := f.roRegion(uuid.New())
	rop := volumeNode(volumeNode(snapshotVCR([]Target{c}), regionNode(true, 1, b)), regionNode(true, 1, a))
	id, rw := f.newDisk(rop)
	r := f.softDelete(id)
	if !sameIDs(r.Regions, append(regionIDs(rw), a.RegionID, b.RegionID, c.RegionID)) {
		t.Fatalf("freed %v", r.Regions)
	}
	for _, x := range []Target{a, b, c} {
		if st := f.target(x.ID).State; st != StateDeleting {
			t.Fatalf("%s state %s", x.ID, st)
		}
	}
	f.healthy()
}

func TestResolutionIgnoresDeletingTargetsAndMatchesCanonicalAddress(t *testing.T) {
	f := newFixture(t)
	old := f.roRegion(uuid.New())
	id := uuid.New()
	f.create(id, snapshotVCR([]Target{old}))
	f.softDelete(id) // old is DELETING now
	// The agent reuses the port for a new target.
	regs, err := f.s.RegisterTargets(f.ctx, []Registration{{Kind: KindRORegion, RegionID: uuid.New()}})
	if err != nil {
		t.Fatal(err)
	}
	spelled := strings.Replace(old.Address, "fd00::", "FD00:0::", 1)
	if _, err := f.s.ActivateTargets(f.ctx, []Activation{{TargetID: regs[0].ID, DatasetID: uuid.New(), Address: spelled}}); err != nil {
		t.Fatal(err)
	}
	got, err := f.s.ResolveAddress(f.ctx, spelled)
	if err != nil || got.ID != regs[0].ID {
		t.Fatalf("resolve = %v %v, want %s", got.ID, err, regs[0].ID)
	}
	id2 := uuid.New()
	f.create(id2, snapshotVCR([]Target{{Address: spelled}}))
	if n := f.target(regs[0].ID).RefCount; n != 1 {
		t.Fatalf("new target count %d", n)
	}
	if n := f.target(old.ID).RefCount; n != 0 {
		t.Fatalf("deleting target count %d", n)
	}
	refs, _, _ := f.s.FindVolumesReferencingTarget(f.ctx, regs[0].ID, true, uuid.Nil, 10)
	if len(refs) != 1 || refs[0].ID != id2 {
		t.Fatalf("index = %v", refs)
	}
	f.healthy()
}

func TestHardDeleteOfMissingVolumeSucceedsAndNeverCascades(t *testing.T) {
	f := newFixture(t)
	if r, err := f.s.HardDeleteVolume(f.ctx, uuid.New()); err != nil || r.Kept {
		t.Fatalf("%+v %v", r, err)
	}
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	f.softDelete(snapID)
	if r, err := f.s.HardDeleteVolume(f.ctx, snapID); err != nil || r.Kept {
		t.Fatalf("%+v %v", r, err)
	}
	// Targets stay registered (DELETING): hard delete touches only the row and its index.
	if st := f.target(snaps[0].ID).State; st != StateDeleting {
		t.Fatalf("state %s", st)
	}
	if n := f.count(`SELECT count(*) FROM volume_target WHERE volume_id = $1`, snapID); n != 0 {
		t.Fatalf("%d index rows left", n)
	}
	f.healthy()
}

// Deviation (the fix the issue asks for): hard-deleting a live volume would
// leak its usage rows, so it is refused.
func TestHardDeleteOfLiveVolumeIsRefused(t *testing.T) {
	f := newFixture(t)
	ro := f.roRegion(uuid.New())
	id := uuid.New()
	f.create(id, snapshotVCR([]Target{ro}))
	_, err := f.s.HardDeleteVolume(f.ctx, id)
	wantKind(t, err, apierr.Precondition)
	if n := f.target(ro.ID).RefCount; n != 1 {
		t.Fatalf("count %d", n)
	}
}

func TestHardDeleteKeptUntilLastOwnedRWTargetIsUnregistered(t *testing.T) {
	f := newFixture(t)
	id, rw := f.newDisk(nil)
	f.softDelete(id)
	for i := range rw {
		r, err := f.s.HardDeleteVolume(f.ctx, id)
		if err != nil || !r.Kept || len(r.RemainingRegions) != len(rw)-i {
			t.Fatalf("step %d: %+v %v", i, r, err)
		}
		if n, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{rw[i].ID}); err != nil || n != 1 {
			t.Fatalf("unregister: %d %v", n, err)
		}
	}
	if r, err := f.s.HardDeleteVolume(f.ctx, id); err != nil || r.Kept {
		t.Fatalf("%+v %v", r, err)
	}
	if _, err := f.s.GetVolume(f.ctx, id, true); apierr.KindOf(err) != apierr.NotFound {
		t.Fatalf("volume still there: %v", err)
	}
}

func TestFindDeletedVolumeRegionsIgnoresMissingNotYetCreatedAndLiveOwners(t *testing.T) {
	f := newFixture(t)
	f.rwRegions(uuid.New(), 3) // allocated for a volume not created yet
	f.newDisk(nil)             // live owner
	regions, vols, err := f.s.FindDeletedVolumeRegions(f.ctx)
	if err != nil || len(regions)+len(vols) != 0 {
		t.Fatalf("%v %v %v", regions, vols, err)
	}
}

// The premature hard delete of the seed (#6353): a volume is listed only
// when all of its rw regions are gone or in the same batch.
func TestFindDeletedVolumeRegionsListsVolumeOnlyWhenAllRegionsFreed(t *testing.T) {
	f := newFixture(t)
	id, rw := f.newDisk(nil)
	snapID := uuid.New()
	snaps := f.snapshots(rw[:1], snapID) // only region 0 is snapshotted
	f.create(snapID, snapshotVCR(snaps))
	r := f.softDelete(id)
	if !sameIDs(r.Regions, regionIDs(rw[1:])) {
		t.Fatalf("soft delete freed %v", r.Regions)
	}
	regions, vols, _ := f.s.FindDeletedVolumeRegions(f.ctx)
	if !sameIDs(regions, targetIDs(rw[1:])) || len(vols) != 0 {
		t.Fatalf("find = %v %v; the volume must not be listed while region 0 lives", regions, vols)
	}
	// The saga destroys and unregisters the freed regions; the volume is kept.
	if _, err := f.s.UnregisterTargets(f.ctx, targetIDs(rw[1:])); err != nil {
		t.Fatal(err)
	}
	if hr, _ := f.s.HardDeleteVolume(f.ctx, id); !hr.Kept {
		t.Fatal("hard delete not KEPT while region 0 is owned")
	}
	// Deleting the snapshot frees the region snapshot; then region 0 and the volume.
	sr := f.softDelete(snapID)
	if len(sr.RegionSnapshots) != 1 {
		t.Fatalf("snapshot delete freed %v", sr.RegionSnapshots)
	}
	if _, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{snaps[0].ID}); err != nil {
		t.Fatal(err)
	}
	regions, vols, _ = f.s.FindDeletedVolumeRegions(f.ctx)
	if !sameIDs(regions, []uuid.UUID{rw[0].ID}) || !sameIDs(vols, []uuid.UUID{id}) {
		t.Fatalf("find = %v %v", regions, vols)
	}
	// Returned twice (a concurrent saga) until unregistered: idempotent.
	regions2, _, _ := f.s.FindDeletedVolumeRegions(f.ctx)
	if !sameIDs(regions, regions2) {
		t.Fatal("second scan differs")
	}
	if _, err := f.s.UnregisterTargets(f.ctx, []uuid.UUID{rw[0].ID, rw[0].ID}); err != nil {
		t.Fatal(err)
	}
	if hr, err := f.s.HardDeleteVolume(f.ctx, id); err != nil || hr.Kept {
		t.Fatalf("%+v %v", hr, err)
	}
	f.healthy()
}

func TestCheckoutDoesNotRejectSoftDeletedAndMissingIsNotFound(t *testing.T) {
	f := newFixture(t)
	id, _ := f.newDisk(nil)
	f.softDelete(id)
	if _, err := f.s.Checkout(f.ctx, id, ReasonConstruct, false); err != nil {
		t.Fatal(err)
	}
	// The proto contract says NOT_FOUND (the reference answers 500).
	_, err := f.s.Checkout(f.ctx, uuid.New(), ReasonConstruct, false)
	wantKind(t, err, apierr.NotFound)
}

func TestCheckoutReturnsPreBumpGensAndPersistsPlusOneForDirectRegions(t *testing.T) {
	f := newFixture(t)
	id := uuid.New()
	a := f.rwRegions(id, 3)
	b := f.rwRegions(id, 3)
	nested := f.rwRegions(id, 3)
	ro := f.roRegion(uuid.New())
	v := volumeNode(snapshotVCR([]Target{ro}), regionNode(false, 3, a...), volumeNode(nil, regionNode(false, 20, nested...)), regionNode(false, 8, b...))
	f.create(id, v)
	for i, want := range [][2]uint64{{3, 8}, {4, 9}, {5, 10}} {
		got, err := f.s.Checkout(f.ctx, id, ReasonCopyAndModify, false)
		if err != nil {
			t.Fatal(err)
		}
		s := got.Volume.SubVolumes
		if s[0].Region.Gen != want[0] || s[2].Region.Gen != want[1] || s[1].Volume.SubVolumes[0].Region.Gen != 20 ||
			got.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region.Gen != 1 {
			t.Fatalf("checkout %d: gens %d,%d nested %d", i, s[0].Region.Gen, s[2].Region.Gen, s[1].Volume.SubVolumes[0].Region.Gen)
		}
		if s[1].Volume == nil {
			t.Fatal("non-region sub-volume moved")
		}
	}
	f.healthy()
}

func TestCheckoutOfVolumeWithoutRegionSubVolumesWritesNothing(t *testing.T) {
	f := newFixture(t)
	id := uuid.New()
	f.create(id, volumeNode(nil, &vcr.VCR{File: &vcr.File{ID: uuid.NewString(), BlockSize: 512, Path: "/img"}}))
	var before, after string
	f.pool.QueryRow(f.ctx, `SELECT xmin::text FROM volume WHERE id = $1`, id).Scan(&before)
	if _, err := f.s.Checkout(f.ctx, id, ReasonConstruct, false); err != nil {
		t.Fatal(err)
	}
	f.pool.QueryRow(f.ctx, `SELECT xmin::text FROM volume WHERE id = $1`, id).Scan(&after)
	if before != after {
		t.Fatal("row rewritten")
	}
}

func TestCheckoutOfTopLevelRegionIsErrorAndFileURLPassThrough(t *testing.T) {
	f := newFixture(t)
	file := uuid.New()
	f.create(file, &vcr.VCR{File: &vcr.File{ID: uuid.NewString(), BlockSize: 512, Path: "/img"}})
	url := uuid.New()
	f.create(url, &vcr.VCR{URL: &vcr.URL{ID: uuid.NewString(), BlockSize: 512, URL: "http://img"}})
	for _, id := range []uuid.UUID{file, url} {
		if _, err := f.s.Checkout(f.ctx, id, ReasonConstruct, false); err != nil {
			t.Fatal(err)
		}
	}
	// A bare region cannot be created; a stored one (legacy/corrupt) fails checkout.
	_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: regionNode(false, 1, Target{Address: f.addr()})})
	wantKind(t, err, apierr.Invalid)
	f.exec(`UPDATE volume SET data = $2 WHERE id = $1`, file, `{"type":"region","block_size":512,"blocks_per_extent":1,"extent_count":1,"gen":1,"opts":{"id":"`+uuid.NewString()+`","target":["[fd00::1]:1"],"read_only":false}}`)
	_, err = f.s.Checkout(f.ctx, file, ReasonConstruct, false)
	wantKind(t, err, apierr.Internal)
}

func TestReadOnlyCopyOfVolumeWithFileSubVolumeIsInternalNotPrecondition(t *testing.T) {
	f := newFixture(t)
	id := uuid.New()
	f.create(id, volumeNode(nil, &vcr.VCR{File: &vcr.File{ID: uuid.NewString(), BlockSize: 512}}))
	_, err := f.s.Checkout(f.ctx, id, ReasonReadOnlyCopy, false)
	wantKind(t, err, apierr.Internal)
	disk, _ := f.newDisk(nil)
	_, err = f.s.Checkout(f.ctx, disk, ReasonReadOnlyCopy, false)
	wantKind(t, err, apierr.Precondition)
}

// randomize_ids fails when any region is rw; unlike the reference's
// checkout_randomize_ids this call is atomic: a refused copy bumps nothing.
func TestRandomizeIDsRefusedWhenAnyRegionIsRWAndBumpsNothing(t *testing.T) {
	f := newFixture(t)
	id, _ := f.newDisk(nil)
	_, err := f.s.Checkout(f.ctx, id, ReasonCopyAndModify, true)
	wantKind(t, err, apierr.Precondition)
	v, _ := f.s.GetVolume(f.ctx, id, true)
	if g := v.VCR.Volume.SubVolumes[0].Region.Gen; g != 1 {
		t.Fatalf("gen bumped to %d by a refused copy", g)
	}
	_, rw := f.newDisk(nil)
	snapID, _ := f.newSnapshot(rw)
	c, err := f.s.Checkout(f.ctx, snapID, ReasonReadOnlyCopy, true)
	if err != nil {
		t.Fatal(err)
	}
	sv, _ := f.s.GetVolume(f.ctx, snapID, true)
	if c.Volume.ID == sv.VCR.Volume.ID || c.Volume.SubVolumes[0].Region.Opts.ID == sv.VCR.Volume.SubVolumes[0].Region.Opts.ID {
		t.Fatal("ids not randomised")
	}
}

func TestRemoveReadOnlyParentNoOpForMissingDeletedNonVolumeOrROPLess(t *testing.T) {
	f := newFixture(t)
	temp := uuid.New()
	f.create(temp, volumeNode(nil))
	noROP, _ := f.newDisk(nil)
	file := uuid.New()
	f.create(file, &vcr.VCR{File: &vcr.File{ID: uuid.NewString(), BlockSize: 512}})
	ro := f.roRegion(uuid.New())
	deleted, _ := f.newDisk(snapshotVCR([]Target{ro}))
	f.softDelete(deleted)
	for _, id := range []uuid.UUID{uuid.New(), noROP, file, deleted} {
		if ok, err := f.s.RemoveReadOnlyParent(f.ctx, id, temp); err != nil || ok {
			t.Fatalf("%s: %v %v", id, ok, err)
		}
	}
	f.healthy()
}

func TestRemoveReadOnlyParentNeedsLiveTempAndMovesUsageRows(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	clone, _ := f.newDisk(snapshotVCR(snaps))
	_, err := f.s.RemoveReadOnlyParent(f.ctx, clone, uuid.New())
	wantKind(t, err, apierr.Precondition)
	temp := uuid.New()
	f.create(temp, volumeNode(nil))
	if ok, err := f.s.RemoveReadOnlyParent(f.ctx, clone, temp); err != nil || !ok {
		t.Fatalf("%v %v", ok, err)
	}
	if ok, err := f.s.RemoveReadOnlyParent(f.ctx, clone, temp); err != nil || ok {
		t.Fatalf("replay: %v %v", ok, err)
	}
	if n := f.count(`SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1`, temp); n != 3 {
		t.Fatalf("temp holds %d rows", n)
	}
	if n := f.target(snaps[0].ID).RefCount; n != 2 {
		t.Fatalf("count %d, want 2 (moved, not dropped)", n)
	}
	refs, _, _ := f.s.FindVolumesReferencingTarget(f.ctx, snaps[0].ID, false, uuid.Nil, 10)
	if !sameIDs([]uuid.UUID{refs[0].ID, refs[1].ID}, []uuid.UUID{snapID, temp}) {
		t.Fatalf("index = %v", refs)
	}
	f.healthy()
	f.softDelete(temp)
	if n := f.target(snaps[0].ID).RefCount; n != 1 {
		t.Fatalf("count %d after temp delete", n)
	}
	f.healthy()
}

// replaceRegionSetup: a disk, a new rw region for it, a blank stash.
func replaceRegionSetup(f *fixture) (disk uuid.UUID, rw []Target, newRegion Target, stash uuid.UUID) {
	disk, rw = f.newDisk(nil)
	stash = uuid.New()
	f.create(stash, volumeNode(nil))
	newRegion = f.rwRegions(stash, 1)[0]
	return
}

func TestReplaceRegionAlreadyHappenedOnReplayAndUndoBySwap(t *testing.T) {
	f := newFixture(t)
	d, rw, nr, stash := replaceRegionSetup(f)
	if r, err := f.s.ReplaceRegion(f.ctx, d, rw[1].ID, nr.ID, stash); err != nil || r != ReplaceDone {
		t.Fatalf("%v %v", r, err)
	}
	f.healthy()
	if f.target(rw[1].ID).OwnerVolumeID != stash || f.target(nr.ID).OwnerVolumeID != d {
		t.Fatal("ownership not swapped")
	}
	if r, err := f.s.ReplaceRegion(f.ctx, d, rw[1].ID, nr.ID, stash); err != nil || r != ReplaceAlreadyHappened {
		t.Fatalf("replay: %v %v", r, err)
	}
	if r, err := f.s.ReplaceRegion(f.ctx, d, nr.ID, rw[1].ID, stash); err != nil || r != ReplaceDone {
		t.Fatalf("undo: %v %v", r, err)
	}
	if f.target(rw[1].ID).OwnerVolumeID != d || f.target(nr.ID).OwnerVolumeID != stash {
		t.Fatal("undo did not swap back")
	}
	f.healthy()
	// Deleting the stash frees the region it names.
	r := f.softDelete(stash)
	if !sameIDs(r.Regions, []uuid.UUID{nr.RegionID}) {
		t.Fatalf("stash freed %v", r.Regions)
	}
}

func TestReplaceRegionErrorsWhenBothOrNeitherPresent(t *testing.T) {
	f := newFixture(t)
	d, rw, nr, stash := replaceRegionSetup(f)
	_, err := f.s.ReplaceRegion(f.ctx, d, rw[0].ID, rw[1].ID, stash)
	wantKind(t, err, apierr.Precondition)
	_, err = f.s.ReplaceRegion(f.ctx, d, nr.ID, f.rwRegions(stash, 1)[0].ID, stash)
	wantKind(t, err, apierr.Precondition)
	f.healthy()
}

func TestReplaceRegionBumpsGenOfEveryRegionInSubVolumes(t *testing.T) {
	f := newFixture(t)
	id := uuid.New()
	a := f.rwRegions(id, 3)
	b := f.rwRegions(id, 3)
	ro := f.roRegion(uuid.New())
	f.create(id, volumeNode(snapshotVCR([]Target{ro}), regionNode(false, 3, a...), volumeNode(nil, regionNode(false, 7, b...))))
	stash := uuid.New()
	f.create(stash, volumeNode(nil))
	nr := f.rwRegions(stash, 1)[0]
	if r, err := f.s.ReplaceRegion(f.ctx, id, a[2].ID, nr.ID, stash); err != nil || r != ReplaceDone {
		t.Fatalf("%v %v", r, err)
	}
	v, _ := f.s.GetVolume(f.ctx, id, true)
	s := v.VCR.Volume.SubVolumes
	if s[0].Region.Gen != 4 || s[1].Volume.SubVolumes[0].Region.Gen != 8 || v.VCR.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region.Gen != 1 {
		t.Fatal("wrong gens")
	}
	if s[0].Region.Opts.Target[2] != nr.Address {
		t.Fatal("target not swapped")
	}
	f.healthy()
}

// Deviation: the reference needs no replacement volume row; here the stash
// must exist live, because it takes ownership of the old region.
func TestReplaceRegionNeedsLiveStashAndLeavesTheLedgerAlone(t *testing.T) {
	f := newFixture(t)
	d, rw, nr, stash := replaceRegionSetup(f)
	_, err := f.s.ReplaceRegion(f.ctx, d, rw[0].ID, nr.ID, uuid.New())
	wantKind(t, err, apierr.Precondition)
	before := f.count(`SELECT count(*) FROM volume_resource_usage`)
	if _, err := f.s.ReplaceRegion(f.ctx, d, rw[0].ID, nr.ID, stash); err != nil {
		t.Fatal(err)
	}
	if after := f.count(`SELECT count(*) FROM volume_resource_usage`); after != before {
		t.Fatal("ledger changed")
	}
}

// replaceSnapshotSetup: snapshot, a clone of it, a read-only region held by
// a holder volume, a blank stash.
func replaceSnapshotSetup(f *fixture) (clone uuid.UUID, snaps []Target, ro Target, stash uuid.UUID) {
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	clone, _ = f.newDisk(snapshotVCR(snaps))
	ro = f.roRegion(snapID)
	f.create(uuid.New(), snapshotVCR([]Target{ro}))
	stash = uuid.New()
	f.create(stash, volumeNode(nil))
	return
}

func TestReplaceReadOnlyTargetKeepsGensAndIDsAndUndoRestoresLedger(t *testing.T) {
	f := newFixture(t)
	clone, snaps, ro, stash := replaceSnapshotSetup(f)
	before, _ := f.s.GetVolume(f.ctx, clone, true)
	if r, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, stash); err != nil || r != ReplaceDone {
		t.Fatalf("%v %v", r, err)
	}
	after, _ := f.s.GetVolume(f.ctx, clone, true)
	br := before.VCR.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region
	ar := after.VCR.Volume.ReadOnlyParent.Volume.SubVolumes[0].Region
	if ar.Gen != br.Gen || ar.Opts.ID != br.Opts.ID || after.VCR.Volume.ID != before.VCR.Volume.ID || ar.Opts.Target[0] != ro.Address {
		t.Fatal("gen/ids changed or target not replaced")
	}
	if f.target(snaps[0].ID).RefCount != 2 || f.target(ro.ID).RefCount != 2 {
		t.Fatal("counts: old must stay (parked in stash), new +1")
	}
	st, _ := f.s.GetVolume(f.ctx, stash, true)
	if got := vcr.ReadOnlyTargets(st.VCR); len(got) != 1 || got[0] != snaps[0].Address {
		t.Fatalf("stash VCR names %v", got)
	}
	f.healthy()
	if r, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, stash); err != nil || r != ReplaceAlreadyHappened {
		t.Fatalf("replay %v %v", r, err)
	}
	// Undo: same call with targets swapped; the swap moves the parked row back.
	if r, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, ro.ID, snaps[0].ID, stash); err != nil || r != ReplaceDone {
		t.Fatalf("undo %v %v", r, err)
	}
	if n := f.count(`SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1 AND target_id = $2`, clone, snaps[0].ID); n != 1 {
		t.Fatalf("clone holds %d rows of the old target after undo", n)
	}
	if n := f.count(`SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1 AND target_id = $2`, clone, ro.ID); n != 0 {
		t.Fatalf("clone holds %d rows of the new target after undo", n)
	}
	f.healthy()
}

func TestReplaceReadOnlyTargetErrorsWhenBothOrNeitherPresent(t *testing.T) {
	f := newFixture(t)
	clone, snaps, ro, stash := replaceSnapshotSetup(f)
	_, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, snaps[1].ID, stash)
	wantKind(t, err, apierr.Precondition)
	other := f.roRegion(uuid.New())
	_, err = f.s.ReplaceReadOnlyTarget(f.ctx, clone, ro.ID, other.ID, stash)
	wantKind(t, err, apierr.Precondition)
	f.healthy()
}

func TestReplaceReadOnlyTargetRequiresLiveStashAndOverwritesIt(t *testing.T) {
	f := newFixture(t)
	clone, snaps, ro, stash := replaceSnapshotSetup(f)
	_, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, uuid.New())
	wantKind(t, err, apierr.Precondition)
	dead := uuid.New()
	f.create(dead, volumeNode(nil))
	f.softDelete(dead)
	_, err = f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, dead)
	wantKind(t, err, apierr.Precondition)
	if _, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, stash); err != nil {
		t.Fatal(err)
	}
	f.healthy()
}

func TestBothReplacementsReturnDeletedVolumeResultsWithoutChanges(t *testing.T) {
	f := newFixture(t)
	clone, snaps, ro, stash := replaceSnapshotSetup(f)
	d, rw, nr, rstash := replaceRegionSetup(f)
	f.softDelete(clone)
	f.softDelete(d)
	if r, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, stash); err != nil || r != ReplaceVolumeSoftDeleted {
		t.Fatalf("%v %v", r, err)
	}
	if r, err := f.s.ReplaceRegion(f.ctx, d, rw[0].ID, nr.ID, rstash); err != nil || r != ReplaceVolumeSoftDeleted {
		t.Fatalf("%v %v", r, err)
	}
	gone := uuid.New()
	if r, err := f.s.ReplaceReadOnlyTarget(f.ctx, gone, snaps[0].ID, ro.ID, stash); err != nil || r != ReplaceVolumeHardDeleted {
		t.Fatalf("%v %v", r, err)
	}
	if r, err := f.s.ReplaceRegion(f.ctx, gone, rw[0].ID, nr.ID, rstash); err != nil || r != ReplaceVolumeHardDeleted {
		t.Fatalf("%v %v", r, err)
	}
	f.healthy()
}

func TestFindVolumesReferencingTargetScansSoftDeletedOnlyWhenAsked(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	a, _ := f.newDisk(snapshotVCR(snaps))
	b, _ := f.newDisk(snapshotVCR(snaps))
	f.softDelete(a)
	live, _, _ := f.s.FindVolumesReferencingTarget(f.ctx, snaps[0].ID, false, uuid.Nil, 10)
	all, _, _ := f.s.FindVolumesReferencingTarget(f.ctx, snaps[0].ID, true, uuid.Nil, 10)
	if len(live) != 2 || len(all) != 3 {
		t.Fatalf("live %v all %v", live, all)
	}
	for _, r := range all {
		if r.SoftDeleted != (r.ID == a) {
			t.Fatalf("%+v", r)
		}
	}
	// Paging.
	p1, next, _ := f.s.FindVolumesReferencingTarget(f.ctx, snaps[0].ID, true, uuid.Nil, 2)
	p2, next2, _ := f.s.FindVolumesReferencingTarget(f.ctx, snaps[0].ID, true, next, 2)
	if len(p1) != 2 || len(p2) != 1 || next2 != uuid.Nil {
		t.Fatalf("pages %v %v", p1, p2)
	}
	// rw targets are indexed too.
	owners, _, _ := f.s.FindVolumesReferencingTarget(f.ctx, rw[0].ID, true, uuid.Nil, 10)
	if len(owners) != 1 {
		t.Fatalf("rw index %v", owners)
	}
	_, _ = snapID, b
}

func TestVolumeReferencesReadOnlyTargetForHardAndSoftDeleted(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	_, snaps := f.newSnapshot(rw)
	clone, _ := f.newDisk(snapshotVCR(snaps))
	r, err := f.s.VolumeReferencesReadOnlyTarget(f.ctx, clone, snaps[1].ID)
	if err != nil || !r.Exists || !r.Referenced {
		t.Fatalf("%+v %v", r, err)
	}
	if r, _ := f.s.VolumeReferencesReadOnlyTarget(f.ctx, clone, rw[0].ID); r.Referenced {
		t.Fatal("rw region reported as read-only reference")
	}
	f.softDelete(clone)
	if r, _ := f.s.VolumeReferencesReadOnlyTarget(f.ctx, clone, snaps[1].ID); !r.Exists || !r.SoftDeleted || !r.Referenced {
		t.Fatalf("soft-deleted: %+v", r)
	}
	if r, _ := f.s.VolumeReferencesReadOnlyTarget(f.ctx, uuid.New(), snaps[1].ID); r.Exists || r.Referenced {
		t.Fatalf("missing: %+v", r)
	}
}

func TestVolumeDataKeysAreNeverInErrors(t *testing.T) {
	f := newFixture(t)
	ro := f.roRegion(uuid.New())
	v := volumeNode(snapshotVCR([]Target{ro}), regionNode(false, 1, Target{Address: "10.0.0.1:1"}))
	_, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: uuid.New(), VCR: v})
	wantKind(t, err, apierr.Invalid)
	if strings.Contains(err.Error(), "c2VjcmV0") {
		t.Fatal("key in error")
	}
}

func TestReplaceReadOnlyTargetFailsWhenStashHoldsTheNewTargetTwice(t *testing.T) {
	f := newFixture(t)
	clone, snaps, ro, stash := replaceSnapshotSetup(f)
	for i := 0; i < 2; i++ {
		f.exec(`INSERT INTO volume_resource_usage VALUES (gen_random_uuid(), $1, $2)`, stash, ro.ID)
	}
	_, err := f.s.ReplaceReadOnlyTarget(f.ctx, clone, snaps[0].ID, ro.ID, stash)
	wantKind(t, err, apierr.Internal)
	v, _ := f.s.GetVolume(f.ctx, clone, true)
	if got := vcr.ReadOnlyTargets(v.VCR); got[0] != snaps[0].Address {
		t.Fatal("failed replacement changed the VCR")
	}
}

// Saga replays race: the same create or soft delete from 8 goroutines.
func TestConcurrentReplaysOfCreateAndSoftDelete(t *testing.T) {
	f := newFixture(t)
	ro := f.roRegion(uuid.New())
	id := uuid.New()
	var wg sync.WaitGroup
	created := make([]bool, 8)
	errs := make([]error, 8)
	for i := range created {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			_, created[i], errs[i] = f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: snapshotVCR([]Target{ro})})
		}(i)
	}
	wg.Wait()
	n := 0
	for i := range created {
		if errs[i] != nil {
			t.Fatalf("replay %d: %v", i, errs[i])
		}
		if created[i] {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d creates reported created", n)
	}
	results := make([]SoftDeleteResult, 8)
	for i := range results {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			results[i], errs[i] = f.s.SoftDeleteVolume(f.ctx, id)
		}(i)
	}
	wg.Wait()
	for i := range results {
		if errs[i] != nil || !sameIDs(results[i].Regions, []uuid.UUID{ro.RegionID}) {
			t.Fatalf("soft delete %d: %+v %v", i, results[i], errs[i])
		}
	}
	if f.target(ro.ID).State != StateDeleting {
		t.Fatal("not deleting")
	}
	f.healthy()
}

// HardIfNothingFreed removes the row of a volume whose delete freed
// nothing and which owns no rw region, in the soft delete's transaction;
// anything else is only soft-deleted, as without the option.
func TestSoftDeleteHardIfNothingFreed(t *testing.T) {
	hard := SoftDeleteOptions{HardIfNothingFreed: true}
	rows := func(f *fixture, id uuid.UUID) (volume, deleted, index int) {
		return f.count(`SELECT count(*) FROM volume WHERE id = $1`, id),
			f.count(`SELECT count(*) FROM volume WHERE id = $1 AND time_deleted IS NOT NULL`, id),
			f.count(`SELECT count(*) FROM volume_target WHERE volume_id = $1`, id)
	}
	t.Run("stash still shared", func(t *testing.T) {
		f := newFixture(t)
		_, rw := f.newDisk(nil)
		_, snaps := f.newSnapshot(rw)
		stash := uuid.New()
		f.create(stash, snapshotVCR(snaps[:1]))
		before := f.target(snaps[0].ID).RefCount
		r, err := f.s.SoftDeleteVolumeWith(f.ctx, stash, hard)
		if err != nil {
			t.Fatal(err)
		}
		if !r.HardDeleted || len(r.Regions)+len(r.RegionSnapshots) != 0 {
			t.Fatalf("result %+v, want hard-deleted and nothing freed", r)
		}
		if v, _, ix := rows(f, stash); v != 0 || ix != 0 {
			t.Fatalf("%d volume rows and %d index rows left", v, ix)
		}
		if n := f.target(snaps[0].ID).RefCount; n != before-1 {
			t.Fatalf("reference count %d, want %d", n, before-1)
		}
		f.healthy()
		// A re-run (the saga's, after a crash) finds it missing: nothing freed.
		r, err = f.s.SoftDeleteVolumeWith(f.ctx, stash, hard)
		if err != nil || !r.VolumeMissing || r.HardDeleted || len(r.Regions)+len(r.RegionSnapshots) != 0 {
			t.Fatalf("re-run: %+v %v", r, err)
		}
		f.healthy()
	})
	t.Run("last reference", func(t *testing.T) {
		f := newFixture(t)
		_, rw := f.newDisk(nil)
		snapID, snaps := f.newSnapshot(rw)
		stash := uuid.New()
		f.create(stash, snapshotVCR(snaps))
		f.softDelete(snapID)
		r, err := f.s.SoftDeleteVolumeWith(f.ctx, stash, hard)
		if err != nil {
			t.Fatal(err)
		}
		if r.HardDeleted || len(r.RegionSnapshots) != 3 {
			t.Fatalf("result %+v, want soft delete freeing 3 region snapshots", r)
		}
		if v, d, _ := rows(f, stash); v != 1 || d != 1 {
			t.Fatalf("volume row %d (soft-deleted %d), want it kept soft-deleted", v, d)
		}
		f.healthy()
	})
	t.Run("owns rw regions", func(t *testing.T) {
		f := newFixture(t)
		id, rw := f.newDisk(nil)
		f.newSnapshot(rw) // every rw region has a snapshot: nothing is freed
		r, err := f.s.SoftDeleteVolumeWith(f.ctx, id, hard)
		if err != nil {
			t.Fatal(err)
		}
		if r.HardDeleted || len(r.Regions)+len(r.RegionSnapshots) != 0 {
			t.Fatalf("result %+v, want a soft delete freeing nothing", r)
		}
		if v, d, _ := rows(f, id); v != 1 || d != 1 {
			t.Fatalf("volume row %d (soft-deleted %d), want it kept soft-deleted", v, d)
		}
		f.healthy()
	})
}
