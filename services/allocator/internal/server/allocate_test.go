package server

import (
	"context"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

func TestAllocateDistinctSledsIdempotentAndReplacement(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	inv := addInventory(t, s, 4, 2, 10*gib)
	vol := uuid.NewString()
	ids := newIDs(3)

	resp := ok(s.AllocateRegions(ctx, allocReq(vol, 3, ids)))(t)
	if len(resp.GetRegions()) != 3 || len(resp.GetCreatedRegionIds()) != 3 {
		t.Fatalf("got %d regions, %d created", len(resp.GetRegions()), len(resp.GetCreatedRegionIds()))
	}
	sleds := map[string]bool{}
	for i, r := range resp.GetRegions() {
		if r.GetRegionId() != ids[i] {
			t.Errorf("region %d id %s, want %s (ids used in order)", i, r.GetRegionId(), ids[i])
		}
		if r.GetAllocatedFor() != vol || r.GetEnsured() || r.GetPort() != 0 {
			t.Errorf("bad new region %+v", r)
		}
		sleds[r.GetSledId()] = true
	}
	if len(sleds) != 3 {
		t.Fatalf("regions on %d sleds, want 3", len(sleds))
	}
	usage := diskUsage(t, s)
	var total int64
	for _, d := range usage {
		total += d.GetSizeUsedBytes()
	}
	if total != 3*testReserved {
		t.Fatalf("size_used total %d, want %d", total, 3*testReserved)
	}

	// Replay: same set, nothing created, nothing charged. Even with no ids.
	again := ok(s.AllocateRegions(ctx, allocReq(vol, 3, nil)))(t)
	if len(again.GetCreatedRegionIds()) != 0 || len(again.GetRegions()) != 3 {
		t.Fatalf("replay created %v", again.GetCreatedRegionIds())
	}
	for i := range again.GetRegions() {
		if again.GetRegions()[i].GetRegionId() != resp.GetRegions()[i].GetRegionId() {
			t.Fatalf("replay returned a different set")
		}
	}
	for id, d := range diskUsage(t, s) {
		if d.GetSizeUsedBytes() != usage[id].GetSizeUsedBytes() {
			t.Fatalf("replay changed size_used of %s", id)
		}
	}

	// Replacement: current+1 gives exactly one new region on the 4th sled.
	repl := ok(s.AllocateRegions(ctx, allocReq(vol, 4, newIDs(1))))(t)
	if len(repl.GetCreatedRegionIds()) != 1 || len(repl.GetRegions()) != 4 {
		t.Fatalf("replacement created %d, total %d", len(repl.GetCreatedRegionIds()), len(repl.GetRegions()))
	}
	var newSled string
	for _, r := range repl.GetRegions() {
		if r.GetRegionId() == repl.GetCreatedRegionIds()[0] {
			newSled = r.GetSledId()
		}
	}
	if sleds[newSled] {
		t.Fatalf("replacement landed on an existing sled")
	}

	// A fifth on four sleds cannot be placed.
	_, err := s.AllocateRegions(ctx, allocReq(vol, 5, newIDs(1)))
	wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(err.Error(), "not enough space") {
		t.Fatalf("error %v does not name the space guard", err)
	}
	// With random (not distinct sleds) the second disk of a used sled is fine.
	rnd := allocReq(vol, 5, newIDs(1))
	rnd.Strategy = allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM
	r5 := ok(s.AllocateRegions(ctx, rnd))(t)
	zpools := map[string]bool{}
	for _, r := range r5.GetRegions() {
		zpools[r.GetDatasetId()] = true
	}
	if len(zpools) != 5 {
		t.Fatalf("random strategy reused a dataset: %d distinct of 5", len(zpools))
	}
	_ = inv
}

func TestAllocateGuardsAndExclusions(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	// 3 sleds with room for exactly one region per disk.
	inv := addInventory(t, s, 3, 1, testReserved)
	ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 3, newIDs(3))))(t)

	// Full datasets are not candidates.
	vol := uuid.NewString()
	_, err := s.AllocateRegions(ctx, allocReq(vol, 3, newIDs(3)))
	wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(err.Error(), "not enough space") {
		t.Fatalf("got %v", err)
	}
	// A failed allocation inserted nothing.
	list := ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: vol}))(t)
	if len(list.GetRegions()) != 0 {
		t.Fatalf("failed allocation left %d regions", len(list.GetRegions()))
	}

	// Add three fresh sleds: one no_provision, one expunged, one fine.
	more := addInventory(t, s, 3, 1, 100*gib)
	np := more.disks[0][0]
	// no_provision can only be set at creation: add a separate one.
	sled := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: "no-provision"}))(t)
	npDisk := ok(s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
		SledId: sled.GetSled().GetSledId(), CapacityBytes: 100 * gib,
		DatasetAddress: "fd00:99::1", NoProvision: true,
	}))(t)
	ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: np.GetDiskId()}))(t)
	ok(s.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: more.sleds[1]}))(t)
	// Only more.sleds[2] is usable: R=1 works, R=2 does not.
	one := ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 1, newIDs(1))))(t)
	if got := one.GetRegions()[0].GetDiskId(); got != more.disks[2][0].GetDiskId() {
		t.Fatalf("allocated on %s, want the only eligible disk %s", got, more.disks[2][0].GetDiskId())
	}
	_, err = s.AllocateRegions(ctx, allocReq(uuid.NewString(), 2, newIDs(2)))
	wantCode(t, err, codes.ResourceExhausted)
	_ = npDisk
	_ = inv
}

