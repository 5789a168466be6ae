package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/pgtest"
	"storagecp.dev/volume/migrations"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "volume", Migrations: migrations.FS})
}

func newServer(t *testing.T) *Server {
	return New(pgtest.NewPool(t, "volume"), slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("want %s, got %v", code, err)
	}
}

const secretKey = "c2VjcmV0LWtleS1ub3QtdG8tbGVhaw=="

func regionPB(readOnly bool, targets ...string) *commonv1.VolumeConstructionRequest {
	key := secretKey
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
		BlockSize: 512, BlocksPerExtent: 64, ExtentCount: 8, Gen: 1,
		Opts: &commonv1.CrucibleOpts{Id: uuid.NewString(), Target: targets, Key: &key, ReadOnly: readOnly}}}}
}

func volumePB(rop *commonv1.VolumeConstructionRequest, subs ...*commonv1.VolumeConstructionRequest) *commonv1.VolumeConstructionRequest {
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
		Id: uuid.NewString(), BlockSize: 512, SubVolumes: subs, ReadOnlyParent: rop}}}
}

// registerActive registers and activates targets at fresh addresses.
func registerActive(t *testing.T, s *Server, regs ...*volumev1.TargetRegistration) []*commonv1.Target {
	t.Helper()
	ctx := context.Background()
	r, err := s.RegisterTargets(ctx, &volumev1.RegisterTargetsRequest{Targets: regs})
	if err != nil {
		t.Fatal(err)
	}
	var acts []*volumev1.TargetActivation
	for _, tg := range r.Targets {
		u := uuid.New()
		acts = append(acts, &volumev1.TargetActivation{TargetId: tg.TargetId, DatasetId: uuid.NewString(),
			Address: fmt.Sprintf("[fd00:1122:%x:%x::1]:%d", u[0], u[1], 19000+int(u[2]))})
	}
	a, err := s.ActivateTargets(ctx, &volumev1.ActivateTargetsRequest{Targets: acts})
	if err != nil {
		t.Fatal(err)
	}
	return a.Targets
}

