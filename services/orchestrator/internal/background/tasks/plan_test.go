package tasks

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

// copyCounter is an allocator that only counts the listings a plan reads
// live copies from, and answers them with nothing.
type copyCounter struct {
	allocatorv1.RegionAllocatorServiceClient
	listings int
	// snapshots: the snapshots whose region snapshots were listed.
	snapshots []string
}

func (c *copyCounter) ListRegions(context.Context, *allocatorv1.ListRegionsRequest, ...grpc.CallOption) (*allocatorv1.ListRegionsResponse, error) {
	c.listings++
	return &allocatorv1.ListRegionsResponse{}, nil
}

func (c *copyCounter) ListRegionSnapshots(_ context.Context, in *allocatorv1.ListRegionSnapshotsRequest, _ ...grpc.CallOption) (*allocatorv1.ListRegionSnapshotsResponse, error) {
	c.listings++
	c.snapshots = append(c.snapshots, in.SnapshotIds...)
	return &allocatorv1.ListRegionSnapshotsResponse{}, nil
}

// waitingRO inserts a Requested read-only request of a snapshot of its own.
func waitingRO(t *testing.T, s *store.Store) store.ROReplacement {
	t.Helper()
	snap, ds := uuid.New(), uuid.New()
	r, _, err := s.InsertROReplacement(context.Background(), store.ROReplacement{
		ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.New(), OldRegionID: uuid.New(),
		OldDatasetID: &ds, OldSnapshotID: snap, LockVolumeID: snap,
	})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// A plan counts a waiting request's live copies when it first sees it and
// again once its count is copiesRecount old, not on every pass: on a full
// rack every completion wakes a plan, and listing every waiting request's
// copies each time was the plan's largest cost. A request it has not
// counted yet is counted in the first pass that sees it.
func TestPlanCountsEachRequestOncePerRecount(t *testing.T) {
	ctx := context.Background()
	s := store.New(testenv.Start(t, testenv.Options{}).Pool, store.WithRebuildLimits(store.Limits{RackRebuilds: 100}))
	first, second := waitingRO(t, s), waitingRO(t, s)
	alloc := &copyCounter{}
	env := Env{Deps: &sagadef.Deps{Store: s, Allocator: alloc}, Admission: NewAdmission()}
	plan := func() {
		t.Helper()
		alloc.snapshots = nil
		if _, _, _, err := env.plan(ctx, kindRO); err != nil {
			t.Fatal(err)
		}
	}
	asked := func(rs ...store.ROReplacement) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.OldSnapshotID.String())
		}
		slices.Sort(out)
		return out
	}
	got := func() []string { return slices.Sorted(slices.Values(alloc.snapshots)) }

	plan()
	if want := asked(first, second); !slices.Equal(got(), want) {
		t.Fatalf("first plan counted %v, want both requests %v", got(), want)
	}
	plan()
	if len(alloc.snapshots) != 0 {
		t.Fatalf("a plan right after counted %v again", alloc.snapshots)
	}
	third := waitingRO(t, s)
	plan()
	if want := asked(third); !slices.Equal(got(), want) {
		t.Fatalf("with a new request, a plan counted %v, want only the new one %v", got(), want)
	}
	env.Admission.recount = time.Nanosecond
	plan()
	if want := asked(first, second, third); !slices.Equal(got(), want) {
		t.Fatalf("past the recount period, a plan counted %v, want every request %v", got(), want)
	}
}

// A rebuild refused for want of a destination waits for a slot to free.
// When the slot freed after the refusal but before the refused saga
// finished unwinding, a plan in between saw it go with nothing blocked
// yet, and no release was left to come: the record waited forever (a
// console demo's last rw request stayed Requested). With no sled at its
// destination limit, no such refusal still stands.
func TestPlanAdmitsADestRefusalOnceNoSledIsFull(t *testing.T) {
	ctx := context.Background()
	s := store.New(testenv.Start(t, testenv.Options{}).Pool, store.WithRebuildLimits(store.Limits{RackRebuilds: 100, DestSledRebuilds: 2}))
	r := waitingRO(t, s)
	env := Env{Deps: &sagadef.Deps{Store: s, Allocator: &copyCounter{}}, Admission: NewAdmission()}
	// The plan that saw the last slot free ran before the refusal was
	// noted: no slot held then, none now.
	if _, _, _, err := env.plan(ctx, kindRW); err != nil {
		t.Fatal(err)
	}
	env.Admission.refusedDest(r.ID)
	admitted, _, st, err := env.plan(ctx, kindRO)
	if err != nil {
		t.Fatal(err)
	}
	if len(admitted) != 1 || admitted[0].id != r.ID {
		t.Fatalf("admitted %v, want request %s; held back: %v", admitted, r.ID, st.HeldBack)
	}
}