func TestAllocateValidation(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	vol := uuid.NewString()
	cases := map[string]func(r *allocatorv1.AllocateRegionsRequest){
		"volume_id":         func(r *allocatorv1.AllocateRegionsRequest) { r.VolumeId = "nope" },
		"snapshot_id":       func(r *allocatorv1.AllocateRegionsRequest) { r.SnapshotId = "x" },
		"block_size":        func(r *allocatorv1.AllocateRegionsRequest) { r.BlockSize = 1000 },
		"blocks_per_extent": func(r *allocatorv1.AllocateRegionsRequest) { r.BlocksPerExtent = 0 },
		"extent_count":      func(r *allocatorv1.AllocateRegionsRequest) { r.ExtentCount = 1 << 40 },
		"redundancy":        func(r *allocatorv1.AllocateRegionsRequest) { r.Redundancy = 0 },
		"strategy":          func(r *allocatorv1.AllocateRegionsRequest) { r.Strategy = 99 },
		"new_region_ids[1]": func(r *allocatorv1.AllocateRegionsRequest) { r.NewRegionIds[1] = "bad" },
		"new_region_ids[2]": func(r *allocatorv1.AllocateRegionsRequest) { r.NewRegionIds[2] = r.NewRegionIds[0] },
		"new_region_ids":    func(r *allocatorv1.AllocateRegionsRequest) { r.NewRegionIds = r.NewRegionIds[:2] },
	}
	for field, mutate := range cases {
		req := allocReq(vol, 3, newIDs(3))
		mutate(req)
		_, err := s.AllocateRegions(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
		if !strings.Contains(err.Error(), field) {
			t.Errorf("%s: error %v does not name the field", field, err)
		}
	}
	// An id that already names a region (of another volume).
	first := ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 1, newIDs(1))))(t)
	_, err := s.AllocateRegions(ctx, allocReq(vol, 1, []string{first.GetRegions()[0].GetRegionId()}))
	wantCode(t, err, codes.InvalidArgument)
	if n := len(ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: vol}))(t).GetRegions()); n != 0 {
		t.Fatalf("invalid requests left %d regions", n)
	}
	for _, d := range diskUsage(t, s) {
		if d.GetSizeUsedBytes() != d.GetRegionCount()*testReserved {
			t.Fatalf("size_used %d with %d regions", d.GetSizeUsedBytes(), d.GetRegionCount())
		}
	}
}

func TestDryRunChangesNothing(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	vol := uuid.NewString()
	dry := ok(s.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{Allocation: allocReq(vol, 3, nil)}))(t)
	if len(dry.GetRegions()) != 3 {
		t.Fatalf("dry run previewed %d regions", len(dry.GetRegions()))
	}
	if n := len(ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{}))(t).GetRegions()); n != 0 {
		t.Fatalf("dry run left %d regions", n)
	}
	for _, d := range diskUsage(t, s) {
		if d.GetSizeUsedBytes() != 0 {
			t.Fatalf("dry run charged a dataset")
		}
	}
	_, err := s.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{Allocation: allocReq(vol, 4, nil)})
	wantCode(t, err, codes.ResourceExhausted)
}

