package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
)

// contentRack is a real allocator (with --dev), a notifier and a
// sim-upstairs probing through the allocator.
type contentRack struct {
	ac   allocatorv1.RegionAllocatorServiceClient
	data allocatorv1.AgentDataServiceClient
	sim  *sim
}

func newContentRack(t *testing.T, sleds int) *contentRack {
	t.Helper()
	alloc, ac := startAllocatorSleds(t, sleds)
	n := startNotifier(t, freeAddr(t))
	return &contentRack{
		ac:   ac,
		data: allocatorv1.NewAgentDataServiceClient(dial(t, alloc.addr)),
		sim:  startSim(t, n.addr, alloc.addr),
	}
}

// regions allocates and ensures n more regions for volume (on distinct
// sleds, read-only ones cloned from cloneSource when given) and returns
// their addresses.
func (c *contentRack) regions(t *testing.T, volume string, have, n int, readOnly bool, cloneSource string) []string {
	t.Helper()
	ctx := ctxT(t)
	ids := make([]string, n)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	if _, err := c.ac.AllocateRegions(ctx, &allocatorv1.AllocateRegionsRequest{
		VolumeId: volume, BlockSize: 512, BlocksPerExtent: 128, ExtentCount: 4, Redundancy: int32(have + n), ReadOnly: readOnly,
		NewRegionIds: ids, Strategy: allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
	}); err != nil {
		t.Fatalf("AllocateRegions: %v", err)
	}
	req := &allocatorv1.EnsureRegionsRequest{}
	for _, id := range ids {
		req.Regions = append(req.Regions, &allocatorv1.RegionEnsure{RegionId: id, CloneSourceAddress: cloneSource})
	}
	er, err := c.ac.EnsureRegions(ctx, req)
	if err != nil {
		t.Fatalf("EnsureRegions: %v", err)
	}
	var out []string
	for _, r := range er.GetRegions() {
		out = append(out, r.GetAddress())
	}
	return out
}

// snapshot snapshots the regions of volume and returns the running
// snapshots' addresses.
func (c *contentRack) snapshot(t *testing.T, volume string) []string {
	t.Helper()
	ctx := ctxT(t)
	rl, err := c.ac.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: volume})
	if err != nil {
		t.Fatal(err)
	}
	req := &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: uuid.NewString()}
	for _, r := range rl.GetRegions() {
		req.RegionIds = append(req.RegionIds, r.GetRegionId())
	}
	rs, err := c.ac.CreateRegionSnapshots(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rs.GetRegionSnapshots() {
		out = append(out, r.GetAddress())
	}
	return out
}

// write writes addrs directly on the agents, behind any Upstairs' back.
func (c *contentRack) write(t *testing.T, addrs ...string) string {
	t.Helper()
	resp, err := c.data.WriteRegions(ctxT(t), &allocatorv1.WriteRegionsRequest{Addresses: addrs, WriteId: uuid.NewString()})
	if err != nil {
		t.Fatalf("WriteRegions: %v", err)
	}
	return resp.GetContent()
}

func (c *contentRack) contentOf(t *testing.T, addr string) string {
	t.Helper()
	resp, err := c.ac.ProbeTargets(ctxT(t), &allocatorv1.ProbeTargetsRequest{Addresses: []string{addr}})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetProbes()[0].GetContent()
}

func expectedAt(st *upstairsv1.VolumeStatus, position string) string {
	for _, p := range st.GetPositions() {
		if p.GetPosition() == position {
			return p.GetExpected()
		}
	}
	return ""
}

const (
	rwPosition = "vcr.sub_volumes[0]"
	roPosition = "vcr.read_only_parent.sub_volumes[0]"
)

