// Package operator tests the operator surface over real processes:
// ReplacementService.PreviewExpunge against what an expunge then really
// does, and storctl's output (golden files).
package operator

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// world is every row an operator could see change, as text: a preview must
// leave it byte for byte as it was.
func world(t *testing.T, r *rack.Rack) string {
	t.Helper()
	ctx := context.Background()
	var b strings.Builder
	add := func(m proto.Message, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		b.WriteString(prototext.Format(m))
	}
	add(r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000}))
	add(r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000}))
	add(r.Allocator.ListRegionSnapshots(ctx, &allocatorv1.ListRegionSnapshotsRequest{PageSize: 1000}))
	add(r.Volumes.ListTargets(ctx, &volumev1.ListTargetsRequest{PageSize: 1000}))
	add(r.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true}))
	add(r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000}))
	add(r.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{PageSize: 1000}))
	add(r.Replacement.ListLocks(ctx, &orchestratorv1.ListLocksRequest{PageSize: 1000}))
	add(r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000}))
	return b.String()
}

func preview(t *testing.T, r *rack.Rack, req *orchestratorv1.PreviewExpungeRequest) *orchestratorv1.PreviewExpungeResponse {
	t.Helper()
	before := world(t, r)
	resp, err := r.Replacement.PreviewExpunge(context.Background(), req)
	if err != nil {
		t.Fatalf("PreviewExpunge(%v): %v", req, err)
	}
	if after := world(t, r); after != before {
		t.Fatalf("PreviewExpunge changed something:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	return resp
}

// key names a replacement the way both the preview and a request do.
func roKey(kind orchestratorv1.ReplacementKind, target string) string {
	return kind.String() + " " + target
}

func previewKeys(p *orchestratorv1.PreviewExpungeResponse) []string {
	var out []string
	for _, t := range p.ReadOnlyTargets {
		out = append(out, roKey(t.Kind, t.TargetId))
	}
	for _, rw := range p.ReadWriteRegions {
		out = append(out, roKey(orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION, rw.RegionId))
	}
	sort.Strings(out)
	return out
}

func requestKeys(reps []*orchestratorv1.Replacement, skip map[string]bool) []string {
	var out []string
	for _, rep := range reps {
		if !skip[rep.ReplacementId] {
			out = append(out, roKey(rep.Kind, rep.OldTargetId))
		}
	}
	sort.Strings(out)
	return out
}

func requestIDs(t *testing.T, r *rack.Rack) map[string]bool {
	t.Helper()
	resp, err := r.Replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, rep := range resp.Replacements {
		out[rep.ReplacementId] = true
	}
	return out
}

func diskOfRegion(t *testing.T, r *rack.Rack, region string) string {
	t.Helper()
	resp, err := r.Allocator.GetRegion(context.Background(), &allocatorv1.GetRegionRequest{RegionId: region})
	if err != nil {
		t.Fatal(err)
	}
	return resp.Region.DiskId
}

// checkPreviewThenExpunge previews a disk, checks what the preview says on
// its own terms, expunges the disk, and checks that the requests the
// detectors then created are exactly the previewed targets and regions,
// each ending as the preview said (Complete, not DataLost).
func checkPreviewThenExpunge(t *testing.T, r *rack.Rack, disk string) []*orchestratorv1.Replacement {
	t.Helper()
	p := preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskId: disk})
	if !slices.Equal(p.DiskIds, []string{disk}) {
		t.Errorf("preview covers disks %v, want [%s]", p.DiskIds, disk)
	}
	if p.DataLoss || !p.CapacityOk {
		t.Errorf("preview: data_loss=%v capacity_ok=%v (%s), want no loss and room", p.DataLoss, p.CapacityOk, p.CapacityDetail)
	}
	for _, tg := range p.ReadOnlyTargets {
		if tg.DiskId != disk {
			t.Errorf("read-only target %s on disk %s, previewing %s", tg.TargetId, tg.DiskId, disk)
		}
		if tg.Gone {
			continue
		}
		if tg.CloneSourceTargetId == "" || tg.CloneSourceDiskId == disk || tg.DataLoss {
			t.Errorf("read-only target %s: clone source %q on disk %q, data_loss=%v", tg.TargetId, tg.CloneSourceTargetId, tg.CloneSourceDiskId, tg.DataLoss)
		}
		if tg.NewRegionDiskId == "" || tg.NewRegionDiskId == disk {
			t.Errorf("read-only target %s: replacement placed on disk %q", tg.TargetId, tg.NewRegionDiskId)
		}
	}
	for _, rw := range p.ReadWriteRegions {
		if rw.DiskId != disk || rw.DataLoss || len(rw.OtherMembers) != 2 || rw.NewRegionDiskId == disk {
			t.Errorf("rw region preview %v", rw)
		}
	}
	existing := requestIDs(t, r)
	r.Expunge(t, disk)
	want := previewKeys(p)
	// The detectors run after Expunge returns, and a request waits for its
	// volume's lock: wait until the new requests are the previewed ones and
	// every one is terminal (a missing or extra request times out here,
	// showing both lists).
	var reps []*orchestratorv1.Replacement
	harness.Eventually(t, 2*time.Minute, "the previewed requests terminal", func() error {
		resp, err := r.Replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if got := requestKeys(resp.Replacements, existing); !slices.Equal(got, want) {
			return fmt.Errorf("requests created by the expunge:\n  %s\npreviewed:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
		for _, rep := range resp.Replacements {
			if !rack.Terminal(rep) {
				return fmt.Errorf("request %s for %s is %v%v", rep.ReplacementId, rep.OldTargetId, rep.ReadOnlyState, rep.RegionState)
			}
		}
		reps = resp.Replacements
		return nil
	})
	for _, rep := range reps {
		if !existing[rep.ReplacementId] && rep.ReadOnlyState == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
			t.Errorf("request %s for %s ended DataLost; the preview said no loss", rep.ReplacementId, rep.OldTargetId)
		}
	}
	r.Invariants(t)
	r.Validate(t)
	return reps
}

// TestPreviewAgreesWithExpunge previews the disk of one region snapshot
// (it also holds the disk volume's rw region), expunges it, and compares;
// then does the same for the disk of the read-only region that replaced
// the region snapshot.
func TestPreviewAgreesWithExpunge(t *testing.T) {
	r := rack.Start(t, 5, 2, stack.Config{})
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	r.Clone(t, snap)
	r.Clone(t, snap)
	rs := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
	if len(rs) != 3 {
		t.Fatalf("snapshot has %d region snapshots", len(rs))
	}
	victim := r.DiskOf(t, rs[0].DatasetId)

	p := preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskId: victim})
	var found bool
	for _, tg := range p.ReadOnlyTargets {
		if tg.TargetId == rs[0].TargetId {
			found = true
			if tg.ReferencingVolumes != 3 || tg.SnapshotId != snap || tg.Kind != orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT {
				t.Errorf("region snapshot preview %v: want 3 referencing volumes (snapshot and two clones) of snapshot %s", tg, snap)
			}
			if tg.CloneSourceTargetId != rs[1].TargetId && tg.CloneSourceTargetId != rs[2].TargetId {
				t.Errorf("clone source %s is not another region snapshot of %s", tg.CloneSourceTargetId, snap)
			}
		}
	}
	if !found {
		t.Fatalf("preview of disk %s lacks region snapshot %s: %v", victim, rs[0].TargetId, p)
	}
	diskRW := r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION)
	found = false
	for _, rw := range p.ReadWriteRegions {
		for _, tg := range diskRW {
			if rw.RegionId == tg.TargetId && rw.VolumeId == disk {
				found = true
			}
		}
	}
	if !found {
		t.Errorf("preview of disk %s lacks the disk volume's rw region there: %v", victim, p.ReadWriteRegions)
	}

	reps := checkPreviewThenExpunge(t, r, victim)
	var newRegion string
	for _, rep := range reps {
		if rep.OldTargetId == rs[0].TargetId {
			newRegion = rep.NewRegionId
		}
	}
	if newRegion == "" {
		t.Fatalf("no request replaced %s", rs[0].TargetId)
	}
	// Second round: the read-only region that now holds the data.
	second := diskOfRegion(t, r, newRegion)
	p2 := preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskId: second})
	if !slices.Contains(previewKeys(p2), roKey(orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_ONLY_REGION, newRegion)) {
		t.Fatalf("preview of disk %s lacks read-only region %s: %v", second, newRegion, p2)
	}
	checkPreviewThenExpunge(t, r, second)
	r.NoDataLoss(t)
}

