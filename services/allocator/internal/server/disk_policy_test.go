package server

import (
	"context"
	"testing"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// Every answer that carries a region or a region snapshot carries its
// disk's policy, read with it: in service until the disk is expunged, and
// expunged from then on, for the disk's own copies only. A repair counts
// surviving copies by it, so a wrong "in service" would repair from a lost
// copy and a wrong "expunged" would end a repair DATA_LOST with its copies
// alive.
func TestRegionsCarryTheirDisksPolicy(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 5, 1, 100*gib)
	v := newSnapshottedVolume(t, s)
	vol, snap, alloc, ens, created := v.volume, v.snapshot, v.allocated, v.ensured, v.snapshots
	lost := ens.GetRegions()[0]

	// policies reads every answer that carries a region or a region
	// snapshot, and returns the policy each reported, by answer and id.
	policies := func() map[string]map[string]allocatorv1.Policy {
		out := map[string]map[string]allocatorv1.Policy{}
		add := func(answer, id string, p allocatorv1.Policy) {
			if out[answer] == nil {
				out[answer] = map[string]allocatorv1.Policy{}
			}
			out[answer][id] = p
		}
		for _, r := range alloc.GetRegions() {
			add("AllocateRegions", r.GetRegionId(), r.GetDiskPolicy())
		}
		for _, r := range ens.GetRegions() {
			add("EnsureRegions", r.GetRegionId(), r.GetDiskPolicy())
		}
		for _, rs := range created.GetRegionSnapshots() {
			add("CreateRegionSnapshots", rs.GetRegionId(), rs.GetDiskPolicy())
		}
		for _, r := range ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: vol}))(t).GetRegions() {
			add("ListRegions", r.GetRegionId(), r.GetDiskPolicy())
		}
		for _, r := range ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedForIds: []string{vol}}))(t).GetRegions() {
			add("ListRegions(allocated_for_ids)", r.GetRegionId(), r.GetDiskPolicy())
		}
		for _, r := range ens.GetRegions() {
			got := ok(s.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: r.GetRegionId()}))(t)
			add("GetRegion", r.GetRegionId(), got.GetRegion().GetDiskPolicy())
			for _, rs := range got.GetRegionSnapshots() {
				add("GetRegion.region_snapshots", rs.GetRegionId(), rs.GetDiskPolicy())
			}
		}
		for _, rs := range ok(s.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{SnapshotId: snap}))(t).GetRegionSnapshots() {
			add("ListRegionSnapshots", rs.GetRegionId(), rs.GetDiskPolicy())
		}
		for _, rs := range ok(s.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{SnapshotIds: []string{snap}}))(t).GetRegionSnapshots() {
			add("ListRegionSnapshots(snapshot_ids)", rs.GetRegionId(), rs.GetDiskPolicy())
		}
		return out
	}
	check := func(when string, fresh bool, lostPolicy allocatorv1.Policy) {
		t.Helper()
		got := policies()
		for answer, byID := range got {
			if !fresh && (answer == "AllocateRegions" || answer == "EnsureRegions" || answer == "CreateRegionSnapshots") {
				continue // answered before the expunge
			}
			if len(byID) != 3 {
				t.Errorf("%s: %s answered for %d copies, want 3", when, answer, len(byID))
			}
			for id, p := range byID {
				want := allocatorv1.Policy_POLICY_IN_SERVICE
				if id == lost.GetRegionId() {
					want = lostPolicy
				}
				if p != want {
					t.Errorf("%s: %s reports %s for the copy of region %s, want %s", when, answer, p, id, want)
				}
			}
		}
		if len(got) != 9 {
			t.Errorf("%s: %d answers read, want 9", when, len(got))
		}
	}
	check("before the expunge", true, allocatorv1.Policy_POLICY_IN_SERVICE)
	ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: lost.GetDiskId()}))(t)
	check("after the expunge", false, allocatorv1.Policy_POLICY_EXPUNGED)
	exp := ok(s.ListExpungedTargets(ctx, &allocatorv1.ListExpungedTargetsRequest{}))(t)
	for _, r := range exp.GetReadWriteRegions() {
		if r.GetDiskPolicy() != allocatorv1.Policy_POLICY_EXPUNGED {
			t.Errorf("ListExpungedTargets reports %s for expunged region %s", r.GetDiskPolicy(), r.GetRegionId())
		}
	}
	for _, rs := range exp.GetRegionSnapshots() {
		if rs.GetDiskPolicy() != allocatorv1.Policy_POLICY_EXPUNGED {
			t.Errorf("ListExpungedTargets reports %s for expunged region snapshot %s", rs.GetDiskPolicy(), rs.GetTargetId())
		}
	}
}