func TestEndToEndThroughTheService(t *testing.T) {
	ctx := context.Background()
	s := newServer(t)
	diskID := uuid.NewString()
	rw := registerActive(t, s,
		&volumev1.TargetRegistration{Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION, RegionId: uuid.NewString(), OwnerVolumeId: diskID},
		&volumev1.TargetRegistration{Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION, RegionId: uuid.NewString(), OwnerVolumeId: diskID},
		&volumev1.TargetRegistration{Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION, RegionId: uuid.NewString(), OwnerVolumeId: diskID})
	var addrs []string
	for _, tg := range rw {
		addrs = append(addrs, tg.Address)
	}
	cr, err := s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: diskID, Vcr: volumePB(nil, regionPB(false, addrs...))})
	if err != nil || !cr.Created || len(cr.Volume.Targets) != 3 {
		t.Fatalf("%v %v", cr, err)
	}
	// Redacted by default, full on request.
	if strings.Contains(cr.String(), secretKey) {
		t.Fatal("CreateVolume response carries the key")
	}
	g, err := s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: diskID})
	if err != nil || strings.Contains(g.String(), secretKey) {
		t.Fatalf("redacted view: %v", err)
	}
	if _, err := s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: diskID, View: volumev1.VolumeView_VOLUME_VIEW_FULL}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "view") {
		t.Fatalf("GetVolume with the full view: %v, want InvalidArgument naming view (keys have their own method)", err)
	}
	k, err := s.GetVolumeWithKeys(ctx, &volumev1.GetVolumeWithKeysRequest{VolumeId: diskID})
	if err != nil || !strings.Contains(k.String(), secretKey) {
		t.Fatalf("GetVolumeWithKeys lacks the key: %v", err)
	}
	// Snapshot through snapshot_of.
	snapID := uuid.NewString()
	var snapRegs []*volumev1.TargetRegistration
	for _, tg := range rw {
		snapRegs = append(snapRegs, &volumev1.TargetRegistration{Kind: commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT, RegionId: tg.RegionId, SnapshotId: snapID})
	}
	snaps := registerActive(t, s, snapRegs...)
	m := map[string]string{}
	for i := range rw {
		m[rw[i].Address] = snaps[i].Address
	}
	if _, err := s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: snapID, SnapshotOf: &volumev1.SnapshotOf{SourceVolumeId: diskID, TargetMap: m}}); err != nil {
		t.Fatal(err)
	}
	co, err := s.CheckoutVolume(ctx, &volumev1.CheckoutVolumeRequest{VolumeId: snapID, Reason: volumev1.CheckoutReason_CHECKOUT_REASON_READ_ONLY_COPY, RandomizeIds: true})
	if err != nil || !strings.Contains(co.String(), secretKey) {
		t.Fatalf("checkout must return the full VCR: %v", err)
	}
	// Delete the disk: regions are pinned by the snapshots.
	sd, err := s.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: diskID})
	if err != nil || len(sd.RegionIds) != 0 {
		t.Fatalf("%v %v", sd, err)
	}
	hd, err := s.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: diskID})
	if err != nil || hd.Outcome != volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_KEPT || len(hd.RemainingRegionIds) != 3 {
		t.Fatalf("%v %v", hd, err)
	}
	sd, err = s.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: snapID})
	if err != nil || len(sd.RegionSnapshots) != 3 || sd.RegionSnapshots[0].TargetId != snaps[0].TargetId {
		t.Fatalf("%v %v", sd, err)
	}
	gt, err := s.GetTarget(ctx, &volumev1.GetTargetRequest{TargetId: snaps[0].TargetId})
	if err != nil || gt.Target.State != commonv1.TargetState_TARGET_STATE_DELETING {
		t.Fatalf("%v %v", gt, err)
	}
	var ids []string
	for _, rs := range sd.RegionSnapshots {
		ids = append(ids, rs.TargetId)
	}
	if _, err := s.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: ids}); err != nil {
		t.Fatal(err)
	}
	fd, err := s.FindDeletedVolumeRegions(ctx, &volumev1.FindDeletedVolumeRegionsRequest{})
	if err != nil || len(fd.RegionIds) != 3 || len(fd.VolumeIds) != 1 || fd.VolumeIds[0] != diskID {
		t.Fatalf("%v %v", fd, err)
	}
	ci, err := s.CheckInvariants(ctx, &volumev1.CheckInvariantsRequest{})
	if err != nil || len(ci.Violations) != 0 {
		t.Fatalf("%v %v", ci, err)
	}
}

