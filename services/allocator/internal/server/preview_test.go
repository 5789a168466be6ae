package server

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// A dry run that excludes disks never places a region on them, and says
// RESOURCE_EXHAUSTED when what is left is too little — what PreviewExpunge
// relies on to judge capacity before anything is expunged.
func TestDryRunExcludesDisks(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	inv := addInventory(t, s, 4, 1, 100*gib)
	vol := uuid.NewString()
	excluded := inv.disks[0][0].GetDiskId()
	for range 5 {
		req := &allocatorv1.DryRunAllocationRequest{Allocation: allocReq(vol, 3, nil), ExcludeDiskIds: []string{excluded}}
		req.Allocation.Seed = uuid.NewString()
		dry := ok(s.DryRunAllocation(ctx, req))(t)
		for _, r := range dry.GetRegions() {
			if r.GetDiskId() == excluded {
				t.Fatalf("dry run placed region %s on excluded disk %s", r.GetRegionId(), excluded)
			}
		}
	}
	_, err := s.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{
		Allocation: allocReq(vol, 3, nil), ExcludeDiskIds: []string{excluded, inv.disks[1][0].GetDiskId()},
	})
	wantCode(t, err, codes.ResourceExhausted)
	_, err = s.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{Allocation: allocReq(vol, 3, nil), ExcludeDiskIds: []string{"nope"}})
	wantCode(t, err, codes.InvalidArgument)
	// The real allocation is untouched by the option's existence.
	alloc := ok(s.AllocateRegions(ctx, allocReq(vol, 4, newIDs(4))))(t)
	if len(alloc.GetRegions()) != 4 {
		t.Fatalf("allocated %d regions", len(alloc.GetRegions()))
	}
}

func TestListRegionSnapshotsByDataset(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	alloc := ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 3, newIDs(3))))(t)
	ens := ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t)
	snap := uuid.NewString()
	req := &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: snap}
	for _, r := range ens.GetRegions() {
		req.RegionIds = append(req.RegionIds, r.GetRegionId())
	}
	ok(s.CreateRegionSnapshots(ctx, req))(t)
	ds := ens.GetRegions()[0].GetDatasetId()
	got := ok(s.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{DatasetId: ds}))(t).GetRegionSnapshots()
	if len(got) != 1 || got[0].GetDatasetId() != ds || got[0].GetRegionId() != ens.GetRegions()[0].GetRegionId() {
		t.Fatalf("region snapshots on dataset %s: %v", ds, got)
	}
	_, err := s.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{DatasetId: "x"})
	wantCode(t, err, codes.InvalidArgument)
}
