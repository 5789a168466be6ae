package store

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"storagecp.dev/platform/apierr"
)

// stashOf creates a stash (purpose stash) naming targets read-only.
func (f *fixture) stashOf(targets []Target) uuid.UUID {
	f.t.Helper()
	id := uuid.New()
	if _, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: id, VCR: snapshotVCR(targets), Purpose: PurposeStash}); err != nil {
		f.t.Fatalf("create stash: %v", err)
	}
	return id
}

func (f *fixture) rowsOf(id uuid.UUID) (volume, index, usage int) {
	f.t.Helper()
	return f.count(`SELECT count(*) FROM volume WHERE id = $1`, id),
		f.count(`SELECT count(*) FROM volume_target WHERE volume_id = $1`, id),
		f.count(`SELECT count(*) FROM volume_resource_usage WHERE volume_id = $1`, id)
}

func wantResults(t *testing.T, got []StashDelete, err error, want ...StashDelete) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("results %v, want %v", got, want)
	}
}

// While another volume (the snapshot) still references the target, every
// stash goes, each as the per-stash hard delete leaves it; a re-run finds
// them missing.
func TestDeleteReadOnlyStashesRemovesStashesOfASharedTarget(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	_, snaps := f.newSnapshot(rw)
	stashes := []uuid.UUID{f.stashOf(snaps[:1]), f.stashOf(snaps[:1]), f.stashOf(snaps[:1])}
	before := f.target(snaps[0].ID).RefCount
	got, err := f.s.DeleteReadOnlyStashes(f.ctx, stashes)
	wantResults(t, got, err, StashRemoved, StashRemoved, StashRemoved)
	for _, s := range stashes {
		if v, ix, u := f.rowsOf(s); v+ix+u != 0 {
			t.Fatalf("stash %s left %d volume, %d index, %d usage rows", s, v, ix, u)
		}
	}
	if tg := f.target(snaps[0].ID); tg.RefCount != before-3 || tg.State != StateActive {
		t.Fatalf("target count %d state %s, want %d ACTIVE", tg.RefCount, tg.State, before-3)
	}
	f.healthy()
	got, err = f.s.DeleteReadOnlyStashes(f.ctx, stashes)
	wantResults(t, got, err, StashMissing, StashMissing, StashMissing)
	f.healthy()
}

// When the batch holds every reference to a target, the last stash keeps
// it: the per-stash delete then frees the target, which the batch never
// does. The others go.
func TestDeleteReadOnlyStashesKeepsTheLastReference(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	stashes := []uuid.UUID{f.stashOf(snaps[:1]), f.stashOf(snaps[:1]), f.stashOf(snaps[:1])}
	// Every other reference to snaps[0] gone: only the stashes hold it.
	f.softDelete(snapID)
	got, err := f.s.DeleteReadOnlyStashes(f.ctx, stashes)
	wantResults(t, got, err, StashRemoved, StashRemoved, StashKept)
	if tg := f.target(snaps[0].ID); tg.RefCount != 1 || tg.State != StateActive {
		t.Fatalf("target count %d state %s, want 1 ACTIVE", tg.RefCount, tg.State)
	}
	if v, ix, u := f.rowsOf(stashes[2]); v != 1 || ix != 1 || u != 1 {
		t.Fatalf("kept stash has %d volume, %d index, %d usage rows", v, ix, u)
	}
	f.healthy()
	// Alone, it is kept again; its own soft delete frees the target.
	got, err = f.s.DeleteReadOnlyStashes(f.ctx, stashes[2:])
	wantResults(t, got, err, StashKept)
	if r := f.softDelete(stashes[2]); len(r.RegionSnapshots) != 1 || r.RegionSnapshots[0].TargetID() != snaps[0].ID {
		t.Fatalf("per-stash delete freed %+v, want %s", r, snaps[0].ID)
	}
	// Soft-deleted now: the batch leaves it to the volume-delete saga.
	got, err = f.s.DeleteReadOnlyStashes(f.ctx, stashes)
	wantResults(t, got, err, StashMissing, StashMissing, StashKept)
	f.healthy()
}

// What the per-stash delete would not remove outright is kept untouched: a
// stash naming more than one target, one naming none.
func TestDeleteReadOnlyStashesLeavesWhatItCannotRemoveOutright(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	_, snaps := f.newSnapshot(rw)
	two := f.stashOf(snaps[:2])
	blank := uuid.New()
	if _, _, err := f.s.CreateVolume(f.ctx, CreateParams{ID: blank, VCR: blankStash(blank), Purpose: PurposeStash}); err != nil {
		t.Fatal(err)
	}
	one := f.stashOf(snaps[:1])
	got, err := f.s.DeleteReadOnlyStashes(f.ctx, []uuid.UUID{two, blank, one})
	wantResults(t, got, err, StashKept, StashKept, StashRemoved)
	if v, _, u := f.rowsOf(two); v != 1 || u != 2 {
		t.Fatalf("two-target stash: %d volume rows, %d usage rows", v, u)
	}
	f.healthy()
}

// A live volume that is not a stash refuses the whole call, naming it, and
// nothing changes; malformed requests are INVALID_ARGUMENT naming the field.
func TestDeleteReadOnlyStashesRefusesOtherVolumesAndBadInput(t *testing.T) {
	f := newFixture(t)
	_, rw := f.newDisk(nil)
	snapID, snaps := f.newSnapshot(rw)
	stash := f.stashOf(snaps[:1])
	_, err := f.s.DeleteReadOnlyStashes(f.ctx, []uuid.UUID{stash, snapID})
	wantKind(t, err, apierr.Precondition)
	if msg := err.Error(); !strings.Contains(msg, "volume_ids[1]") || !strings.Contains(msg, snapID.String()) {
		t.Fatalf("error %q does not name volume_ids[1] and %s", msg, snapID)
	}
	if v, _, u := f.rowsOf(stash); v != 1 || u != 1 {
		t.Fatalf("refused call removed the stash: %d volume rows, %d usage rows", v, u)
	}
	for _, c := range []struct {
		ids   []uuid.UUID
		field string
	}{
		{nil, "volume_ids"},
		{[]uuid.UUID{stash, uuid.Nil}, "volume_ids[1]"},
		{[]uuid.UUID{stash, stash}, "volume_ids[1]"},
		{make([]uuid.UUID, MaxStashDeletes+1), "volume_ids"},
	} {
		_, err := f.s.DeleteReadOnlyStashes(f.ctx, c.ids)
		wantKind(t, err, apierr.Invalid)
		if !strings.Contains(err.Error(), c.field) {
			t.Fatalf("error %q does not name %s", err, c.field)
		}
	}
	f.healthy()
}
