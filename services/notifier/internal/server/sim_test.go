package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
)

// testVCR builds a disk-like VCR: one rw region set at gen, and a read-only
// parent with one read-only region set (omitted when ro is empty).
func testVCR(gen uint64, rw, ro []string) *commonv1.VolumeConstructionRequest {
	key := "c2VjcmV0LWtleS1kby1ub3QtbG9n"
	v := &commonv1.VcrVolume{
		Id: "7f7c8d84-2c51-4b8e-9a0e-6d9f9a3c2b10", BlockSize: 512,
		SubVolumes: []*commonv1.VolumeConstructionRequest{{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
			BlockSize: 512, BlocksPerExtent: 131072, ExtentCount: 16, Gen: gen,
			Opts: &commonv1.CrucibleOpts{Id: "0b8c2f43-8d4e-4d43-9a57-2b1f3c4d5e6f", Target: rw, Key: &key},
		}}}},
	}
	if len(ro) > 0 {
		v.ReadOnlyParent = &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{
			Id: "5d1e4b3a-6c2f-4e8d-9b7a-1f0e2d3c4b5a", BlockSize: 512,
			SubVolumes: []*commonv1.VolumeConstructionRequest{{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
				BlockSize: 512, BlocksPerExtent: 131072, ExtentCount: 16, Gen: 1,
				Opts: &commonv1.CrucibleOpts{Id: "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", Target: ro, ReadOnly: true},
			}}}},
		}}}
	}
	return &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: v}}
}

func addrs(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("[fd00:1122:3344:%s::%x]:19000", prefix, i+1)
	}
	return out
}

