package server

import (
	"context"
	"errors"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/ids"
)

type lifecycle struct {
	orchestratorv1.UnimplementedLifecycleServiceServer
	s *Server
}

// sagaNamespace derives lifecycle saga ids from (template, subject), so a
// repeated request starts nothing new and returns the same saga.
var sagaNamespace = uuid.MustParse("1f0b7f5e-3c1a-4d8e-b5a4-4b8a2f9e6c10")

func lifecycleSagaID(template string, subject uuid.UUID) uuid.UUID {
	return uuid.NewSHA1(sagaNamespace, []byte(template+"/"+subject.String()))
}

// start creates (or finds) the saga and, if asked, waits for it. A repeated
// request finds its saga and reports it, whatever became of the volumes
// since, without creating it again. check, when set, runs only for a
// request that starts a new saga, so a refused one starts nothing. (A
// volume deleted between the check and the saga's first read still fails
// the saga, as before: the check refuses the requests that could never
// succeed, it is not a lock.)
func (l *lifecycle) start(ctx context.Context, t *saga.Template, subject uuid.UUID, params any, wait bool, check func(context.Context) error) (*orchestratorv1.SagaResult, saga.Outcome, error) {
	sec, err := l.s.currentSEC()
	if err != nil {
		return nil, saga.Outcome{}, err
	}
	id := lifecycleSagaID(t.Name(), subject)
	exists, err := sec.Exists(ctx, id)
	if err != nil {
		return nil, saga.Outcome{}, l.s.status(ctx, err)
	}
	if !exists {
		if check != nil {
			if err := check(ctx); err != nil {
				return nil, saga.Outcome{}, err
			}
		}
		if _, err := sec.Create(ctx, t, params, saga.WithID(id), saga.WithSubject(subject.String())); err != nil {
			// Created meanwhile by the same request? Then report that saga.
			if _, gerr := l.s.viewer.Get(ctx, id); gerr != nil {
				return nil, saga.Outcome{}, l.s.status(ctx, err)
			}
		}
	}
	res := &orchestratorv1.SagaResult{SagaId: id.String(), Outcome: orchestratorv1.SagaOutcome_SAGA_OUTCOME_RUNNING}
	if !wait {
		return res, saga.Outcome{}, nil
	}
	o, err := sec.Wait(ctx, id)
	if err != nil {
		if errors.Is(err, saga.ErrAbandoned) {
			res.Outcome = orchestratorv1.SagaOutcome_SAGA_OUTCOME_ABANDONED
			return res, o, nil
		}
		return nil, o, waitStatus(err)
	}
	fillOutcome(res, o)
	// A saga that could not even take its repair lock did nothing: answer
	// ABORTED "volume repair lock" as the API promises, so callers retry.
	// (Contention is reported permanent on purpose; an ABORTED conflict
	// that merely outlasted the node's retries is not contention.)
	if o.Kind == saga.Failed && o.Err != nil && o.Err.Code == codes.Aborted && !o.Err.Retryable {
		return nil, o, status.Error(codes.Aborted, store.ErrLockHeld.Error())
	}
	return res, o, nil
}

// waitStatus is the answer to a caller whose saga did not finish while it
// waited: its own deadline or cancellation, or this orchestrator stopping
// to drive the saga (its term ended, or another took the saga over). The
// saga is not lost — the next leader resumes it — so the caller retries,
// and the retry, keyed by the same ids, answers with the saga's outcome:
// UNAVAILABLE, never UNKNOWN.
func waitStatus(err error) error {
	if errors.Is(err, saga.ErrShutdown) || errors.Is(err, saga.ErrNotOwner) {
		return status.Error(codes.Unavailable, "this orchestrator stopped driving the saga before it finished (its leadership ended); the next leader resumes it: retry")
	}
	return status.FromContextError(err).Err()
}