// TestPreviewSled previews a whole sled: every in-service disk of it, and
// the same targets as previewing each disk.
func TestPreviewSled(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{})
	disk := r.CreateDisk(t)
	r.Snapshot(t, disk)
	ctx := context.Background()
	disks, err := r.Allocator.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	sled := disks.Disks[0].SledId
	var onSled, want []string
	for _, d := range disks.Disks {
		if d.SledId == sled {
			onSled = append(onSled, d.DiskId)
			want = append(want, previewKeys(preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskId: d.DiskId}))...)
		}
	}
	sort.Strings(onSled)
	sort.Strings(want)
	p := preview(t, r, &orchestratorv1.PreviewExpungeRequest{SledId: sled})
	if !slices.Equal(p.DiskIds, onSled) {
		t.Errorf("sled preview covers %v, want %v", p.DiskIds, onSled)
	}
	if got := previewKeys(p); !slices.Equal(got, want) {
		t.Errorf("sled preview %v, per-disk previews %v", got, want)
	}
}

// TestPreviewDataLoss expunges the disks holding a snapshot's copies one by
// one, without letting any replacement run, previewing each first: only
// the last one would lose data, and once expunged its request ends
// DataLost. Bad input is refused without changing anything.
func TestPreviewDataLoss(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	rs := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
	if len(rs) != 3 {
		t.Fatalf("snapshot has %d region snapshots", len(rs))
	}
	t.Run("bad input", func(t *testing.T) {
		before := world(t, r)
		for _, c := range []struct {
			req   *orchestratorv1.PreviewExpungeRequest
			code  codes.Code
			field string
		}{
			{&orchestratorv1.PreviewExpungeRequest{}, codes.InvalidArgument, "disk_id"},
			{&orchestratorv1.PreviewExpungeRequest{DiskId: "x", SledId: "y"}, codes.InvalidArgument, "disk_id"},
			{&orchestratorv1.PreviewExpungeRequest{DiskId: "not-a-uuid"}, codes.InvalidArgument, "disk_id"},
			{&orchestratorv1.PreviewExpungeRequest{SledId: "not-a-uuid"}, codes.InvalidArgument, "sled_id"},
			{&orchestratorv1.PreviewExpungeRequest{DiskId: "00000000-0000-0000-0000-000000000001"}, codes.NotFound, "disk_id"},
			{&orchestratorv1.PreviewExpungeRequest{SledId: "00000000-0000-0000-0000-000000000001"}, codes.NotFound, "sled_id"},
		} {
			_, err := r.Replacement.PreviewExpunge(ctx, c.req)
			if status.Code(err) != c.code || !strings.Contains(status.Convert(err).Message(), c.field) {
				t.Errorf("PreviewExpunge(%v) = %v, want %v naming %s", c.req, err, c.code, c.field)
			}
		}
		if after := world(t, r); after != before {
			t.Fatalf("refused previews changed something")
		}
	})

	for i, target := range rs {
		victim := r.DiskOf(t, target.DatasetId)
		p := preview(t, r, &orchestratorv1.PreviewExpungeRequest{DiskId: victim})
		last := i == len(rs)-1
		if p.DataLoss != last {
			t.Fatalf("preview of copy %d's disk: data_loss=%v, want %v: %v", i, p.DataLoss, last, p)
		}
		var ro *orchestratorv1.ReadOnlyTargetPreview
		for _, tg := range p.ReadOnlyTargets {
			if tg.TargetId == target.TargetId {
				ro = tg
			}
		}
		if ro == nil || ro.DataLoss != last || (ro.CloneSourceTargetId == "") != last {
			t.Fatalf("preview of region snapshot %s (copy %d): %v", target.TargetId, i, ro)
		}
		if len(p.ReadWriteRegions) != 1 || p.ReadWriteRegions[0].VolumeId != disk || p.ReadWriteRegions[0].DataLoss != last {
			t.Fatalf("preview of the disk volume's rw region (copy %d): %v", i, p.ReadWriteRegions)
		}
		if !last {
			// Expunged behind the detectors' back (their period is an
			// hour here), so no replacement makes a new copy.
			if _, err := r.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: victim}); err != nil {
				t.Fatal(err)
			}
			_, err := r.Replacement.PreviewExpunge(ctx, &orchestratorv1.PreviewExpungeRequest{DiskId: victim})
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("preview of expunged disk %s: %v, want FailedPrecondition", victim, err)
			}
			continue
		}
		r.Expunge(t, victim)
	}
	// Every copy is gone: each region snapshot's request ends DataLost.
	harness.Eventually(t, time.Minute, "read-only requests DataLost", func() error {
		resp, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{
			PageSize: 1000, Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT,
		})
		if err != nil {
			return err
		}
		lost := 0
		for _, rep := range resp.Replacements {
			if rep.ReadOnlyState == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
				lost++
			}
		}
		if lost != len(rs) {
			return fmt.Errorf("%d of %d requests DataLost: %v", lost, len(rs), resp.Replacements)
		}
		return nil
	})
}
