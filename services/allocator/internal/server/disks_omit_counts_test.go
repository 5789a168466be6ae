package server

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// omit_counts leaves the region counts zero and changes nothing else: the
// same disks, in the same pages, with the same policy, state and usage.
func TestListPhysicalDisksOmitCounts(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 2, 100*gib)
	ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 3, newIDs(3))))(t)

	list := func(omit bool) []*allocatorv1.PhysicalDisk {
		var out []*allocatorv1.PhysicalDisk
		for token := ""; ; {
			resp := ok(s.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 4, PageToken: token, OmitCounts: omit}))(t)
			out = append(out, resp.GetDisks()...)
			if token = resp.GetNextPageToken(); token == "" {
				return out
			}
		}
	}
	counted, omitted := list(false), list(true)
	if len(counted) != 6 || len(omitted) != len(counted) {
		t.Fatalf("%d disks counted, %d with omit_counts; want 6 each", len(counted), len(omitted))
	}
	var regions int64
	for i, c := range counted {
		regions += c.GetRegionCount()
		o := omitted[i]
		if o.GetRegionCount() != 0 || o.GetRegionSnapshotCount() != 0 {
			t.Errorf("disk %s with omit_counts: %d regions, %d snapshots; want zeros", o.GetDiskId(), o.GetRegionCount(), o.GetRegionSnapshotCount())
		}
		c = proto.Clone(c).(*allocatorv1.PhysicalDisk)
		c.RegionCount, c.RegionSnapshotCount = 0, 0
		if !proto.Equal(c, o) {
			t.Errorf("disk %d differs beyond its counts:\n counted %v\n omitted %v", i, c, o)
		}
	}
	if regions != 3 {
		t.Fatalf("counted %d regions, want 3", regions)
	}
}