func TestSimReplaceVolumeAnswers(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	// A repair long enough to ask again while it runs, even on a busy machine.
	s := startSim(t, n.addr, "", "--repair-delay", "2s")
	ctx := ctxT(t)
	rw, ro := addrs("101", 3), addrs("201", 3)
	vol := uuid.NewString()
	if _, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(3, rw, ro), UpstairsId: uuid.NewString()}); err != nil {
		t.Fatal(err)
	}
	replace := func(v *commonv1.VolumeConstructionRequest) (upstairsv1.ReplaceResult, string) {
		t.Helper()
		resp, err := s.up.ReplaceVolume(ctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: vol, Vcr: v})
		if err != nil {
			t.Fatal(err)
		}
		return resp.GetResult(), resp.GetDetail()
	}
	with := func(list []string, i int, addr string) []string {
		out := append([]string(nil), list...)
		out[i] = addr
		return out
	}
	const (
		started    = upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED
		startedAlr = upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED_ALREADY
		completed  = upstairsv1.ReplaceResult_REPLACE_RESULT_COMPLETED_ALREADY
		matches    = upstairsv1.ReplaceResult_REPLACE_RESULT_VCR_MATCHES
		missing    = upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING
	)
	newRO := "[fd00:1122:3344:299::1]:19000"
	roSwapped := testVCR(4, rw, with(ro, 1, newRO))
	steps := []struct {
		name string
		vcr  *commonv1.VolumeConstructionRequest
		want upstairsv1.ReplaceResult
	}{
		{"identical VCR", testVCR(3, rw, ro), matches},
		{"only generations rose (a later checkout)", testVCR(4, rw, ro), matches},
		{"generation went backwards", testVCR(2, rw, ro), missing},
		{"two read-only targets differ", testVCR(4, rw, with(with(ro, 0, newRO), 2, "[fd00:1122:3344:299::2]:19000")), missing},
		{"rw target differs without a higher generation", testVCR(3, with(rw, 0, "[fd00:1122:3344:199::1]:19000"), ro), missing},
		{"read-only parent removed", testVCR(4, rw, nil), missing},
		{"one read-only target differs", roSwapped, started},
		{"repeat after the switch", roSwapped, completed},
		{"the old VCR now differs in the switched target", testVCR(5, rw, ro), started},
	}
	for _, st := range steps {
		got, detail := replace(st.vcr)
		if got != st.want {
			t.Fatalf("%s: got %v (%s), want %v", st.name, got, detail, st.want)
		}
		if got == missing && detail == "" {
			t.Fatalf("%s: MISSING without a detail", st.name)
		}
	}

	// A rw replacement with a higher generation starts a live repair:
	// STARTED_ALREADY while it runs, COMPLETED_ALREADY after.
	newRW := "[fd00:1122:3344:199::7]:19000"
	rwSwapped := testVCR(6, with(rw, 2, newRW), ro)
	if got, d := replace(rwSwapped); got != started {
		t.Fatalf("rw replacement: %v %s", got, d)
	}
	if got, d := replace(rwSwapped); got != startedAlr {
		t.Fatalf("rw replacement repeated during repair: %v %s", got, d)
	}
	// Still in flight when asked with a later generation of the same VCR.
	if got, d := replace(testVCR(7, with(rw, 2, newRW), ro)); got != startedAlr {
		t.Fatalf("rw replacement asked again at a higher generation during repair: %v %s", got, d)
	}
	st, err := s.up.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	if !st.GetStatus().GetRepairing() {
		t.Fatal("status does not show the live repair")
	}
	eventually(t, 10*time.Second, "live repair finishes", func() error {
		if got, _ := replace(rwSwapped); got != completed {
			return fmt.Errorf("answer %v", got)
		}
		return nil
	})
	// The repair was reported to the notifier under the new address.
	eventually(t, 10*time.Second, "live repair reported", func() error {
		resp, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: newRW})
		if err != nil {
			return err
		}
		var types []string
		for _, r := range resp.GetNotifications() {
			if r.GetRepairType() != notifierv1.RepairType_REPAIR_TYPE_LIVE {
				return fmt.Errorf("repair type %v", r.GetRepairType())
			}
			types = append(types, r.GetNotificationType().String())
		}
		if len(types) != 2 || types[1] != notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_SUCCEEDED.String() {
			return fmt.Errorf("rows %v", types)
		}
		return nil
	})
	st, err = s.up.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	if st.GetStatus().GetGeneration() != 6 || st.GetStatus().GetReplaceCalls() == 0 {
		t.Fatalf("status %v", st.GetStatus())
	}
	for _, d := range st.GetStatus().GetDownstairs() {
		if d.GetAddress() == rw[2] {
			t.Fatal("replaced rw target still listed")
		}
	}

	if _, err := s.up.ReplaceVolume(ctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: uuid.NewString(), Vcr: rwSwapped}); status.Code(err) != codes.NotFound {
		t.Fatalf("replace on an inactive volume: %v", err)
	}
}

