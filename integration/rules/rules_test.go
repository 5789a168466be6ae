// Package rules checks, over real processes, that every service applies
// the shared rules the same way: one target-address rule (platform/target),
// one VCR shape check (platform/vcr) and one id rule (platform/ids). Each
// address, VCR and id goes to RPCs of every service that takes one; each
// must give the same verdict: accepted (any answer but InvalidArgument: an
// unknown id is NotFound, say), or InvalidArgument naming the field. The
// orchestrator's RPCs take no address or VCR, only ids.
package rules

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

func region(targets ...string) *commonv1.VolumeConstructionRequest {
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
		BlockSize: 512, BlocksPerExtent: 64, ExtentCount: 8, Gen: 1,
		Opts: &commonv1.CrucibleOpts{Id: uuid.NewString(), Target: targets},
	}}}
}

func volume(subs ...*commonv1.VolumeConstructionRequest) *commonv1.VolumeConstructionRequest {
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
		Id: uuid.NewString(), BlockSize: 512, SubVolumes: subs,
	}}}
}

func verdict(err error) string {
	if status.Code(err) == codes.InvalidArgument {
		return "InvalidArgument"
	}
	return "accepted"
}

func TestOneVerdictPerAddressAndVCR(t *testing.T) {
	r := rack.Start(t, 1, 1, stack.Config{})
	data := allocatorv1.NewAgentDataServiceClient(harness.Dial(t, r.Stack, r.Stack.Addr(stack.Allocator)))
	ctx := context.Background()

	addressRPCs := map[string]func(a string) error{
		"allocator ProbeTargets": func(a string) error {
			_, err := r.Allocator.ProbeTargets(ctx, &allocatorv1.ProbeTargetsRequest{Addresses: []string{a}})
			return err
		},
		"allocator EnsureRegions clone_source_address": func(a string) error {
			_, err := r.Allocator.EnsureRegions(ctx, &allocatorv1.EnsureRegionsRequest{Regions: []*allocatorv1.RegionEnsure{{
				RegionId: uuid.NewString(), CloneSourceAddress: a,
			}}})
			return err
		},
		"allocator WriteRegions": func(a string) error {
			_, err := data.WriteRegions(ctx, &allocatorv1.WriteRegionsRequest{Addresses: []string{a}, WriteId: uuid.NewString()})
			return err
		},
		"allocator RepairRegionSet": func(a string) error {
			_, err := data.RepairRegionSet(ctx, &allocatorv1.RepairRegionSetRequest{Addresses: []string{a}})
			return err
		},
		"volume ResolveAddress": func(a string) error {
			_, err := r.Volumes.ResolveAddress(ctx, &volumev1.ResolveAddressRequest{Address: a})
			return err
		},
		"volume ActivateTargets": func(a string) error {
			_, err := r.Volumes.ActivateTargets(ctx, &volumev1.ActivateTargetsRequest{Targets: []*volumev1.TargetActivation{{
				TargetId: uuid.NewString(), DatasetId: uuid.NewString(), Address: a,
			}}})
			return err
		},
		"volume CreateVolume vcr target": func(a string) error {
			_, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(), Vcr: volume(region(a))})
			return err
		},
		"notifier ListRepairNotifications": func(a string) error {
			_, err := r.Notifier.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: a})
			return err
		},
		"notifier RepairStart": func(a string) error {
			_, err := r.Notifier.RepairStart(ctx, &notifierv1.RepairStartRequest{
				UpstairsId: uuid.NewString(), SessionId: uuid.NewString(), RepairId: uuid.NewString(),
				RepairType: notifierv1.RepairType_REPAIR_TYPE_LIVE, Time: timestamppb.Now(),
				Repairs: []*notifierv1.RepairedDownstairs{{TargetAddress: a}},
			})
			return err
		},
		"sim-upstairs Activate vcr target": func(a string) error {
			_, err := r.Sims[0].Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: uuid.NewString(), Vcr: volume(region(a))})
			return err
		},
	}
	addresses := []struct {
		addr string
		want string
	}{
		{"[fd00:1122:3344:101::1]:19000", "accepted"},
		{"[FD00:1122:3344:0101:0::2]:19000", "accepted"},
		{"[fd00::3]:65535", "accepted"},
		{"[::ffff:10.0.0.1]:19000", "InvalidArgument"},
		{"[fe80::1%eth0]:19000", "InvalidArgument"},
		{"[fd00::1]:0", "InvalidArgument"},
		{"10.0.0.1:19000", "InvalidArgument"},
		{"[fd00::1]:65536", "InvalidArgument"},
		{"fd00::1:19000", "InvalidArgument"},
		{"[fd00::1]", "InvalidArgument"},
		{"localhost:19000", "InvalidArgument"},
	}
	for _, a := range addresses {
		for name, call := range addressRPCs {
			err := call(a.addr)
			t.Logf("verdict %-45s %-34q %s", name, a.addr, verdict(err))
			if got := verdict(err); got != a.want {
				t.Errorf("%s(%q): %s (%v), want %s", name, a.addr, got, err, a.want)
			}
		}
	}

	vcrRPCs := map[string]func(v *commonv1.VolumeConstructionRequest) error{
		"volume CreateVolume": func(v *commonv1.VolumeConstructionRequest) error {
			_, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: uuid.NewString(), Vcr: v})
			return err
		},
		"sim-upstairs Activate": func(v *commonv1.VolumeConstructionRequest) error {
			_, err := r.Sims[0].Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: uuid.NewString(), Vcr: v})
			return err
		},
	}
	n := 0
	addr := func() string { n++; return fmt.Sprintf("[fd00:99::%x]:19000", n) }
	shapes := []struct {
		name string
		vcr  *commonv1.VolumeConstructionRequest
		want string
	}{
		{"volume of one region", volume(region(addr(), addr(), addr())), "accepted"},
		{"volume of two regions", volume(region(addr()), region(addr())), "accepted"},
		{"empty volume", volume(), "accepted"},
		{"missing", nil, "InvalidArgument"},
		{"top-level region", region(addr()), "InvalidArgument"},
		{"region without targets", volume(region()), "InvalidArgument"},
		{"empty sub-volume", volume(&commonv1.VolumeConstructionRequest{}), "InvalidArgument"},
		{"IPv4 target", volume(region("10.0.0.1:19000")), "InvalidArgument"},
		{"zoned target", volume(region("[fe80::1%eth0]:19000")), "InvalidArgument"},
	}
	for _, s := range shapes {
		for name, call := range vcrRPCs {
			err := call(s.vcr)
			t.Logf("verdict %-45s %-34s %s", name, s.name, verdict(err))
			if got := verdict(err); got != s.want {
				t.Errorf("%s(%s): %s (%v), want %s", name, s.name, got, err, s.want)
			}
		}
	}

	idRPCs := map[string]struct {
		field string
		call  func(id string) error
	}{
		"volume GetVolume": {"volume_id", func(id string) error {
			_, err := r.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: id})
			return err
		}},
		"allocator GetRegion": {"region_id", func(id string) error {
			_, err := r.Allocator.GetRegion(ctx, &allocatorv1.GetRegionRequest{RegionId: id})
			return err
		}},
		"notifier DetachUpstairs": {"attachment_id", func(id string) error {
			_, err := r.Notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: id})
			return err
		}},
		"orchestrator GetReplacement": {"replacement_id", func(id string) error {
			_, err := r.Replacement.GetReplacement(ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id})
			return err
		}},
		"orchestrator GetSaga": {"saga_id", func(id string) error {
			_, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: id})
			return err
		}},
	}
	some := uuid.New()
	idCases := []struct {
		id   string
		want string
	}{
		{some.String(), "accepted"},
		{strings.ToUpper(some.String()), "accepted"},
		{"", "InvalidArgument"},
		{"not-a-uuid", "InvalidArgument"},
		{uuid.Nil.String(), "InvalidArgument"},
		{some.String() + "0", "InvalidArgument"},
	}
	for _, c := range idCases {
		for name, rpc := range idRPCs {
			err := rpc.call(c.id)
			t.Logf("verdict %-45s %-40q %s", name, c.id, verdict(err))
			if got := verdict(err); got != c.want {
				t.Errorf("%s(%q): %s (%v), want %s", name, c.id, got, err, c.want)
			} else if got == "InvalidArgument" && !strings.HasPrefix(status.Convert(err).Message(), rpc.field+": ") {
				t.Errorf("%s(%q): %q does not name the field %s", name, c.id, status.Convert(err).Message(), rpc.field)
			}
		}
	}
}
