package server

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"storagecp.dev/allocator/internal/agentfault"
	"storagecp.dev/allocator/sim/simagent"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/ids"
)

func ensureReq(regions []*allocatorv1.Region) *allocatorv1.EnsureRegionsRequest {
	req := &allocatorv1.EnsureRegionsRequest{}
	for _, r := range regions {
		req.Regions = append(req.Regions, &allocatorv1.RegionEnsure{RegionId: r.GetRegionId()})
	}
	return req
}

func probe(t *testing.T, s *Server, addrs ...string) []allocatorv1.ProbeResult {
	t.Helper()
	resp := ok(s.ProbeTargets(context.Background(), &allocatorv1.ProbeTargetsRequest{Addresses: addrs}))(t)
	var out []allocatorv1.ProbeResult
	for _, p := range resp.GetProbes() {
		out = append(out, p.GetResult())
	}
	return out
}

func TestRegionLifecycle(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	vol := uuid.NewString()
	alloc := ok(s.AllocateRegions(ctx, allocReq(vol, 3, newIDs(3))))(t)

	ensured := ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t)
	addrs := map[string]bool{}
	for _, r := range ensured.GetRegions() {
		if !r.GetEnsured() || r.GetPort() < 19000 || r.GetPort() > 19999 {
			t.Fatalf("region not ensured: %+v", r)
		}
		ap, err := netip.ParseAddrPort(r.GetAddress())
		if err != nil || ap.Port() != uint16(r.GetPort()) {
			t.Fatalf("bad address %q", r.GetAddress())
		}
		addrs[r.GetAddress()] = true
	}
	// Idempotent: same ports.
	again := ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t)
	for i, r := range again.GetRegions() {
		if r.GetAddress() != ensured.GetRegions()[i].GetAddress() {
			t.Fatalf("ensure replay moved region %s", r.GetRegionId())
		}
	}
	var list []string
	for a := range addrs {
		list = append(list, a)
	}
	for _, p := range probe(t, s, list...) {
		if p != allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
			t.Fatalf("ensured region probes %v", p)
		}
	}

	// Snapshot: idempotent, derived target id, own port on the same IP.
	snap := uuid.NewString()
	rsReq := &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: snap}
	for _, r := range ensured.GetRegions() {
		rsReq.RegionIds = append(rsReq.RegionIds, r.GetRegionId())
	}
	rs := ok(s.CreateRegionSnapshots(ctx, rsReq))(t)
	rs2 := ok(s.CreateRegionSnapshots(ctx, rsReq))(t)
	for i, x := range rs.GetRegionSnapshots() {
		if x.GetAddress() != rs2.GetRegionSnapshots()[i].GetAddress() {
			t.Fatalf("snapshot replay changed address")
		}
		want := ids.RegionSnapshotTargetID(uuid.MustParse(x.GetRegionId()), uuid.MustParse(snap)).String()
		if x.GetTargetId() != want {
			t.Fatalf("target id %s, want %s", x.GetTargetId(), want)
		}
		if addrs[x.GetAddress()] {
			t.Fatalf("running snapshot shares its region's address")
		}
		region := ensured.GetRegions()[i]
		if netip.MustParseAddrPort(x.GetAddress()).Addr() != netip.MustParseAddrPort(region.GetAddress()).Addr() {
			t.Fatalf("running snapshot on another IP")
		}
		if p := probe(t, s, x.GetAddress()); p[0] != allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
			t.Fatalf("running snapshot probes %v", p)
		}
	}
	got := ok(s.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: ensured.GetRegions()[0].GetRegionId()}))(t)
	if len(got.GetRegionSnapshots()) != 1 {
		t.Fatalf("GetRegion shows %d region snapshots", len(got.GetRegionSnapshots()))
	}

	// A region with snapshots cannot be deleted.
	_, err := s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: rsReq.RegionIds})
	wantCode(t, err, codes.FailedPrecondition)

	// Delete the region snapshots (twice, and an unknown one).
	delReq := &allocatorv1.DeleteRegionSnapshotsRequest{}
	for _, x := range rs.GetRegionSnapshots() {
		delReq.RegionSnapshots = append(delReq.RegionSnapshots, &allocatorv1.RegionSnapshotKey{RegionId: x.GetRegionId(), SnapshotId: snap})
	}
	delReq.RegionSnapshots = append(delReq.RegionSnapshots, &allocatorv1.RegionSnapshotKey{RegionId: uuid.NewString(), SnapshotId: snap})
	if d := ok(s.DeleteRegionSnapshots(ctx, delReq))(t); d.GetDeleted() != 3 {
		t.Fatalf("deleted %d region snapshots", d.GetDeleted())
	}
	if d := ok(s.DeleteRegionSnapshots(ctx, delReq))(t); d.GetDeleted() != 0 {
		t.Fatalf("replay deleted %d", d.GetDeleted())
	}
	for _, x := range rs.GetRegionSnapshots() {
		if p := probe(t, s, x.GetAddress()); p[0] != allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED {
			t.Fatalf("deleted running snapshot probes %v", p)
		}
	}

	// Delete the regions: rows gone, size_used recomputed, twice is fine.
	del := ok(s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: append(rsReq.RegionIds, uuid.NewString())}))(t)
	if len(del.GetDeletedRegionIds()) != 3 {
		t.Fatalf("deleted %v", del.GetDeletedRegionIds())
	}
	if d := ok(s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: rsReq.RegionIds}))(t); len(d.GetDeletedRegionIds()) != 0 {
		t.Fatalf("replay deleted %v", d.GetDeletedRegionIds())
	}
	for _, d := range diskUsage(t, s) {
		if d.GetSizeUsedBytes() != 0 || d.GetRegionCount() != 0 {
			t.Fatalf("disk still charged after delete: %+v", d)
		}
	}
	for _, p := range probe(t, s, list...) {
		if p != allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED {
			t.Fatalf("deleted region probes %v", p)
		}
	}
	_, err = s.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: rsReq.RegionIds[0]})
	wantCode(t, err, codes.NotFound)

	// Agents reuse ports after destruction.
	vol2 := uuid.NewString()
	alloc2 := ok(s.AllocateRegions(ctx, allocReq(vol2, 3, newIDs(3))))(t)
	ens2 := ok(s.EnsureRegions(ctx, ensureReq(alloc2.GetRegions())))(t)
	for _, r := range ens2.GetRegions() {
		if r.GetPort() != 19000 {
			t.Fatalf("port %d, want the reused 19000", r.GetPort())
		}
	}
}