// Among equals, a plan admits first the request whose volume lock someone
// waits for: here a younger snapshot request, with a second target of its
// snapshot queued behind it, goes before an older one nobody waits for.
func TestPlanAdmitsALockWaitedForFirst(t *testing.T) {
	ctx := context.Background()
	s := store.New(testenv.Start(t, testenv.Options{}).Pool, store.WithRebuildLimits(store.Limits{RackRebuilds: 1}))
	older := waitingRO(t, s)
	time.Sleep(10 * time.Millisecond) // a later request time
	waited := waitingRO(t, s)
	ds := uuid.New()
	_, _, err := s.InsertROReplacement(ctx, store.ROReplacement{
		ID: uuid.New(), Kind: store.KindRegionSnapshot, OldTargetID: uuid.New(), OldRegionID: uuid.New(),
		OldDatasetID: &ds, OldSnapshotID: waited.OldSnapshotID, LockVolumeID: waited.LockVolumeID,
	})
	if !errors.Is(err, store.ErrLockHeld) {
		t.Fatalf("a second request on a held snapshot: %v, want it queued behind the lock", err)
	}
	env := Env{Deps: &sagadef.Deps{Store: s, Allocator: &copyCounter{}}, Admission: NewAdmission()}
	admitted, _, _, err := env.plan(ctx, kindRO)
	if err != nil {
		t.Fatal(err)
	}
	if len(admitted) != 1 || admitted[0].id != waited.ID {
		var got []uuid.UUID
		for _, c := range admitted {
			got = append(got, c.id)
		}
		t.Fatalf("admitted %v, want only %s (waited for), not %s (older)", got, waited.ID, older.ID)
	}
}

// A freed slot wakes the rw detector, whose plan brings waiting read-only
// work to the start task: it admits the read-only request under the
// budgets, keeps its slot for it and says so (the detector then wakes the
// start task), and the start task's own plan admits it. The start task is
// woken directly only while the last plan left read-only requests waiting
// (its pass also completes those whose target is gone). A committed
// rw-replacement-start frees nothing and wakes nobody (sagaEnded).
func TestFreedSlotWakesOnePlanThatAdmitsBothKinds(t *testing.T) {
	ctx := context.Background()
	s := store.New(testenv.Start(t, testenv.Options{}).Pool, store.WithRebuildLimits(store.Limits{RackRebuilds: 1}))
	first := waitingRO(t, s)
	time.Sleep(10 * time.Millisecond) // a later request time
	waitingRO(t, s)
	env := Env{Deps: &sagadef.Deps{Store: s, Allocator: &copyCounter{}}, Admission: NewAdmission()}
	var woken []string
	env.activate = func(name string) { woken = append(woken, name) }
	freed := func(want ...string) {
		t.Helper()
		for _, tmpl := range []*saga.Template{sagadef.ROStart, sagadef.RWStart, sagadef.RWDrive} {
			woken = nil
			env.slotFreed(tmpl)
			if !slices.Equal(woken, want) {
				t.Errorf("a slot freed by %s woke %v, want %v", tmpl.Name(), woken, want)
			}
		}
	}

	// Something waits, so a freed slot wakes a plan: with no read-only
	// request known to wait, only the rw detector's.
	env.Admission.mu.Lock()
	env.Admission.held[uuid.New()] = "rack_rebuilds"
	env.Admission.mu.Unlock()
	freed(RWDetectorName)

	mine, other, _, err := env.plan(ctx, kindRW)
	if err != nil {
		t.Fatal(err)
	}
	if len(mine) != 0 || !other {
		t.Fatalf("the rw detector's plan admitted %v of its own and other=%v, want none and a read-only request reserved for the start task", mine, other)
	}
	// One read-only request still waits for the rack's one slot.
	freed(RWDetectorName, ROStartName)

	admitted, _, st, err := env.plan(ctx, kindRO)
	if err != nil {
		t.Fatal(err)
	}
	if len(admitted) != 1 || admitted[0].id != first.ID {
		t.Fatalf("the start task's plan admitted %v, want request %s; held back: %v", admitted, first.ID, st.HeldBack)
	}
}
