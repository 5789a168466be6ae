package scenarios

import (
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

const kindRWRegion = commonv1.TargetKind_TARGET_KIND_RW_REGION

// sleds for the expunge scenarios: D's three regions take three sleds, and
// every replacement (rw regions on distinct sleds, read-only regions away
// from the snapshot's other targets) needs room on the others.
const expungeSleds = 7

// wantSnapshotOnReadOnlyRegions checks that P's volume names n read-only
// regions and no region snapshot any more.
func (w *world) wantSnapshotOnReadOnlyRegions(t *testing.T, n int) {
	t.Helper()
	if rs := w.Targets(t, w.P, kindRegionSnapshot); len(rs) != 0 {
		t.Errorf("snapshot volume still names %d region snapshots", len(rs))
	}
	if ro := w.Targets(t, w.P, kindRORegion); len(ro) != n {
		t.Errorf("snapshot volume names %d read-only regions, want %d", len(ro), n)
	}
}

// wantAllComplete checks that every request ended Complete (none DataLost).
func (w *world) wantAllComplete(t *testing.T, min int) {
	t.Helper()
	resp, err := w.Replacement.ListReplacements(w.ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Replacements) < min {
		t.Errorf("%d requests, want at least %d", len(resp.Replacements), min)
	}
	for _, q := range resp.Replacements {
		if q.ReadOnlyState == roDataLost {
			t.Errorf("request %s ended DataLost", q.ReplacementId)
		}
	}
}

// Scenario 34: the disk holding D's first region is expunged (P and F
// exist); draining replaces its rw region(s) and its region snapshot, and
// nothing is left on the expunged disk.
func TestScenario34ExpungeSanity(t *testing.T) {
	w := newWorld(t, expungeSleds)
	w.expungeDiskOf(t, w.Targets(t, w.D, kindRWRegion)[0].DatasetId)
	w.drain(t, 90*time.Second)
	w.wantAllComplete(t, 2) // D's rw region and A at least
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// Scenario 35: the disks of D's three regions are expunged one at a time,
// draining in between; the snapshot volume ends on three read-only regions.
func TestScenario35ExpungeTriple(t *testing.T) {
	w := newWorld(t, expungeSleds)
	for _, rs := range w.Targets(t, w.P, kindRegionSnapshot) {
		w.expungeDiskOf(t, rs.DatasetId)
		w.drain(t, 90*time.Second)
	}
	w.wantSnapshotOnReadOnlyRegions(t, 3)
	w.wantAllComplete(t, 3)
	w.finish(t)
}

// Scenario 36: two of those disks are expunged at once, drained, then the
// third. The snapshot volume's lock serialises the two read-only requests.
func TestScenario36ExpungeTwoThenOne(t *testing.T) {
	w := newWorld(t, expungeSleds)
	rs := w.Targets(t, w.P, kindRegionSnapshot)
	w.expungeDiskOf(t, rs[0].DatasetId)
	w.expungeDiskOf(t, rs[1].DatasetId)
	w.drain(t, 90*time.Second)
	w.expungeDiskOf(t, rs[2].DatasetId)
	w.drain(t, 90*time.Second)
	w.wantSnapshotOnReadOnlyRegions(t, 3)
	w.wantAllComplete(t, 3)
	w.finish(t)
}

// replaceEach requests the replacement of each target by hand, one at a
// time (the snapshot volume's lock forbids parallel requests), waiting for
// each to complete; it returns the new read-only regions.
func (w *world) replaceEach(t *testing.T, targets []string) []string {
	t.Helper()
	var out []string
	for _, tg := range targets {
		id := w.request(t, tg)
		got := w.waitState(t, id, 60*time.Second, roComplete, roDataLost)
		if got.Replacement.ReadOnlyState != roComplete {
			t.Fatalf("request for %s ended %v", tg, got.Replacement.ReadOnlyState)
		}
		w.waitIdle(t)
		w.wantGone(t, tg)
		out = append(out, got.Replacement.NewRegionId)
	}
	return out
}

func ids(targets []*commonv1.Target) []string {
	var out []string
	for _, t := range targets {
		out = append(out, t.TargetId)
	}
	return out
}

// Scenario 37: all three region snapshots are replaced (one at a time),
// then the three read-only regions that replaced them, the same way. Every
// volume ends naming only the second generation.
func TestScenario37ReplaceTwice(t *testing.T) {
	w := newWorld(t, expungeSleds)
	first := w.replaceEach(t, ids(w.Targets(t, w.P, kindRegionSnapshot)))
	w.wantSnapshotOnReadOnlyRegions(t, 3)
	second := w.replaceEach(t, first)
	for _, v := range []string{w.P, w.F} {
		got := targetIDs(t, w, v)
		for _, id := range second {
			if !contains(got, id) {
				t.Errorf("volume %s targets %v: want %s", v, got, id)
			}
		}
	}
	w.finish(t)
}

// Scenario 38: as 37 with P used by three disks and an image (a fourth
// copy of its VCR) and then deleted — its snapshot volume row gone — before
// any request. Requests lock the snapshot id all the same.
func TestScenario38ReplaceTwiceAfterSnapshotDelete(t *testing.T) {
	w := newWorld(t, expungeSleds)
	copies := []string{w.F, w.clone(t), w.clone(t), w.clone(t)}
	targets := ids(w.Targets(t, w.P, kindRegionSnapshot))
	w.deleteUser(t, w.P)
	if _, err := w.Volumes.GetVolume(w.ctx, volumeReq(w.P)); err == nil {
		t.Fatalf("snapshot volume %s still exists", w.P)
	}
	first := w.replaceEach(t, targets)
	second := w.replaceEach(t, first)
	for _, v := range copies {
		got := targetIDs(t, w, v)
		for _, id := range second {
			if !contains(got, id) {
				t.Errorf("volume %s targets %v: want %s", v, got, id)
			}
		}
	}
	w.finish(t)
}

// Scenario 39: a rw disk and a read-only disk from P, both running; every
// region snapshot is replaced; then a sled holding one of the new read-only
// regions is expunged and everything drains.
func TestScenario39ReadOnlySanity(t *testing.T) {
	w := newWorld(t, expungeSleds)
	g := w.clone(t)
	w.construct(t, w.F, 0, false)
	w.construct(t, g, 1, true)
	first := w.replaceEach(t, ids(w.Targets(t, w.P, kindRegionSnapshot)))
	reg, err := w.Allocator.GetRegion(w.ctx, &allocatorv1.GetRegionRequest{RegionId: first[0]})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Allocator.ExpungeSled(w.ctx, &allocatorv1.ExpungeSledRequest{SledId: reg.Region.SledId}); err != nil {
		t.Fatal(err)
	}
	w.drain(t, 90*time.Second)
	w.wantSnapshotOnReadOnlyRegions(t, 3)
	w.wantAllComplete(t, 4)
	w.wantGone(t, first[0])
	w.finish(t)
}

// A disk attached read-only still reads its rw regions: when one of them is
// replaced the read-only Upstairs must switch as well, or it refuses every
// later replacement of the disk's read-only targets (two targets would
// differ). Found by scenario 39 when the rw replacement of its read-only
// disk happened to run before the read-only ones.
func TestReadOnlyAttachmentFollowsRWReplacement(t *testing.T) {
	w := newWorld(t, expungeSleds)
	g := w.clone(t)
	w.construct(t, g, 1, true)
	w.expungeDiskOf(t, w.Targets(t, g, kindRWRegion)[0].DatasetId)
	w.drain(t, 90*time.Second)
	w.UpstairsCurrent(t)
	// Then the snapshot's region snapshots, one at a time: every step
	// notifies g's read-only Upstairs.
	w.replaceEach(t, ids(w.Targets(t, w.P, kindRegionSnapshot)))
	w.finish(t)
}