// Concurrent replays of one call (same volume, same ids) — what a saga
// re-executing its node does — end with one set of regions, answered to all.
func TestAllocateConcurrentReplays(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 4, 2, 100*gib)
	vol := uuid.NewString()
	ids := newIDs(3)
	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = s.AllocateRegions(ctx, allocReq(vol, 3, ids))
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("replay: %v", err)
		}
	}
	list := ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: vol}))(t)
	if len(list.GetRegions()) != 3 {
		t.Fatalf("%d regions after concurrent replays", len(list.GetRegions()))
	}
	var total int64
	for _, d := range diskUsage(t, s) {
		total += d.GetSizeUsedBytes()
	}
	if total != 3*testReserved {
		t.Fatalf("charged %d, want %d", total, 3*testReserved)
	}
}

// Old regions sharing a zpool (which this allocator never does, but rows
// from elsewhere could) trip the unique-zpools guard.
func TestAllocateUniqueZpoolsGuard(t *testing.T) {
	ctx := context.Background()
	s, pool := newServer(t)
	inv := addInventory(t, s, 3, 1, 100*gib)
	vol := uuid.New()
	for range 2 {
		if _, err := pool.Exec(ctx, `INSERT INTO region (id, dataset_id, allocated_for, block_size, blocks_per_extent, extent_count, read_only)
			VALUES ($1, $2, $3, 512, 131072, 16, false)`, uuid.New(), inv.disks[0][0].GetDatasetId(), vol); err != nil {
			t.Fatal(err)
		}
	}
	req := allocReq(vol.String(), 3, newIDs(1))
	req.Strategy = allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM
	_, err := s.AllocateRegions(ctx, req)
	wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(err.Error(), "not enough unique zpools") {
		t.Fatalf("got %v", err)
	}
}

// exclude_sled_ids keeps new regions off those sleds (the orchestrator's
// destination budget), in the allocation and its dry run alike; a replay
// returns the existing regions wherever they are; a malformed id names
// its element.
func TestAllocateExcludeSleds(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	inv := addInventory(t, s, 4, 1, 100*gib)
	vol := uuid.NewString()
	req := allocReq(vol, 1, newIDs(1))
	req.ExcludeSledIds = []string{inv.sleds[0], inv.sleds[1], inv.sleds[2]}
	dry := ok(s.DryRunAllocation(ctx, &allocatorv1.DryRunAllocationRequest{Allocation: req}))(t)
	if got := dry.GetRegions()[0].GetSledId(); got != inv.sleds[3] {
		t.Fatalf("dry run placed on %s, want the only sled not excluded %s", got, inv.sleds[3])
	}
	got := ok(s.AllocateRegions(ctx, req))(t)
	if sled := got.GetRegions()[0].GetSledId(); sled != inv.sleds[3] {
		t.Fatalf("allocated on %s, want the only sled not excluded %s", sled, inv.sleds[3])
	}
	// Replayed with that sled excluded too: the same region, unchanged.
	replay := allocReq(vol, 1, req.NewRegionIds)
	replay.ExcludeSledIds = inv.sleds
	again := ok(s.AllocateRegions(ctx, replay))(t)
	if again.GetRegions()[0].GetRegionId() != got.GetRegions()[0].GetRegionId() || len(again.GetCreatedRegionIds()) != 0 {
		t.Fatalf("replay: %v, want the existing region", again)
	}
	// Every sled excluded: no room.
	all := allocReq(uuid.NewString(), 1, newIDs(1))
	all.ExcludeSledIds = inv.sleds
	_, err := s.AllocateRegions(ctx, all)
	wantCode(t, err, codes.ResourceExhausted)
	bad := allocReq(uuid.NewString(), 1, newIDs(1))
	bad.ExcludeSledIds = []string{inv.sleds[0], "nope"}
	_, err = s.AllocateRegions(ctx, bad)
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "exclude_sled_ids[1]") {
		t.Fatalf("got %v, want the bad element named", err)
	}
}

// The batch filters list regions of any of the volumes, and region
// snapshots of any of the snapshots.
func TestListBatchFilters(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 4, 1, 100*gib)
	a, b, c := uuid.NewString(), uuid.NewString(), uuid.NewString()
	for _, v := range []string{a, b, c} {
		ok(s.AllocateRegions(ctx, allocReq(v, 1, newIDs(1))))(t)
	}
	got := ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedForIds: []string{a, c}, PageSize: 100}))(t)
	if len(got.GetRegions()) != 2 {
		t.Fatalf("%d regions for two volumes, want 2", len(got.GetRegions()))
	}
	for _, r := range got.GetRegions() {
		if r.GetAllocatedFor() == b {
			t.Fatalf("listed a region of a volume not asked for")
		}
	}
	_, err := s.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{SnapshotIds: []string{"x"}})
	wantCode(t, err, codes.InvalidArgument)
}