// The content oracle over a real allocator: writes and live repairs keep a
// volume reading what it should; a read-only copy cloned from other bytes,
// and a write behind the Upstairs' back, are content mismatches, counted
// once each and kept across ForgetAll.
func TestContentOracle(t *testing.T) {
	t.Parallel()
	c := newContentRack(t, 5)
	ctx := ctxT(t)

	// The parent: a disk written once, then snapshotted.
	parent := uuid.NewString()
	parentRegions := c.regions(t, parent, 0, 3, false, "")
	w0 := c.write(t, parentRegions...)
	snap := c.snapshot(t, parent)

	vol := uuid.NewString()
	rw := c.regions(t, vol, 0, 3, false, "")
	if _, err := c.sim.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(1, rw, snap)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "activation reconciled and positions recorded", func() error {
		st := simStatus(t, c.sim, vol)
		if !st.GetSeenActive() || expectedAt(st, rwPosition) != "blank" || expectedAt(st, roPosition) != w0 {
			return fmt.Errorf("seen active %v, positions %v", st.GetSeenActive(), st.GetPositions())
		}
		return nil
	})

	// A write through the Upstairs: every rw copy, and the expectation.
	w, err := c.sim.up.Write(ctx, &upstairsv1.WriteRequest{VolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	if len(w.GetWritten()) != 3 || len(w.GetSkipped()) != 0 {
		t.Fatalf("write: %v", w)
	}
	for _, a := range rw {
		if got := c.contentOf(t, a); got != w.GetContent() {
			t.Fatalf("%s holds %s after the write, want %s", a, got, w.GetContent())
		}
	}
	if st := simStatus(t, c.sim, vol); expectedAt(st, rwPosition) != w.GetContent() || expectedAt(st, roPosition) != w0 {
		t.Fatalf("positions after the write: %v", st.GetPositions())
	}

	// A rw replacement: the new region is blank until the live repair
	// copies the set's content into it.
	fresh := c.regions(t, vol, 3, 1, false, "")[0]
	if got := c.contentOf(t, fresh); got != "blank" {
		t.Fatalf("new region holds %s", got)
	}
	next := testVCR(2, []string{fresh, rw[1], rw[2]}, snap)
	if r, err := c.sim.up.ReplaceVolume(ctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: vol, Vcr: next}); err != nil || r.GetResult() != upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED {
		t.Fatalf("rw replace: %v %v", r, err)
	}
	eventually(t, 15*time.Second, "live repair done", func() error {
		if st := simStatus(t, c.sim, vol); st.GetRepairing() {
			return fmt.Errorf("still repairing")
		}
		return nil
	})
	if got := c.contentOf(t, fresh); got != w.GetContent() {
		t.Fatalf("repaired region holds %s, want %s", got, w.GetContent())
	}
	// A few probes later nothing is wrong.
	time.Sleep(400 * time.Millisecond)
	if st := simStatus(t, c.sim, vol); st.GetContentMismatchEvents() != 0 || st.GetDataLossEvents() != 0 {
		t.Fatalf("violations after a write and a live repair: %v", st.GetContentMismatches())
	}

	// A read-only replacement whose new copy was cloned from other bytes
	// (the volume's own rw region, written since): caught at once.
	wrong := c.regions(t, uuid.NewString(), 0, 1, true, rw[1])[0]
	next2 := testVCR(2, []string{fresh, rw[1], rw[2]}, []string{wrong, snap[1], snap[2]})
	if r, err := c.sim.up.ReplaceVolume(ctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: vol, Vcr: next2}); err != nil || r.GetResult() != upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED {
		t.Fatalf("ro replace: %v %v", r, err)
	}
	eventually(t, 10*time.Second, "the wrong clone is a content mismatch", func() error {
		st := simStatus(t, c.sim, vol)
		for _, m := range st.GetContentMismatches() {
			if m.GetPosition() == roPosition && m.GetKind() == upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_CHANGED &&
				len(m.GetAddresses()) == 1 && m.GetAddresses()[0] == wrong && m.GetExpected() == w0 && m.GetObserved() == w.GetContent() {
				return nil
			}
		}
		return fmt.Errorf("mismatches %v", st.GetContentMismatches())
	})

	// A write behind the Upstairs' back changes one rw copy.
	stray := c.write(t, rw[2])
	eventually(t, 10*time.Second, "the stray write is a content mismatch", func() error {
		st := simStatus(t, c.sim, vol)
		for _, m := range st.GetContentMismatches() {
			if m.GetPosition() == rwPosition && m.GetObserved() == stray && m.GetAddresses()[0] == rw[2] {
				return nil
			}
		}
		return fmt.Errorf("mismatches %v", st.GetContentMismatches())
	})
	// Each violation counts once, however many probes see it.
	time.Sleep(500 * time.Millisecond)
	st := simStatus(t, c.sim, vol)
	if st.GetContentMismatchEvents() != 2 || len(st.GetContentMismatches()) != 2 {
		t.Fatalf("%d events: %v", st.GetContentMismatchEvents(), st.GetContentMismatches())
	}
	if _, err := c.sim.faults.ForgetAll(ctx, &upstairsv1.ForgetAllRequest{}); err != nil {
		t.Fatal(err)
	}
	list, err := c.sim.up.ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})
	if err != nil || len(list.GetVolumes()) != 0 || list.GetTotalContentMismatchEvents() != 2 || list.GetTotalDataLossEvents() != 0 {
		t.Fatalf("after ForgetAll: %v %v", list, err)
	}
}

