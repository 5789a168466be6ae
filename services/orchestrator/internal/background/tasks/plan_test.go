package tasks

import (
	"context"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// copyCounter is an allocator that only counts the listings a plan reads
// live copies from, and answers them with nothing.
type copyCounter struct {
	allocatorv1.RegionAllocatorServiceClient
	listings int
}

func (c *copyCounter) ListRegions(context.Context, *allocatorv1.ListRegionsRequest, ...grpc.CallOption) (*allocatorv1.ListRegionsResponse, error) {
	c.listings++
	return &allocatorv1.ListRegionsResponse{}, nil
}

func (c *copyCounter) ListRegionSnapshots(context.Context, *allocatorv1.ListRegionSnapshotsRequest, ...grpc.CallOption) (*allocatorv1.ListRegionSnapshotsResponse, error) {
	c.listings++
	return &allocatorv1.ListRegionSnapshotsResponse{}, nil
}

// While the rebuilds on their way fill the rack budget, a plan admits
// nothing and reads no copies: it holds every waiting request on the rack
// budget, in the order of its last count. A sled's expunge keeps the rack
// budget full for most of its repairs while every completion wakes a
// plan, and counting every waiting request's copies each time was the
// plan's largest cost. Once a slot is free it counts them again.
func TestPlanReadsNoCopiesWhileTheRackIsFull(t *testing.T) {
	ctx := context.Background()
	s := store.New(testenv.Start(t, testenv.Options{}).Pool, store.WithRebuildLimits(store.Limits{RackRebuilds: 1}))
	request := func() store.ROReplacement {
		snap, ds := uuid.New(), uuid.New()
		r, _, err := s.InsertROReplacement(ctx, store.ROReplacement{
			ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.New(), OldRegionID: uuid.New(),
			OldDatasetID: &ds, OldSnapshotID: snap, LockVolumeID: snap,
		})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	busy, waiting := request(), request()
	if err := s.SetROAllocating(ctx, busy.ID, uuid.New()); err != nil {
		t.Fatal(err)
	}
	alloc := &copyCounter{}
	env := Env{Deps: &sagadef.Deps{Store: s, Allocator: alloc}, Admission: NewAdmission()}

	admitted, _, st, err := env.plan(ctx, kindRO)
	if err != nil {
		t.Fatal(err)
	}
	if len(admitted) != 0 || alloc.listings != 0 {
		t.Fatalf("rack full: admitted %d, read copies %d times; want neither", len(admitted), alloc.listings)
	}
	if held := st.HeldBack[store.BudgetRackRebuilds]; held.Total != 1 {
		t.Fatalf("rack full: %d held on the rack budget (%+v), want the waiting request", held.Total, st.HeldBack)
	}

	if err := s.SetRebuildLimits(ctx, map[string]int{store.BudgetRackRebuilds: 2}, false); err != nil {
		t.Fatal(err)
	}
	admitted, _, _, err = env.plan(ctx, kindRO)
	if err != nil {
		t.Fatal(err)
	}
	if len(admitted) != 1 || admitted[0].id != waiting.ID || alloc.listings == 0 {
		t.Fatalf("a slot free: admitted %d, read copies %d times; want the waiting request, counted", len(admitted), alloc.listings)
	}
}
