package validate

import (
	"context"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/testenv"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { testenv.Main(m) }

const gib = 1 << 30

// countingAllocator is the real allocator client; it only records how many
// addresses each ProbeTargets call carried.
type countingAllocator struct {
	allocatorv1.RegionAllocatorServiceClient
	mu    sync.Mutex
	calls []int
}

func (c *countingAllocator) ProbeTargets(ctx context.Context, in *allocatorv1.ProbeTargetsRequest, opts ...grpc.CallOption) (*allocatorv1.ProbeTargetsResponse, error) {
	c.mu.Lock()
	c.calls = append(c.calls, len(in.Addresses))
	c.mu.Unlock()
	return c.RegionAllocatorServiceClient.ProbeTargets(ctx, in, opts...)
}

// ValidateSystem probes the ACTIVE targets in calls of at most the batch
// size, every target exactly once, and reports the unserved targets found
// in any batch: three regions of one disk destroyed behind the control
// plane's back are reported even though a batch of two cannot hold them
// all.
func TestProbesInBatches(t *testing.T) {
	t.Parallel()
	e := testenv.Start(t, testenv.Options{})
	e.SeedRack(t, 4, 2, 100*gib)
	ctx := context.Background()
	g, err := sagadef.GeometryFor(gib, 512)
	if err != nil {
		t.Fatal(err)
	}
	var disks []uuid.UUID
	for range 3 {
		p := sagadef.RegionSetParams{VolumeID: uuid.New(), Geometry: &g}
		e.MustSucceed(t, sagadef.VolumeCreate, p)
		disks = append(disks, p.VolumeID)
	}
	snap := sagadef.SnapshotParams{DiskVolumeID: disks[0], SnapshotID: uuid.New()}
	e.MustSucceed(t, sagadef.SnapshotCreate, snap)

	active := 0
	targets, err := e.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, tg := range targets.Targets {
		if tg.State == commonv1.TargetState_TARGET_STATE_ACTIVE {
			active++
		}
	}
	if targets.NextPageToken != "" || active < 10 {
		t.Fatalf("%d ACTIVE targets (more pages: %t); the test needs at least 10 on one page", active, targets.NextPageToken != "")
	}

	const batch = 2
	check := func(wantUnserved map[string]bool) {
		t.Helper()
		alloc := &countingAllocator{RegionAllocatorServiceClient: e.Deps.Allocator}
		deps := *e.Deps
		deps.Allocator = alloc
		vs, err := run(ctx, &deps, e.Store, batch)
		if err != nil {
			t.Fatalf("validate: %v", err)
		}
		got := map[string]bool{}
		for _, v := range vs {
			if v.Code != "active_target_not_served" || !wantUnserved[v.Subject] {
				t.Errorf("unexpected violation %s on %s: %s", v.Code, v.Subject, v.Detail)
				continue
			}
			got[v.Subject] = true
		}
		if len(got) != len(wantUnserved) {
			t.Errorf("reported unserved %v, want %v", got, wantUnserved)
		}
		total := 0
		for _, n := range alloc.calls {
			if n > batch {
				t.Errorf("a ProbeTargets call carried %d addresses, more than the batch of %d (calls %v)", n, batch, alloc.calls)
			}
			total += n
		}
		if total != active {
			t.Errorf("probed %d addresses in calls %v, want each of the %d ACTIVE targets once", total, alloc.calls, active)
		}
	}
	check(map[string]bool{})

	conn, err := pgx.Connect(ctx, e.Stack.DSN(stack.DatabaseOf(stack.Allocator)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	unserved := map[string]bool{}
	for _, tg := range targets.Targets {
		if tg.Kind != commonv1.TargetKind_TARGET_KIND_RW_REGION || tg.OwnerVolumeId != disks[2].String() {
			continue
		}
		// Destroyed behind the control plane's back, as a lost disk write
		// or a bug would.
		for _, sql := range []string{
			`UPDATE agent_region SET state = 'destroyed' WHERE region_id = $1`,
			`DELETE FROM agent_port WHERE region_id = $1 AND snapshot_id IS NULL`,
		} {
			if _, err := conn.Exec(ctx, sql, tg.TargetId); err != nil {
				t.Fatalf("%s: %v", sql, err)
			}
		}
		unserved[tg.Address] = true
	}
	if len(unserved) <= batch {
		t.Fatalf("destroyed %d regions; the test needs more than a batch of %d", len(unserved), batch)
	}
	check(unserved)
}