func TestCloneSourceAndExpungement(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	inv := addInventory(t, s, 7, 1, 100*gib)
	v := newSnapshottedVolume(t, s)
	vol, snap, ens, rs := v.volume, v.snapshot, v.ensured, v.snapshots

	// A read-only clone for the snapshot volume avoids the region set's and
	// the snapshot's sleds (here the same three).
	used := map[string]bool{}
	for _, r := range ens.GetRegions() {
		used[r.GetSledId()] = true
	}
	roReq := allocReq(snap, 1, newIDs(1))
	roReq.SnapshotId = snap
	roReq.ReadOnly = true
	ro := ok(s.AllocateRegions(ctx, roReq))(t)
	if used[ro.GetRegions()[0].GetSledId()] || !ro.GetRegions()[0].GetReadOnly() {
		t.Fatalf("read-only clone on a snapshot sled or not read-only")
	}
	// Clone from a region snapshot; a destroyed source is refused.
	roEns := ok(s.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
		RegionId: ro.GetRegions()[0].GetRegionId(), CloneSourceAddress: rs.GetRegionSnapshots()[0].GetAddress(),
	}}}))(t)
	roRegion := roEns.GetRegions()[0]
	roReq2 := allocReq(snap, 2, newIDs(1))
	roReq2.SnapshotId = snap
	roReq2.ReadOnly = true
	ro2 := ok(s.AllocateRegions(ctx, roReq2))(t)
	var second string
	for _, r := range ro2.GetRegions() {
		if used[r.GetSledId()] {
			t.Fatalf("second read-only region on a snapshot sled")
		}
		if r.GetRegionId() != roRegion.GetRegionId() {
			second = r.GetRegionId()
			if r.GetSledId() == roRegion.GetSledId() {
				t.Fatalf("second read-only region on the first one's sled")
			}
		}
	}
	_, err := s.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
		RegionId: second, CloneSourceAddress: "[fd00:1::1]:19000",
	}}})
	wantCode(t, err, codes.FailedPrecondition)

	cs := ok(s.ListCloneSources(ctx, &allocatorv1.ListCloneSourcesRequest{SnapshotId: snap, VolumeId: snap}))(t)
	if len(cs.GetRegionSnapshots()) != 3 || len(cs.GetReadOnlyRegions()) != 1 {
		t.Fatalf("clone sources: %d snapshots, %d read-only regions", len(cs.GetRegionSnapshots()), len(cs.GetReadOnlyRegions()))
	}

	// Expunge the disk of region 0 (which holds region snapshot 0) and the
	// read-only region's disk.
	region0 := ens.GetRegions()[0]
	ex := ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: region0.GetDiskId()}))(t)
	if !ex.GetChanged() || ex.GetDisk().GetPolicy() != allocatorv1.Policy_POLICY_EXPUNGED {
		t.Fatalf("expunge: %+v", ex)
	}
	if ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: region0.GetDiskId()}))(t).GetChanged() {
		t.Fatalf("second expunge reported a change")
	}
	ok(s.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: roRegion.GetSledId()}))(t)

	exp := ok(s.ListExpungedTargets(ctx, &allocatorv1.ListExpungedTargetsRequest{}))(t)
	if len(exp.GetRegionSnapshots()) != 1 || exp.GetRegionSnapshots()[0].GetRegionId() != region0.GetRegionId() ||
		len(exp.GetReadWriteRegions()) != 1 || exp.GetReadWriteRegions()[0].GetRegionId() != region0.GetRegionId() ||
		len(exp.GetReadOnlyRegions()) != 1 || exp.GetReadOnlyRegions()[0].GetRegionId() != roRegion.GetRegionId() {
		t.Fatalf("expunged targets: %+v", exp)
	}
	cs = ok(s.ListCloneSources(ctx, &allocatorv1.ListCloneSourcesRequest{SnapshotId: snap, VolumeId: snap}))(t)
	if len(cs.GetRegionSnapshots()) != 2 || len(cs.GetReadOnlyRegions()) != 0 {
		t.Fatalf("clone sources after expunge: %d snapshots, %d read-only regions", len(cs.GetRegionSnapshots()), len(cs.GetReadOnlyRegions()))
	}
	// The agent is gone: probes are unreachable, ensure/snapshot fail
	// Unavailable, deletes succeed.
	p := probe(t, s, region0.GetAddress(), rs.GetRegionSnapshots()[0].GetAddress(), ens.GetRegions()[1].GetAddress())
	if p[0] != allocatorv1.ProbeResult_PROBE_RESULT_UNREACHABLE || p[1] != allocatorv1.ProbeResult_PROBE_RESULT_UNREACHABLE ||
		p[2] != allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
		t.Fatalf("probes after expunge: %v", p)
	}
	_, err = s.CreateRegionSnapshots(ctx, &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: uuid.NewString(), RegionIds: []string{region0.GetRegionId()}})
	wantCode(t, err, codes.Unavailable)
	// Replacement for the rw region: 3+1 avoids all three old sleds.
	repl := ok(s.AllocateRegions(ctx, allocReq(vol, 4, newIDs(1))))(t)
	for _, r := range repl.GetRegions() {
		if r.GetRegionId() == repl.GetCreatedRegionIds()[0] && used[r.GetSledId()] {
			t.Fatalf("replacement on an old sled")
		}
	}
	newRegion := repl.GetCreatedRegionIds()[0]
	ok(s.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{RegionId: newRegion}}}))(t)
	ok(s.DeleteRegionSnapshots(ctx, &allocatorv1.DeleteRegionSnapshotsRequest{RegionSnapshots: []*allocatorv1.RegionSnapshotKey{{RegionId: region0.GetRegionId(), SnapshotId: snap}}}))(t)
	d := ok(s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{region0.GetRegionId(), roRegion.GetRegionId()}}))(t)
	if len(d.GetDeletedRegionIds()) != 2 {
		t.Fatalf("deletes on a gone agent: %v", d.GetDeletedRegionIds())
	}
	// Data on a gone agent is not destroyed by us: still unreachable.
	if p := probe(t, s, region0.GetAddress()); p[0] != allocatorv1.ProbeResult_PROBE_RESULT_UNREACHABLE {
		t.Fatalf("probe %v", p)
	}
	// Ensuring a region on an expunged disk fails.
	ghost := allocReq(uuid.NewString(), 1, newIDs(1))
	g := ok(s.AllocateRegions(ctx, ghost))(t)
	ok(s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: g.GetRegions()[0].GetDiskId()}))(t)
	_, err = s.EnsureRegions(ctx, ensureReq(g.GetRegions()))
	wantCode(t, err, codes.Unavailable)
	_ = inv
}

