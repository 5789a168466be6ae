package orchestrator

import (
	"context"
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// counts is how many sagas, volumes (deleted ones included) and regions
// exist: a refused request changes none of them.
type counts struct{ sagas, volumes, regions int }

func countAll(t *testing.T, r *rack.Rack) counts {
	t.Helper()
	ctx := context.Background()
	sagas, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	vols, err := r.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000, IncludeDeleted: true})
	if err != nil {
		t.Fatal(err)
	}
	regions, err := r.Allocator.ListRegions(ctx, &allocatorv1.ListRegionsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return counts{len(sagas.Sagas), len(vols.Volumes), len(regions.Regions)}
}

// wantRefused expects err to carry code and a message naming field.
func wantRefused(t *testing.T, what string, err error, code codes.Code, field string) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != code || !strings.HasPrefix(st.Message(), field+": ") {
		t.Errorf("%s: %v, want %v naming %s", what, err, code, field)
	}
}

// Lifecycle requests that could never succeed are refused up front, naming
// the field, and start no saga: a malformed id, an unknown or deleted
// volume or snapshot, a snapshot of a snapshot, a clone of a disk, a new id
// that is taken. Deleting a volume that is already gone stays OK and starts
// nothing; deleting a kept one still runs a saga; a repeated request still
// gets its saga back after its volume was deleted.
func TestLifecycleRefusesWhatCannotSucceed(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	unknown := uuid.NewString()
	l := r.Lifecycle

	before := countAll(t, r)
	_, err := l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: "not-a-uuid", Wait: true})
	wantRefused(t, "snapshot of a malformed id", err, codes.InvalidArgument, "volume_id")
	_, err = l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, SnapshotId: "x", Wait: true})
	wantRefused(t, "snapshot with a malformed snapshot id", err, codes.InvalidArgument, "snapshot_id")
	_, err = l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: unknown, Wait: true})
	wantRefused(t, "snapshot of an unknown volume", err, codes.NotFound, "volume_id")
	_, err = l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: snap, Wait: true})
	wantRefused(t, "snapshot of a snapshot", err, codes.FailedPrecondition, "volume_id")
	_, err = l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, SnapshotId: disk, Wait: true})
	wantRefused(t, "snapshot under a taken id", err, codes.AlreadyExists, "snapshot_id")

	_, err = l.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: "not-a-uuid", Wait: true})
	wantRefused(t, "clone of a malformed id", err, codes.InvalidArgument, "snapshot_id")
	_, err = l.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: snap, VolumeId: "x", Wait: true})
	wantRefused(t, "clone with a malformed volume id", err, codes.InvalidArgument, "volume_id")
	_, err = l.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: unknown, Wait: true})
	wantRefused(t, "clone of an unknown snapshot", err, codes.NotFound, "snapshot_id")
	_, err = l.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: disk, Wait: true})
	wantRefused(t, "clone of a disk", err, codes.FailedPrecondition, "snapshot_id")
	_, err = l.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: snap, VolumeId: disk, Wait: true})
	wantRefused(t, "clone under a taken id", err, codes.AlreadyExists, "volume_id")

	_, err = l.CreateVolume(ctx, &orchestratorv1.CreateVolumeRequest{VolumeId: snap, SizeBytes: rack.GiB, Wait: true})
	wantRefused(t, "create under a taken id", err, codes.AlreadyExists, "volume_id")
	_, err = l.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: "not-a-uuid", Wait: true})
	wantRefused(t, "delete of a malformed id", err, codes.InvalidArgument, "volume_id")
	// A replacement's stash is its replacement's to delete.
	stash := uuid.NewString()
	if _, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
		VolumeId: stash, Purpose: volumev1.VolumePurpose_VOLUME_PURPOSE_STASH,
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{Id: stash, BlockSize: 512}}},
	}); err != nil {
		t.Fatal(err)
	}
	before = countAll(t, r)
	_, err = l.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: stash, Wait: true})
	wantRefused(t, "delete of a stash", err, codes.FailedPrecondition, "volume_id")
	// Deleting what is already gone is OK, and starts nothing.
	gone, err := l.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: unknown, Wait: true})
	if err != nil || !gone.HardDeleted || gone.Saga.GetOutcome() != orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED || gone.Saga.GetSagaId() != "" {
		t.Errorf("delete of an unknown volume: %v, %v", gone, err)
	}
	if after := countAll(t, r); after != before {
		t.Fatalf("refused requests changed things: %+v, then %+v", before, after)
	}

	// A deleted disk (kept: its snapshot pins its regions) cannot be
	// snapshotted; deleting it again still runs a saga.
	r.DeleteVolume(t, disk)
	_, err = l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: true})
	wantRefused(t, "snapshot of a deleted disk", err, codes.NotFound, "volume_id")
	again, err := l.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: disk, Wait: true})
	if err != nil || again.Saga.GetSagaId() == "" {
		t.Fatalf("second delete of a kept disk: %v, %v", again, err)
	}
	rack.WantSucceeded(t, "second delete", again.Saga)
	// A deleted snapshot cannot be cloned.
	r.DeleteVolume(t, snap)
	_, err = l.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: snap, Wait: true})
	wantRefused(t, "clone of a deleted snapshot", err, codes.NotFound, "snapshot_id")

	// A repeated request gets its saga back even though its disk is gone.
	other := r.CreateDisk(t)
	id := uuid.NewString()
	first, err := l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: other, SnapshotId: id, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	rack.WantSucceeded(t, "snapshot", first.Saga)
	r.DeleteVolume(t, other)
	repeat, err := l.SnapshotVolume(ctx, &orchestratorv1.SnapshotVolumeRequest{VolumeId: other, SnapshotId: id, Wait: true})
	if err != nil || repeat.Saga.GetSagaId() != first.Saga.SagaId || repeat.Saga.Outcome != orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED {
		t.Fatalf("repeated snapshot request: %v, %v (first saga %s)", repeat, err, first.Saga.SagaId)
	}
	r.DeleteVolume(t, id)
	// The stash made above is removed the way its replacement would.
	if _, err := r.Volumes.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: stash, HardDeleteIfNothingFreed: true}); err != nil {
		t.Fatal(err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.ExpectEmpty(t)
}