func fillOutcome(res *orchestratorv1.SagaResult, o saga.Outcome) {
	switch o.Kind {
	case saga.Succeeded:
		res.Outcome = orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED
	case saga.Failed:
		res.Outcome = orchestratorv1.SagaOutcome_SAGA_OUTCOME_FAILED
	case saga.Stuck:
		res.Outcome = orchestratorv1.SagaOutcome_SAGA_OUTCOME_STUCK
	}
	res.FailedNode = o.FailedNode
	if o.Err != nil {
		res.Error = o.Err.Message
	}
}

// optionalID parses an optional id, generating one when empty; given
// reports whether the caller chose it.
func optionalID(field, v string) (id uuid.UUID, given bool, err error) {
	if v == "" {
		return uuid.New(), false, nil
	}
	id, err = ids.Parse(field, v)
	return id, true, err
}

// lookupVolume asks the volume-service for a volume: nil (and no error)
// when it does not know the id, never created or hard-deleted; soft-deleted
// volumes are returned, with time_deleted set.
func (l *lifecycle) lookupVolume(ctx context.Context, id uuid.UUID) (*volumev1.Volume, error) {
	resp, err := l.s.deps.Volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: id.String()})
	if status.Code(err) == codes.NotFound {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return resp.GetVolume(), nil
}

// usableVolume returns the volume a request names, or NOT_FOUND naming the
// field when it does not exist or is deleted (a deleted volume can be
// neither snapshotted nor cloned from).
func (l *lifecycle) usableVolume(ctx context.Context, field, what string, id uuid.UUID) (*volumev1.Volume, error) {
	v, err := l.lookupVolume(ctx, id)
	switch {
	case err != nil:
		return nil, err
	case v == nil:
		return nil, status.Errorf(codes.NotFound, "%s: no %s %s", field, what, id)
	case v.GetTimeDeleted() != nil:
		return nil, status.Errorf(codes.NotFound, "%s: %s %s is deleted", field, what, id)
	}
	return v, nil
}

// freshVolumeID refuses a caller-chosen id for a new volume when a volume
// already has it: the saga would otherwise register and allocate regions
// for the existing volume, whose row the volume-service returns unchanged.
func (l *lifecycle) freshVolumeID(ctx context.Context, field string, id uuid.UUID, given bool) error {
	if !given {
		return nil
	}
	v, err := l.lookupVolume(ctx, id)
	if err != nil {
		return err
	}
	if v != nil {
		return status.Errorf(codes.AlreadyExists, "%s: volume %s already exists", field, id)
	}
	return nil
}

// hasRWRegions reports whether a volume names rw regions: a disk (or a
// clone) does, a snapshot never does.
func hasRWRegions(v *volumev1.Volume) bool {
	for _, t := range v.GetTargets() {
		if t.GetKind() == commonv1.TargetKind_TARGET_KIND_RW_REGION {
			return true
		}
	}
	return false
}