func TestFaultInjection(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	alloc := ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 3, newIDs(3))))(t)
	f := s.Faults()

	for name, req := range map[string]*allocatorv1.InjectAgentFaultRequest{
		"operation":  {Count: 1, Fail: true},
		"count":      {Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Fail: true},
		"fail":       {Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1},
		"dataset_id": {Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1, Fail: true, DatasetId: "x"},
		"delay":      {Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1, Delay: durationpb.New(-time.Second)},
		"permanent":  {Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1, Delay: durationpb.New(time.Second), Permanent: true},
	} {
		_, err := f.InjectAgentFault(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
		_ = name
	}

	// Fail the next two ensures on region 1's dataset only.
	target := alloc.GetRegions()[1]
	ok(f.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, DatasetId: target.GetDatasetId(), Count: 2, Fail: true,
	}))(t)
	// Region 0 is unaffected.
	ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions()[:1])))(t)
	for range 2 {
		_, err := s.EnsureRegions(ctx, ensureReq(alloc.GetRegions()[1:2]))
		wantCode(t, err, codes.Unavailable)
	}
	ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t)
	// A permanent fault: a broken agent, which no retry fixes.
	ok(f.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, DatasetId: target.GetDatasetId(), Count: 1, Fail: true, Permanent: true,
	}))(t)
	_, err := s.EnsureRegions(ctx, ensureReq(alloc.GetRegions()[1:2]))
	wantCode(t, err, codes.FailedPrecondition)
	ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t)

	// Delay: a delete waits, then succeeds.
	ok(f.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_DELETE_REGION, Count: 1, Delay: durationpb.New(50 * time.Millisecond),
	}))(t)
	start := time.Now()
	ok(s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{alloc.GetRegions()[0].GetRegionId()}}))(t)
	if time.Since(start) < 50*time.Millisecond {
		t.Fatalf("delete was not delayed")
	}

	// A failed delete leaves the row; Clear removes pending faults.
	ok(f.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_DELETE_REGION, Count: 5, Fail: true,
	}))(t)
	_, err = s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{alloc.GetRegions()[1].GetRegionId()}})
	wantCode(t, err, codes.Unavailable)
	ok(s.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: alloc.GetRegions()[1].GetRegionId()}))(t)
	ok(f.ClearAgentFaults(ctx, &allocatorv1.ClearAgentFaultsRequest{}))(t)
	if agentFaults(s).Pending() != 0 {
		t.Fatalf("faults pending after clear")
	}
	ok(s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{alloc.GetRegions()[1].GetRegionId()}}))(t)

	// Snapshot faults: create fails once, then works; delete fails once.
	r2 := alloc.GetRegions()[2]
	snap := uuid.NewString()
	agentFaults(s).Inject(agentfault.Fault{Op: agentfault.OpCreateSnapshot, Count: 1, Fail: true})
	_, err = s.CreateRegionSnapshots(ctx, &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: snap, RegionIds: []string{r2.GetRegionId()}})
	wantCode(t, err, codes.Unavailable)
	ok(s.CreateRegionSnapshots(ctx, &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: snap, RegionIds: []string{r2.GetRegionId()}}))(t)
	agentFaults(s).Inject(agentfault.Fault{Op: agentfault.OpDeleteSnapshot, Count: 1, Fail: true})
	key := []*allocatorv1.RegionSnapshotKey{{RegionId: r2.GetRegionId(), SnapshotId: snap}}
	_, err = s.DeleteRegionSnapshots(ctx, &allocatorv1.DeleteRegionSnapshotsRequest{RegionSnapshots: key})
	wantCode(t, err, codes.Unavailable)
	if d := ok(s.DeleteRegionSnapshots(ctx, &allocatorv1.DeleteRegionSnapshotsRequest{RegionSnapshots: key}))(t); d.GetDeleted() != 1 {
		t.Fatalf("deleted %d", d.GetDeleted())
	}
}

