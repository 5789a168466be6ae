package store

import (
	"slices"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
	"storagecp.dev/platform/vcr"
)

// batchSetup is replaceSnapshotSetup with n clones of the snapshot and a
// fresh (not yet created) stash id for each.
func batchSetup(f *fixture, n int) (clones []uuid.UUID, snaps []Target, ro Target, swaps []ReadOnlySwap) {
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	for range n {
		c, _ := f.newDisk(snapshotVCR(snaps))
		clones = append(clones, c)
		swaps = append(swaps, ReadOnlySwap{Volume: c, Stash: uuid.New()})
	}
	ro = f.roRegion(snapID)
	f.create(uuid.New(), snapshotVCR([]Target{ro}))
	return clones, snaps, ro, swaps
}

func TestReplaceReadOnlyTargetsSwapsEveryVolumeAndCreatesStashes(t *testing.T) {
	f := newFixture(t)
	clones, snaps, ro, swaps := batchSetup(f, 3)
	res, err := f.s.ReplaceReadOnlyTargets(f.ctx, snaps[0].ID, ro.ID, swaps, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != ReplaceDone {
			t.Fatalf("swap %d: %v", i, r)
		}
	}
	for i, c := range clones {
		v, err := f.s.GetVolume(f.ctx, c, true)
		if err != nil {
			t.Fatal(err)
		}
		if got := vcr.ReadOnlyTargets(v.VCR); !slices.Contains(got, ro.Address) || slices.Contains(got, snaps[0].Address) {
			t.Fatalf("clone %d names %v", i, got)
		}
		st, err := f.s.GetVolume(f.ctx, swaps[i].Stash, true)
		if err != nil {
			t.Fatal(err)
		}
		if st.Purpose != PurposeStash {
			t.Fatalf("stash %d purpose %q", i, st.Purpose)
		}
		if got := vcr.ReadOnlyTargets(st.VCR); len(got) != 1 || got[0] != snaps[0].Address {
			t.Fatalf("stash %d names %v", i, got)
		}
		if len(st.Targets) != 1 || st.Targets[0].ID != snaps[0].ID {
			t.Fatalf("stash %d indexed under %v", i, st.Targets)
		}
	}
	// Old: the snapshot volume's and three stashes' references.
	if f.target(snaps[0].ID).RefCount != 4 || f.target(ro.ID).RefCount != 4 {
		t.Fatalf("counts old %d new %d", f.target(snaps[0].ID).RefCount, f.target(ro.ID).RefCount)
	}
	f.healthy()
	// A re-run finds every swap made.
	res, err = f.s.ReplaceReadOnlyTargets(f.ctx, snaps[0].ID, ro.ID, swaps, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != ReplaceAlreadyHappened {
			t.Fatalf("replay %d: %v", i, r)
		}
	}
	// The undo: targets swapped, stashes already there.
	res, err = f.s.ReplaceReadOnlyTargets(f.ctx, ro.ID, snaps[0].ID, swaps, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r != ReplaceDone {
			t.Fatalf("undo %d: %v", i, r)
		}
	}
	for _, c := range clones {
		if n := f.count(`SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1 AND target_id = $2`, c, snaps[0].ID); n != 1 {
			t.Fatalf("clone holds %d rows of the old target after undo", n)
		}
	}
	f.healthy()
}

func TestReplaceReadOnlyTargetsDeletedVolumesAreResults(t *testing.T) {
	f := newFixture(t)
	clones, snaps, ro, swaps := batchSetup(f, 2)
	f.softDelete(clones[0])
	gone := ReadOnlySwap{Volume: uuid.New(), Stash: uuid.New()}
	res, err := f.s.ReplaceReadOnlyTargets(f.ctx, snaps[0].ID, ro.ID, append(swaps, gone), true)
	if err != nil {
		t.Fatal(err)
	}
	want := []ReplaceResult{ReplaceVolumeSoftDeleted, ReplaceDone, ReplaceVolumeHardDeleted}
	for i := range want {
		if res[i] != want[i] {
			t.Fatalf("results %v, want %v", res, want)
		}
	}
	// Every stash exists, as CreateVolume would have made it; the deleted
	// volumes' stashes stay blank.
	for i, sw := range append(swaps, gone) {
		st, err := f.s.GetVolume(f.ctx, sw.Stash, true)
		if err != nil {
			t.Fatalf("stash %d: %v", i, err)
		}
		if n := len(vcr.AllTargets(st.VCR)); (i == 1) != (n == 1) {
			t.Fatalf("stash %d names %d targets", i, n)
		}
	}
	f.healthy()
}