func TestErrorCodes(t *testing.T) {
	ctx := context.Background()
	s := newServer(t)
	_, err := s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: "disk-1", Vcr: volumePB(nil)})
	wantCode(t, err, codes.InvalidArgument)
	bad := volumePB(volumePB(nil, regionPB(true, "[fd00::1]:1", "10.0.0.1:1")))
	_, err = s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(), Vcr: bad})
	wantCode(t, err, codes.InvalidArgument)
	if !strings.Contains(err.Error(), "vcr.volume.read_only_parent.volume.sub_volumes[0].region.opts.target[1]") || strings.Contains(err.Error(), secretKey) {
		t.Fatalf("message: %v", err)
	}
	_, err = s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(), Vcr: &commonv1.VolumeConstructionRequest{}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(), Vcr: volumePB(regionPB(true, "[fd00::1]:1"))})
	wantCode(t, err, codes.FailedPrecondition)
	if !strings.Contains(err.Error(), "[fd00::1]:1") {
		t.Fatalf("message must name the address: %v", err)
	}
	_, err = s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: uuid.NewString()})
	wantCode(t, err, codes.NotFound)
	_, err = s.CheckoutVolume(ctx, &volumev1.CheckoutVolumeRequest{VolumeId: uuid.NewString()})
	wantCode(t, err, codes.InvalidArgument)
	_, err = s.CheckoutVolume(ctx, &volumev1.CheckoutVolumeRequest{VolumeId: uuid.NewString(), Reason: volumev1.CheckoutReason_CHECKOUT_REASON_CONSTRUCT})
	wantCode(t, err, codes.NotFound)
	_, err = s.ResolveAddress(ctx, &volumev1.ResolveAddressRequest{Address: "10.1.2.3:4"})
	wantCode(t, err, codes.InvalidArgument)
	_, err = s.ResolveAddress(ctx, &volumev1.ResolveAddressRequest{Address: "[fd00::9]:4"})
	wantCode(t, err, codes.NotFound)
	_, err = s.RegisterTargets(ctx, &volumev1.RegisterTargetsRequest{Targets: []*volumev1.TargetRegistration{{RegionId: uuid.NewString()}}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = s.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageToken: "x"})
	wantCode(t, err, codes.InvalidArgument)
	rr, err := s.ReplaceRegion(ctx, &volumev1.ReplaceRegionRequest{VolumeId: uuid.NewString(), OldRegionId: uuid.NewString(), NewRegionId: uuid.NewString(), StashVolumeId: uuid.NewString()})
	if err != nil || rr.Result != commonv1.VolumeReplaceResult_VOLUME_REPLACE_RESULT_EXISTING_VOLUME_HARD_DELETED {
		t.Fatalf("%v %v", rr, err)
	}
	hd, err := s.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: uuid.NewString()})
	if err != nil || hd.Outcome != volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED {
		t.Fatalf("%v %v", hd, err)
	}
}

func TestStaleEpochIsRefused(t *testing.T) {
	s := newServer(t)
	id := uuid.NewString()
	ctx5 := fence.NewContext(context.Background(), 5)
	if _, err := s.CreateVolume(ctx5, &volumev1.CreateVolumeRequest{VolumeId: id, Vcr: volumePB(nil)}); err != nil {
		t.Fatal(err)
	}
	ctx3 := fence.NewContext(context.Background(), 3)
	_, err := s.SoftDeleteVolume(ctx3, &volumev1.SoftDeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition)
	g, _ := s.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: id})
	if g.Volume.TimeDeleted != nil {
		t.Fatal("stale leader deleted the volume")
	}
}

// ReplaceReadOnlyTargets refuses malformed input as InvalidArgument naming
// the field, before anything is read or written.
func TestReplaceReadOnlyTargetsBadInput(t *testing.T) {
	s := newServer(t)
	ctx := context.Background()
	id := func() string { return uuid.NewString() }
	ok := func() *volumev1.ReplaceReadOnlyTargetsRequest {
		return &volumev1.ReplaceReadOnlyTargetsRequest{
			OldTargetId: id(), NewTargetId: id(), CreateStashes: true,
			Swaps: []*volumev1.ReadOnlySwap{{VolumeId: id(), StashVolumeId: id()}, {VolumeId: id(), StashVolumeId: id()}},
		}
	}
	for _, c := range []struct {
		field  string
		mutate func(*volumev1.ReplaceReadOnlyTargetsRequest)
	}{
		{"old_target_id", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.OldTargetId = "a" }},
		{"new_target_id", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.NewTargetId = "" }},
		{"new_target_id", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.NewTargetId = r.OldTargetId }},
		{"swaps", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.Swaps = nil }},
		{"swaps", func(r *volumev1.ReplaceReadOnlyTargetsRequest) {
			r.Swaps = make([]*volumev1.ReadOnlySwap, 1001)
		}},
		{"swaps[1].volume_id", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.Swaps[1].VolumeId = "v" }},
		{"swaps[0].stash_volume_id", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.Swaps[0].StashVolumeId = "" }},
		{"swaps[1].volume_id", func(r *volumev1.ReplaceReadOnlyTargetsRequest) { r.Swaps[1].VolumeId = r.Swaps[0].VolumeId }},
	} {
		r := ok()
		c.mutate(r)
		_, err := s.ReplaceReadOnlyTargets(ctx, r)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v, want InvalidArgument naming it", c.field, err)
		}
	}
}
