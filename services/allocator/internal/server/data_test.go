package server

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
)

// probeContents returns what each address serves ("" when not served).
func probeContents(t *testing.T, s *Server, addrs ...string) []string {
	t.Helper()
	resp := ok(s.ProbeTargets(context.Background(), &allocatorv1.ProbeTargetsRequest{Addresses: addrs}))(t)
	out := make([]string, len(resp.GetProbes()))
	for i, p := range resp.GetProbes() {
		out[i] = p.GetContent()
	}
	return out
}

// wantInvalid expects InvalidArgument naming field.
func wantInvalid(t *testing.T, err error, field string) {
	t.Helper()
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), field+":") {
		t.Fatalf("got %v, want InvalidArgument naming %s", err, field)
	}
}

// The data path through the RPCs: probes report the content identity,
// writes and repairs change it, a read-only region is never written, and
// bad input changes nothing.
func TestDataServiceContent(t *testing.T) {
	ctx := context.Background()
	s, _ := newServer(t)
	addInventory(t, s, 5, 1, 100*gib)
	d := s.Data()
	vol := uuid.NewString()
	alloc := ok(s.AllocateRegions(ctx, allocReq(vol, 3, newIDs(3))))(t)
	ens := ok(s.EnsureRegions(ctx, ensureReq(alloc.GetRegions())))(t)
	var set []string
	for _, r := range ens.GetRegions() {
		set = append(set, r.GetAddress())
	}
	for _, c := range probeContents(t, s, set...) {
		if c != "blank" {
			t.Fatalf("new regions serve %v", probeContents(t, s, set...))
		}
	}

	bad := []struct {
		req   *allocatorv1.WriteRegionsRequest
		field string
	}{
		{&allocatorv1.WriteRegionsRequest{WriteId: uuid.NewString()}, "addresses"},
		{&allocatorv1.WriteRegionsRequest{Addresses: []string{set[0], "10.0.0.1:19000"}, WriteId: uuid.NewString()}, "addresses[1]"},
		{&allocatorv1.WriteRegionsRequest{Addresses: []string{"[fd00::1]:0"}, WriteId: uuid.NewString()}, "addresses[0]"},
		{&allocatorv1.WriteRegionsRequest{Addresses: set}, "write_id"},
		{&allocatorv1.WriteRegionsRequest{Addresses: set, WriteId: "nope"}, "write_id"},
	}
	for _, b := range bad {
		_, err := d.WriteRegions(ctx, b.req)
		wantInvalid(t, err, b.field)
	}
	badRepair := []struct {
		req   *allocatorv1.RepairRegionSetRequest
		field string
	}{
		{&allocatorv1.RepairRegionSetRequest{}, "addresses"},
		{&allocatorv1.RepairRegionSetRequest{Addresses: []string{"x"}}, "addresses[0]"},
		{&allocatorv1.RepairRegionSetRequest{Addresses: set, Repair: []string{"[fd00::9]:19000"}}, "repair[0]"},
		{&allocatorv1.RepairRegionSetRequest{Addresses: set, Repair: []string{set[0], "nope"}}, "repair[1]"},
	}
	for _, b := range badRepair {
		_, err := d.RepairRegionSet(ctx, b.req)
		wantInvalid(t, err, b.field)
	}
	for _, c := range probeContents(t, s, set...) {
		if c != "blank" {
			t.Fatalf("bad input changed content: %v", probeContents(t, s, set...))
		}
	}

	w := ok(d.WriteRegions(ctx, &allocatorv1.WriteRegionsRequest{Addresses: set, WriteId: uuid.NewString()}))(t)
	if len(w.GetWritten()) != 3 || len(w.GetSkipped()) != 0 {
		t.Fatalf("write: %+v", w)
	}
	for _, c := range probeContents(t, s, set...) {
		if c != w.GetContent() {
			t.Fatalf("after the write: %v, want %s", probeContents(t, s, set...), w.GetContent())
		}
	}

	// A snapshot, then a read-only region cloned from it: both hold the
	// write and refuse writes and repairs.
	snap := uuid.NewString()
	rs := ok(s.CreateRegionSnapshots(ctx, &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: snap, RegionIds: []string{ens.GetRegions()[0].GetRegionId()}}))(t)
	rsAddr := rs.GetRegionSnapshots()[0].GetAddress()
	roReq := allocReq(snap, 1, newIDs(1))
	roReq.SnapshotId, roReq.ReadOnly = snap, true
	ro := ok(s.AllocateRegions(ctx, roReq))(t)
	roEns := ok(s.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
		RegionId: ro.GetRegions()[0].GetRegionId(), CloneSourceAddress: rsAddr,
	}}}))(t)
	roAddr := roEns.GetRegions()[0].GetAddress()
	if got := probeContents(t, s, rsAddr, roAddr); got[0] != w.GetContent() || got[1] != w.GetContent() {
		t.Fatalf("snapshot and clone hold %v, want %s", got, w.GetContent())
	}
	for _, a := range []string{rsAddr, roAddr} {
		_, err := d.WriteRegions(ctx, &allocatorv1.WriteRegionsRequest{Addresses: []string{set[0], a}, WriteId: uuid.NewString()})
		wantCode(t, err, codes.FailedPrecondition)
		_, err = d.RepairRegionSet(ctx, &allocatorv1.RepairRegionSetRequest{Addresses: []string{set[0], a}})
		wantCode(t, err, codes.FailedPrecondition)
	}
	if got := probeContents(t, s, set[0]); got[0] != w.GetContent() {
		t.Fatalf("a refused write changed %s to %s", set[0], got[0])
	}

	// A later write does not reach the snapshot or the clone.
	w2 := ok(d.WriteRegions(ctx, &allocatorv1.WriteRegionsRequest{Addresses: set, WriteId: uuid.NewString()}))(t)
	if got := probeContents(t, s, rsAddr, roAddr, set[0]); got[0] != w.GetContent() || got[1] != w.GetContent() || got[2] != w2.GetContent() {
		t.Fatalf("after a second write: %v", got)
	}

	// A replacement region is blank until its live repair is recorded.
	repl := ok(s.AllocateRegions(ctx, allocReq(vol, 4, newIDs(1))))(t)
	replEns := ok(s.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{RegionId: repl.GetCreatedRegionIds()[0]}}}))(t)
	fresh := replEns.GetRegions()[0].GetAddress()
	if got := probeContents(t, s, fresh); got[0] != "blank" {
		t.Fatalf("replacement region holds %s", got[0])
	}
	newSet := []string{set[0], set[1], fresh}
	rep := ok(d.RepairRegionSet(ctx, &allocatorv1.RepairRegionSetRequest{Addresses: newSet, Repair: []string{fresh}}))(t)
	if rep.GetContent() != w2.GetContent() || len(rep.GetRepaired()) != 1 || probeContents(t, s, fresh)[0] != w2.GetContent() {
		t.Fatalf("live repair: %+v, new region holds %s", rep, probeContents(t, s, fresh)[0])
	}
	// Repeating it changes nothing more.
	if rep := ok(d.RepairRegionSet(ctx, &allocatorv1.RepairRegionSetRequest{Addresses: newSet, Repair: []string{fresh}}))(t); len(rep.GetRepaired()) != 0 {
		t.Fatalf("repeated repair changed %v", rep.GetRepaired())
	}
}