func TestInventory(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	sledID := uuid.NewString()
	a := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: sledID, Serial: "s1"}))(t)
	b := ok(s.AddSled(ctx, &allocatorv1.AddSledRequest{SledId: sledID, Serial: "s1"}))(t)
	if a.GetSled().GetSledId() != b.GetSled().GetSledId() || a.GetSled().GetPolicy() != allocatorv1.Policy_POLICY_IN_SERVICE {
		t.Fatalf("AddSled not idempotent: %+v %+v", a, b)
	}
	for field, req := range map[string]*allocatorv1.AddPhysicalDiskRequest{
		"sled_id":         {CapacityBytes: gib, DatasetAddress: "fd00::1"},
		"capacity_bytes":  {SledId: sledID, DatasetAddress: "fd00::1"},
		"dataset_address": {SledId: sledID, CapacityBytes: gib, DatasetAddress: "10.0.0.1"},
		"disk_id":         {SledId: sledID, CapacityBytes: gib, DatasetAddress: "fd00::1", DiskId: "zz"},
	} {
		_, err := s.AddPhysicalDisk(ctx, req)
		wantCode(t, err, codes.InvalidArgument)
		_ = field
	}
	_, err := s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{SledId: uuid.NewString(), CapacityBytes: gib, DatasetAddress: "fd00::1"})
	wantCode(t, err, codes.NotFound)

	diskID := uuid.NewString()
	req := &allocatorv1.AddPhysicalDiskRequest{SledId: sledID, DiskId: diskID, CapacityBytes: gib, DatasetAddress: "fd00::1"}
	d1 := ok(s.AddPhysicalDisk(ctx, req))(t)
	d2 := ok(s.AddPhysicalDisk(ctx, req))(t)
	if d1.GetDisk().GetDatasetId() != d2.GetDisk().GetDatasetId() || d1.GetDisk().GetDatasetAddress() != "fd00::1" {
		t.Fatalf("AddPhysicalDisk not idempotent")
	}
	_, err = s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{SledId: sledID, CapacityBytes: gib, DatasetAddress: "fd00::1"})
	wantCode(t, err, codes.AlreadyExists)
	for i := range 5 {
		ok(s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{SledId: sledID, CapacityBytes: gib, DatasetAddress: netip.AddrFrom16([16]byte{0xfd, 15: byte(i + 2)}).String()}))(t)
	}
	var all []string
	token := ""
	for {
		page := ok(s.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 2, PageToken: token, SledId: sledID}))(t)
		for _, d := range page.GetDisks() {
			all = append(all, d.GetDiskId())
		}
		if token = page.GetNextPageToken(); token == "" {
			break
		}
	}
	if len(all) != 6 {
		t.Fatalf("paged %d disks, want 6", len(all))
	}
	ex := ok(s.ExpungeSled(ctx, &allocatorv1.ExpungeSledRequest{SledId: sledID}))(t)
	if ex.GetSled().GetPolicy() != allocatorv1.Policy_POLICY_EXPUNGED || len(ex.GetDisks()) != 6 {
		t.Fatalf("expunge sled: %+v", ex)
	}
	for _, d := range ex.GetDisks() {
		if d.GetPolicy() != allocatorv1.Policy_POLICY_EXPUNGED {
			t.Fatalf("disk %s not expunged with its sled", d.GetDiskId())
		}
	}
	_, err = s.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: uuid.NewString()})
	wantCode(t, err, codes.NotFound)
	_, err = s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{SledId: sledID, CapacityBytes: gib, DatasetAddress: "fd00::99"})
	wantCode(t, err, codes.FailedPrecondition)
}