func (l *lifecycle) CreateVolume(ctx context.Context, req *orchestratorv1.CreateVolumeRequest) (*orchestratorv1.CreateVolumeResponse, error) {
	id, given, err := optionalID("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	bs := req.BlockSize
	if bs == 0 {
		bs = 512
	}
	g, err := sagadef.GeometryFor(req.SizeBytes, bs)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	var check func(context.Context) error
	if given {
		check = func(ctx context.Context) error { return l.freshVolumeID(ctx, "volume_id", id, given) }
	}
	res, _, err := l.start(ctx, sagadef.VolumeCreate, id, sagadef.RegionSetParams{VolumeID: id, Geometry: &g}, req.Wait, check)
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.CreateVolumeResponse{VolumeId: id.String(), Saga: res}, nil
}

func (l *lifecycle) SnapshotVolume(ctx context.Context, req *orchestratorv1.SnapshotVolumeRequest) (*orchestratorv1.SnapshotVolumeResponse, error) {
	disk, err := ids.Parse("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	snap, given, err := optionalID("snapshot_id", req.SnapshotId)
	if err != nil {
		return nil, err
	}
	check := func(ctx context.Context) error {
		v, err := l.usableVolume(ctx, "volume_id", "volume", disk)
		if err != nil {
			return err
		}
		if !hasRWRegions(v) {
			return status.Errorf(codes.FailedPrecondition, "volume_id: volume %s has no rw regions to snapshot (a snapshot cannot be snapshotted)", disk)
		}
		return l.freshVolumeID(ctx, "snapshot_id", snap, given)
	}
	res, _, err := l.start(ctx, sagadef.SnapshotCreate, snap, sagadef.SnapshotParams{DiskVolumeID: disk, SnapshotID: snap}, req.Wait, check)
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.SnapshotVolumeResponse{SnapshotId: snap.String(), Saga: res}, nil
}

func (l *lifecycle) CloneVolume(ctx context.Context, req *orchestratorv1.CloneVolumeRequest) (*orchestratorv1.CloneVolumeResponse, error) {
	snap, err := ids.Parse("snapshot_id", req.SnapshotId)
	if err != nil {
		return nil, err
	}
	id, given, err := optionalID("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	check := func(ctx context.Context) error {
		v, err := l.usableVolume(ctx, "snapshot_id", "snapshot", snap)
		if err != nil {
			return err
		}
		if hasRWRegions(v) {
			// The volume-service refuses a read-only copy of rw regions.
			return status.Errorf(codes.FailedPrecondition, "snapshot_id: volume %s is a disk, not a snapshot", snap)
		}
		return l.freshVolumeID(ctx, "volume_id", id, given)
	}
	res, _, err := l.start(ctx, sagadef.VolumeClone, id, sagadef.RegionSetParams{VolumeID: id, SnapshotID: &snap}, req.Wait, check)
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.CloneVolumeResponse{VolumeId: id.String(), Saga: res}, nil
}

// DeleteVolume starts a fresh delete saga for every volume that exists,
// soft-deleted ones included: deleting is safe to repeat, and a later delete
// may free what an earlier one had to keep. A volume the volume-service does
// not know (never created, or already hard-deleted) is already gone: that
// answers OK at once, hard-deleted, and starts no saga.
func (l *lifecycle) DeleteVolume(ctx context.Context, req *orchestratorv1.DeleteVolumeRequest) (*orchestratorv1.DeleteVolumeResponse, error) {
	id, err := ids.Parse("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	sec, err := l.s.currentSEC()
	if err != nil {
		return nil, err
	}
	v, err := l.lookupVolume(ctx, id)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return &orchestratorv1.DeleteVolumeResponse{
			Saga:        &orchestratorv1.SagaResult{Outcome: orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED},
			HardDeleted: true,
		}, nil
	}
	if p := v.GetPurpose(); p != volumev1.VolumePurpose_VOLUME_PURPOSE_DATA {
		// The volume-delete saga refuses it too (its soft delete names the
		// purpose it expects); refusing here starts no saga at all.
		return nil, status.Errorf(codes.FailedPrecondition, "volume_id: %s is a replacement's %s volume; its replacement deletes it",
			id, strings.ToLower(strings.TrimPrefix(p.String(), "VOLUME_PURPOSE_")))
	}
	sagaID, err := sec.Create(ctx, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: id}, saga.WithSubject(id.String()))
	if err != nil {
		return nil, l.s.status(ctx, err)
	}
	res := &orchestratorv1.SagaResult{SagaId: sagaID.String(), Outcome: orchestratorv1.SagaOutcome_SAGA_OUTCOME_RUNNING}
	out := &orchestratorv1.DeleteVolumeResponse{Saga: res}
	if !req.Wait {
		return out, nil
	}
	o, err := sec.Wait(ctx, sagaID)
	if err != nil {
		return nil, waitStatus(err)
	}
	fillOutcome(res, o)
	var dr sagadef.DeleteResult
	if o.Kind == saga.Succeeded && o.Decode(&dr) == nil {
		out.HardDeleted = dr.HardDeleted
	}
	return out, nil
}
