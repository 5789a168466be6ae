package server

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// GetVolumeStates answers, in the order asked and repeats included, live,
// soft-deleted and missing (never created or hard-deleted) volumes; bad
// input is InvalidArgument naming the field.
func TestGetVolumeStates(t *testing.T) {
	ctx := context.Background()
	s := newServer(t)
	mk := func() string {
		id := uuid.NewString()
		rw := registerActive(t, s, &volumev1.TargetRegistration{Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION, RegionId: uuid.NewString(), OwnerVolumeId: id})
		if _, err := s.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: id, Vcr: volumePB(nil, regionPB(false, rw[0].Address))}); err != nil {
			t.Fatal(err)
		}
		return id
	}
	live, soft, hard, never := mk(), mk(), mk(), uuid.NewString()
	for _, id := range []string{soft, hard} {
		if _, err := s.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	// A volume whose regions were never snapshotted is removed once they
	// are unregistered; its rw region is freed by the soft delete.
	g, err := s.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: hard})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.UnregisterTargets(ctx, &volumev1.UnregisterTargetsRequest{TargetIds: []string{g.Volume.Targets[0].TargetId}}); err != nil {
		t.Fatal(err)
	}
	if hd, err := s.HardDeleteVolume(ctx, &volumev1.HardDeleteVolumeRequest{VolumeId: hard}); err != nil || hd.Outcome != volumev1.HardDeleteOutcome_HARD_DELETE_OUTCOME_DELETED {
		t.Fatalf("hard delete: %v %v", hd, err)
	}

	ask := []string{soft, live, never, hard, live}
	resp, err := s.GetVolumeStates(ctx, &volumev1.GetVolumeStatesRequest{VolumeIds: ask})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.States) != len(ask) {
		t.Fatalf("%d states for %d ids", len(resp.States), len(ask))
	}
	for i, want := range []struct {
		found, deleted bool
	}{{true, true}, {true, false}, {false, false}, {false, false}, {true, false}} {
		st := resp.States[i]
		if st.VolumeId != ask[i] || st.Found != want.found || (st.TimeDeleted != nil) != want.deleted {
			t.Errorf("states[%d] = %v; want %s found=%v deleted=%v", i, st, ask[i], want.found, want.deleted)
		}
	}

	for _, c := range []struct {
		field string
		ids   []string
	}{
		{"volume_ids", nil},
		{"volume_ids", make([]string, 1001)},
		{"volume_ids[1]", []string{live, "not-a-uuid"}},
	} {
		_, err := s.GetVolumeStates(ctx, &volumev1.GetVolumeStatesRequest{VolumeIds: c.ids})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v, want InvalidArgument naming it", c.field, err)
		}
	}
}