func TestFenceRefusesStaleEpoch(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	alloc := ok(s.AllocateRegions(fence.NewContext(ctx, 5), allocReq(uuid.NewString(), 3, newIDs(3))))(t)
	stale := fence.NewContext(ctx, 4)
	_, err := s.AllocateRegions(stale, allocReq(uuid.NewString(), 3, newIDs(3)))
	wantCode(t, err, codes.FailedPrecondition)
	_, err = s.EnsureRegions(stale, ensureReq(alloc.GetRegions()))
	wantCode(t, err, codes.FailedPrecondition)
	_, err = s.AddSled(stale, &allocatorv1.AddSledRequest{Serial: "stale"})
	wantCode(t, err, codes.FailedPrecondition)
	// Nothing the stale call attempted reached an agent.
	for _, r := range ok(s.ListRegions(ctx, &allocatorv1.ListRegionsRequest{}))(t).GetRegions() {
		if r.GetEnsured() {
			t.Fatalf("stale ensure created region %s", r.GetRegionId())
		}
	}
	ens := ok(s.EnsureRegions(fence.NewContext(ctx, 5), ensureReq(alloc.GetRegions())))(t)
	// The data path's writes and repairs are agent calls: fenced too.
	var addrs []string
	for _, r := range ens.GetRegions() {
		addrs = append(addrs, r.GetAddress())
	}
	_, err = s.Data().WriteRegions(stale, &allocatorv1.WriteRegionsRequest{Addresses: addrs, WriteId: uuid.NewString()})
	wantCode(t, err, codes.FailedPrecondition)
	_, err = s.Data().RepairRegionSet(stale, &allocatorv1.RepairRegionSetRequest{Addresses: addrs})
	wantCode(t, err, codes.FailedPrecondition)
	resp := ok(s.ProbeTargets(ctx, &allocatorv1.ProbeTargetsRequest{Addresses: addrs}))(t)
	for _, p := range resp.GetProbes() {
		if p.GetContent() != simagent.Blank {
			t.Fatalf("a stale write reached %s: %s", p.GetAddress(), p.GetContent())
		}
	}
}