func TestSimActivation(t *testing.T) {
	t.Parallel()
	n := startNotifier(t, freeAddr(t))
	s := startSim(t, n.addr, "")
	ctx := ctxT(t)
	rw := addrs("102", 3)
	vol, upstairs := uuid.NewString(), uuid.NewString()
	act, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(5, rw, nil), UpstairsId: upstairs})
	if err != nil {
		t.Fatal(err)
	}
	if !act.GetStatus().GetRepairing() || act.GetStatus().GetSeenActive() {
		t.Fatalf("a rw activation reconciles first: %v", act.GetStatus())
	}
	eventually(t, 10*time.Second, "reconciliation ends, seen active", func() error {
		st, err := s.up.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol})
		if err != nil {
			return err
		}
		if !st.GetStatus().GetSeenActive() || st.GetStatus().GetRepairing() {
			return fmt.Errorf("status %v", st.GetStatus())
		}
		return nil
	})
	eventually(t, 10*time.Second, "reconciliation reported for every rw target", func() error {
		for _, a := range rw {
			resp, err := n.client.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: a})
			if err != nil {
				return err
			}
			if len(resp.GetNotifications()) != 2 || resp.GetNotifications()[0].GetUpstairsId() != upstairs ||
				resp.GetNotifications()[0].GetRepairType() != notifierv1.RepairType_REPAIR_TYPE_RECONCILIATION {
				return fmt.Errorf("%s: %v", a, resp.GetNotifications())
			}
		}
		return nil
	})

	if _, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(5, rw, nil)}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("re-activation at the same generation: %v", err)
	}
	if _, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: testVCR(6, rw, nil), ReadOnly: true}); err != nil {
		t.Fatalf("re-activation at a higher generation: %v", err)
	}
	list, err := s.up.ListVolumes(ctx, &upstairsv1.ListVolumesRequest{})
	if err != nil || len(list.GetVolumes()) != 1 || list.GetVolumes()[0].GetGeneration() != 6 {
		t.Fatalf("list %v %v", list, err)
	}

	bad := []*upstairsv1.ActivateRequest{
		{VolumeId: "", Vcr: testVCR(1, rw, nil)},
		{VolumeId: uuid.NewString()},
		{VolumeId: uuid.NewString(), Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{Opts: &commonv1.CrucibleOpts{Target: rw}}}}},
		{VolumeId: uuid.NewString(), Vcr: testVCR(1, nil, nil)},
	}
	for i, r := range bad {
		if _, err := s.up.Activate(ctx, r); status.Code(err) != codes.InvalidArgument {
			t.Errorf("bad activation %d: %v", i, err)
		}
	}

	if _, err := s.up.Deactivate(ctx, &upstairsv1.DeactivateRequest{VolumeId: vol}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.up.Deactivate(ctx, &upstairsv1.DeactivateRequest{VolumeId: vol}); err != nil {
		t.Fatalf("deactivate twice: %v", err)
	}
	if _, err := s.up.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol}); status.Code(err) != codes.NotFound {
		t.Fatalf("status after deactivate: %v", err)
	}
}

func TestSimFaults(t *testing.T) {
	t.Parallel()
	s := startSim(t, freeAddr(t), "")
	ctx := ctxT(t)
	vol := uuid.NewString()
	v := testVCR(1, addrs("103", 3), nil)
	if _, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: v, ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.faults.InjectUpstairsFault(ctx, &upstairsv1.InjectUpstairsFaultRequest{Method: "ReplaceVolume", Count: 2, Fail: true}); err != nil {
		t.Fatal(err)
	}
	// Another method is not affected.
	if _, err := s.up.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol}); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := s.up.ReplaceVolume(ctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: vol, Vcr: v}); status.Code(err) != codes.Internal {
			t.Fatalf("faulted call %d: %v", i, err)
		}
	}
	if _, err := s.up.ReplaceVolume(ctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: vol, Vcr: v}); err != nil {
		t.Fatalf("after the faults: %v", err)
	}
	// A delay on any method.
	if _, err := s.faults.InjectUpstairsFault(ctx, &upstairsv1.InjectUpstairsFaultRequest{Count: 1, Delay: durationpb.New(300 * time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := s.up.ListVolumes(ctx, &upstairsv1.ListVolumesRequest{}); err != nil {
		t.Fatal(err)
	}
	if time.Since(start) < 300*time.Millisecond {
		t.Fatal("delay fault not applied")
	}
	for _, bad := range []*upstairsv1.InjectUpstairsFaultRequest{{Count: 0, Fail: true}, {Count: 1}, {Count: 1, Fail: true, Method: "Nope"}} {
		if _, err := s.faults.InjectUpstairsFault(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("bad fault %v: %v", bad, err)
		}
	}
	if _, err := s.faults.ForgetAll(ctx, &upstairsv1.ForgetAllRequest{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.up.GetVolumeStatus(ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol}); status.Code(err) != codes.NotFound {
		t.Fatalf("after ForgetAll: %v", err)
	}
	// A forgotten generation can be activated again, as after a restart.
	if _, err := s.up.Activate(ctx, &upstairsv1.ActivateRequest{VolumeId: vol, Vcr: proto.Clone(v).(*commonv1.VolumeConstructionRequest), ReadOnly: true}); err != nil {
		t.Fatal(err)
	}
}