func TestReplaceReadOnlyTargetsRefusesTheBatchWithNothingWritten(t *testing.T) {
	f := newFixture(t)
	clones, snaps, ro, swaps := batchSetup(f, 3)
	// The last volume no longer names the old target: swapped alone.
	lone := uuid.New()
	f.create(lone, volumeNode(nil))
	if _, err := f.s.ReplaceReadOnlyTarget(f.ctx, clones[2], snaps[0].ID, ro.ID, lone); err != nil {
		t.Fatal(err)
	}
	other := f.roRegion(uuid.New())
	// snaps[0] → other: the first two would swap, the third names neither.
	_, err := f.s.ReplaceReadOnlyTargets(f.ctx, snaps[0].ID, other.ID, swaps, true)
	wantKind(t, err, apierr.Precondition)
	wantContains(t, err, "swaps[2]")
	for i, sw := range swaps {
		if n := f.count(`SELECT count(*) FROM volume WHERE id = $1`, sw.Stash); n != 0 {
			t.Fatalf("stash %d written by a refused batch", i)
		}
	}
	for i, c := range clones[:2] {
		if n := f.count(`SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1 AND target_id = $2`, c, snaps[0].ID); n != 1 {
			t.Fatalf("clone %d holds %d rows of the old target after a refused batch", i, n)
		}
	}
	f.healthy()
}

func TestReplaceReadOnlyTargetsBadInput(t *testing.T) {
	f := newFixture(t)
	_, snaps, ro, swaps := batchSetup(f, 2)
	cases := []struct {
		name     string
		old, new uuid.UUID
		swaps    []ReadOnlySwap
		field    string
	}{
		{"no old", uuid.Nil, ro.ID, swaps, "old_target_id"},
		{"no new", snaps[0].ID, uuid.Nil, swaps, "new_target_id"},
		{"same", snaps[0].ID, snaps[0].ID, swaps, "new_target_id"},
		{"empty", snaps[0].ID, ro.ID, nil, "swaps"},
		{"too many", snaps[0].ID, ro.ID, make([]ReadOnlySwap, MaxReadOnlySwaps+1), "swaps"},
		{"no stash", snaps[0].ID, ro.ID, []ReadOnlySwap{swaps[0], {Volume: swaps[1].Volume}}, "swaps[1].stash_volume_id"},
		{"duplicate volume", snaps[0].ID, ro.ID, []ReadOnlySwap{swaps[0], {Volume: swaps[0].Volume, Stash: uuid.New()}}, "swaps[1].volume_id"},
		{"stash is a volume", snaps[0].ID, ro.ID, []ReadOnlySwap{swaps[0], {Volume: swaps[1].Volume, Stash: swaps[0].Volume}}, "swaps[1].stash_volume_id"},
		{"own stash", snaps[0].ID, ro.ID, []ReadOnlySwap{{Volume: swaps[0].Volume, Stash: swaps[0].Volume}}, "swaps[0].stash_volume_id"},
	}
	for _, c := range cases {
		_, err := f.s.ReplaceReadOnlyTargets(f.ctx, c.old, c.new, c.swaps, true)
		wantKind(t, err, apierr.Invalid)
		wantContains(t, err, c.field)
	}
	for i, sw := range swaps {
		if n := f.count(`SELECT count(*) FROM volume WHERE id = $1`, sw.Stash); n != 0 {
			t.Fatalf("stash %d written by bad input", i)
		}
	}
	f.healthy()
}