// Concurrent ensures of the same regions (a saga node re-run racing the
// first run) agree on one port per region.
func TestEnsureConcurrentReplays(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	alloc := ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 3, newIDs(3))))(t)
	resps := make([]*allocatorv1.EnsureRegionsResponse, 6)
	errs := make([]error, len(resps))
	var wg sync.WaitGroup
	for i := range resps {
		wg.Go(func() { resps[i], errs[i] = s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())) })
	}
	wg.Wait()
	for i := range resps {
		if errs[i] != nil {
			t.Fatalf("ensure: %v", errs[i])
		}
		for j, r := range resps[i].GetRegions() {
			if r.GetAddress() != resps[0].GetRegions()[j].GetAddress() {
				t.Fatalf("concurrent ensures disagree on %s", r.GetRegionId())
			}
		}
	}
}

// A snapshot-create that crashed after the agent snapshotted but before the
// row was written is cleaned by DeleteRegionSnapshots (the saga's undo), so
// the region can then be deleted.
func TestDeleteRegionSnapshotWithoutRow(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 3, 1, 100*gib)
	alloc := ok(s.AllocateRegions(ctx, allocReq(uuid.NewString(), 1, newIDs(1))))(t)
	region := ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t).GetRegions()[0]
	dataset, rid, snap := uuid.MustParse(region.GetDatasetId()), uuid.MustParse(region.GetRegionId()), uuid.New()
	if err := s.agent.CreateSnapshot(ctx, dataset, rid, snap); err != nil {
		t.Fatal(err)
	}
	port, err := s.agent.StartRunningSnapshot(ctx, dataset, rid, snap)
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.AddrPortFrom(netip.MustParseAddrPort(region.GetAddress()).Addr(), port).String()
	_, err = s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{rid.String()}})
	wantCode(t, err, codes.FailedPrecondition) // the agent refuses: ZFS has a snapshot
	d := ok(s.DeleteRegionSnapshots(ctx, &allocatorv1.DeleteRegionSnapshotsRequest{RegionSnapshots: []*allocatorv1.RegionSnapshotKey{{
		RegionId: rid.String(), SnapshotId: snap.String(),
	}}}))(t)
	if d.GetDeleted() != 0 {
		t.Fatalf("deleted %d rows that never existed", d.GetDeleted())
	}
	if p := probe(t, s, addr); p[0] != allocatorv1.ProbeResult_PROBE_RESULT_DESTROYED {
		t.Fatalf("running snapshot still %v", p[0])
	}
	ok(s.DeleteRegions(ctx, &allocatorv1.DeleteRegionsRequest{RegionIds: []string{rid.String()}}))(t)
}
