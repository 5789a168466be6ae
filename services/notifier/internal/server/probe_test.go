package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/platform/pgtest"
)

// startAllocator runs the region-allocator binary (with --dev) and its
// simulated agents (sim-agent) on their own database with three sleds of
// one disk each.
func startAllocator(t testing.TB) (*process, allocatorv1.RegionAllocatorServiceClient) {
	t.Helper()
	return startAllocatorSleds(t, 3)
}

// startAllocatorSleds is startAllocator with n sleds.
func startAllocatorSleds(t testing.TB, n int) (*process, allocatorv1.RegionAllocatorServiceClient) {
	t.Helper()
	cluster := pgtest.Cluster(t)
	ctx := context.Background()
	name := "al_" + strings.ReplaceAll(uuid.NewString(), "-", "")[:16]
	if err := cluster.CreateDatabase(ctx, name, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cluster.DropDatabase(context.Background(), name) })
	agent := startProcess(t, "sim-agent", freeAddr(t), "--db", cluster.DSN(name))
	p := startProcess(t, "region-allocator", freeAddr(t), "--dev", "--db", cluster.DSN(name), "--agent-addr", agent.addr)
	c := allocatorv1.NewRegionAllocatorServiceClient(dial(t, p.addr))
	for i := range n {
		sled, err := c.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprint("sled-", i)})
		if err != nil {
			t.Fatalf("AddSled: %v", err)
		}
		if _, err := c.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
			SledId: sled.GetSled().GetSledId(), CapacityBytes: 1 << 40, DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::1", 0x101+i),
		}); err != nil {
			t.Fatalf("AddPhysicalDisk: %v", err)
		}
	}
	return p, c
}

// TestDataPathProbeCountsDestroyedTargets destroys a region under an
// active volume and watches the sim-upstairs' data-loss oracle fire.
func TestDataPathProbeCountsDestroyedTargets(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	alloc, ac := startAllocator(t)
	s := startSim(t, freeAddr(t), alloc.addr)

	vol := uuid.NewString()
	ar, err := ac.AllocateRegions(ctx, &allocatorv1.AllocateRegionsRequest{
		VolumeId: vol, BlockSize: 512, BlocksPerExtent: 128, ExtentCount: 4, Redundancy: 3,
		NewRegionIds: []string{uuid.NewString(), uuid.NewString(), uuid.NewString()},
		Strategy:     allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
	})
	if err != nil {
		t.Fatalf("AllocateRegions: %v", err)
	}
	var ensure []*allocatorv1.RegionEnsure
	for _, r := range ar.GetRegions() {
		ensure = append(ensure, &allocatorv1.RegionEnsure{RegionId: r.GetRegionId()})
	}
	er, err := ac.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: ensure})
	if err != nil {
		t.Fatalf("EnsureRegions: %v", err)
	}
	var targets []string
	for _, r := range er.GetRegions() {
		targets = append(targets, r.GetAddress())
	}
	if _, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(1, targets, nil)}); err != nil {
		t.Fatal(err)
	}
	// Live targets are probed and found served: no data loss.
	probe, err := ac.ProbeTargets(ctx, &allocatorv1.ProbeTargetsRequest{Addresses: targets})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probe.GetProbes() {
		if p.GetResult() != allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
			t.Fatalf("ensured region not served: %v", p)
		}
	}
	if st := simStatus(t, s, vol); st.GetDataLossEvents() != 0 {
		t.Fatalf("data loss with every target alive: %v", st)
	}

	victim := er.GetRegions()[1]
	if _, err := ac.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{victim.GetRegionId()}}); err != nil {
		t.Fatalf("DeleteRegions: %v", err)
	}
	eventually(t, 15*time.Second, "data-loss event recorded", func() error {
		st := simStatus(t, s, vol)
		if st.GetDataLossEvents() == 0 {
			return fmt.Errorf("no data-loss event yet")
		}
		if !slices.Equal(st.GetDataLossAddresses(), []string{victim.GetAddress()}) {
			return fmt.Errorf("addresses %v, want %s", st.GetDataLossAddresses(), victim.GetAddress())
		}
		return nil
	})
	list, err := s.up.ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})
	if err != nil || list.GetTotalDataLossEvents() == 0 {
		t.Fatalf("total counter: %v %v", list, err)
	}
	// Forgetting the volume does not forget the data loss.
	if _, err := s.faults.ForgetAll(ctx, &upstairsv1.ForgetAllRequest{}); err != nil {
		t.Fatal(err)
	}
	list, err = s.up.ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})
	if err != nil || len(list.GetVolumes()) != 0 || list.GetTotalDataLossEvents() == 0 {
		t.Fatalf("after ForgetAll: %v %v", list, err)
	}
}
