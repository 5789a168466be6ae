package server

import (
	"context"
	"testing"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// ListExpungedTargets leaves out exactly the lists a request omits, and an
// omitted list does not keep the paging going: each detector reads its own
// kinds, page by page, and sees all of them.
func TestListExpungedTargetsOmitsLists(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 7, 1, 100*gib)
	v := newSnapshottedVolume(t, s)
	snap, ens, rs := v.snapshot, v.ensured, v.snapshots
	roReq := allocReq(snap, 1, newIDs(1))
	roReq.SnapshotId, roReq.ReadOnly = snap, true
	ro := ok(s.AllocateRegions(ctx, roReq))(t).GetRegions()[0]
	ok(s.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
		RegionId: ro.GetRegionId(), CloneSourceAddress: rs.GetRegionSnapshots()[0].GetAddress(),
	}}}))(t)
	// Two rw regions (with their region snapshots) and the read-only
	// region on expunged disks: two pages of one at page size 1.
	for _, r := range ens.GetRegions()[:2] {
		ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: r.GetDiskId()}))(t)
	}
	ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: ro.GetDiskId()}))(t)

	type counts struct{ snaps, ro, rw, pages int }
	read := func(req *allocatorv1.ListExpungedTargetsRequest) counts {
		t.Helper()
		var c counts
		for token := ""; ; {
			req.PageToken = token
			resp := ok(s.ListExpungedTargets(ctx, req))(t)
			c.pages++
			c.snaps += len(resp.GetRegionSnapshots())
			c.ro += len(resp.GetReadOnlyRegions())
			c.rw += len(resp.GetReadWriteRegions())
			if token = resp.GetNextPageToken(); token == "" {
				return c
			}
		}
	}
	for _, c := range []struct {
		name string
		req  *allocatorv1.ListExpungedTargetsRequest
		want counts
	}{
		{"everything", &allocatorv1.ListExpungedTargetsRequest{PageSize: 1}, counts{2, 1, 2, 3}},
		{"the read-only detector's", &allocatorv1.ListExpungedTargetsRequest{PageSize: 1, OmitReadWriteRegions: true}, counts{2, 1, 0, 3}},
		{"the rw detector's", &allocatorv1.ListExpungedTargetsRequest{PageSize: 1, OmitRegionSnapshots: true, OmitReadOnlyRegions: true}, counts{0, 0, 2, 3}},
		{"read-only regions only", &allocatorv1.ListExpungedTargetsRequest{PageSize: 1, OmitRegionSnapshots: true, OmitReadWriteRegions: true}, counts{0, 1, 0, 2}},
		{"nothing", &allocatorv1.ListExpungedTargetsRequest{PageSize: 1, OmitRegionSnapshots: true, OmitReadOnlyRegions: true, OmitReadWriteRegions: true}, counts{0, 0, 0, 1}},
	} {
		if got := read(c.req); got != c.want {
			t.Errorf("%s: %+v (snapshots, read-only, rw, pages), want %+v", c.name, got, c.want)
		}
	}
}