// Activation reconciles a set with a blank new copy: the written content
// wins and is recorded on the agent; a position whose every copy is gone
// is unreadable.
func TestContentOracleReconcileAndUnreadable(t *testing.T) {
	t.Parallel()
	c := newContentRack(t, 4)
	ctx := ctxT(t)
	vol := uuid.NewString()
	rw := c.regions(t, vol, 0, 3, false, "")
	w := c.write(t, rw[0], rw[1])
	if _, err := c.sim.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(1, rw, nil)}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "reconciled", func() error {
		st := simStatus(t, c.sim, vol)
		if !st.GetSeenActive() || expectedAt(st, rwPosition) != w {
			return fmt.Errorf("seen active %v, positions %v", st.GetSeenActive(), st.GetPositions())
		}
		return nil
	})
	if got := c.contentOf(t, rw[2]); got != w {
		t.Fatalf("reconciled copy holds %s, want %s", got, w)
	}

	// A read-only volume over a snapshot whose every copy is expunged.
	ro := uuid.NewString()
	snap := c.snapshot(t, vol)
	if _, err := c.sim.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: ro, Vcr: testVCR(1, snap, nil), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "snapshot position recorded", func() error {
		if got := expectedAt(simStatus(t, c.sim, ro), rwPosition); got != w {
			return fmt.Errorf("expected %q", got)
		}
		return nil
	})
	disks, err := c.ac.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	rl, err := c.ac.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: vol})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rl.GetRegions() {
		for _, d := range disks.GetDisks() {
			if d.GetDatasetId() == r.GetDatasetId() {
				if _, err := c.ac.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: d.GetDiskId()}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	eventually(t, 10*time.Second, "unreadable", func() error {
		st := simStatus(t, c.sim, ro)
		if len(st.GetContentMismatches()) == 1 && st.GetContentMismatches()[0].GetKind() == upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_UNREADABLE &&
			st.GetContentMismatches()[0].GetExpected() == w && st.GetDataLossEvents() == 0 {
			return nil
		}
		return fmt.Errorf("mismatches %v, data loss %d", st.GetContentMismatches(), st.GetDataLossEvents())
	})
}

// Write's answers to bad or impossible requests change nothing.
func TestWriteRefusals(t *testing.T) {
	t.Parallel()
	c := newContentRack(t, 3)
	ctx := ctxT(t)
	_, err := c.sim.up.Write(ctx, &upstairsv1.WriteRequest{})
	wantCode(t, err, codes.InvalidArgument, "empty volume_id")
	_, err = c.sim.up.Write(ctx, &upstairsv1.WriteRequest{VolumeId: uuid.NewString()})
	wantCode(t, err, codes.NotFound, "inactive volume")

	vol := uuid.NewString()
	rw := c.regions(t, vol, 0, 3, false, "")
	if _, err := c.sim.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(1, rw, nil), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	_, err = c.sim.up.Write(ctx, &upstairsv1.WriteRequest{VolumeId: vol})
	wantCode(t, err, codes.FailedPrecondition, "read-only activation")
	for _, a := range rw {
		if got := c.contentOf(t, a); got != "blank" {
			t.Fatalf("a refused write changed %s to %s", a, got)
		}
	}

	// Without an allocator there is no data path to write through.
	n := startNotifier(t, freeAddr(t))
	bare := startSim(t, n.addr, "")
	other := uuid.NewString()
	if _, err := bare.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: other, Vcr: testVCR(1, addrs("301", 3), nil)}); err != nil {
		t.Fatal(err)
	}
	_, err = bare.up.Write(ctx, &upstairsv1.WriteRequest{VolumeId: other})
	wantCode(t, err, codes.FailedPrecondition, "no data path")
}
