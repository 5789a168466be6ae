package server

import (
	"context"
	"errors"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/datastore"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagas"
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

// start creates (or finds) the saga and, if asked, waits for it.
func (l *lifecycle) start(ctx context.Context, t *saga.Template, subject uuid.UUID, params any, wait bool) (*orchestratorv1.SagaResult, saga.Outcome, error) {
	sec, err := l.s.currentSEC()
	if err != nil {
		return nil, saga.Outcome{}, err
	}
	id := lifecycleSagaID(t.Name(), subject)
	if _, err := sec.Create(ctx, t, params, saga.WithID(id), saga.WithSubject(subject.String())); err != nil {
		// Created before (a repeated request)? Then report that saga.
		if _, gerr := l.s.viewer.Get(ctx, id); gerr != nil {
			return nil, saga.Outcome{}, grpcError(err)
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
		return nil, o, status.FromContextError(err).Err()
	}
	fillOutcome(res, o)
	// A saga that could not even take its repair lock did nothing: answer
	// ABORTED "volume repair lock" as the API promises, so callers retry.
	if o.Kind == saga.Failed && o.Err != nil && o.Err.Code == codes.Aborted {
		return nil, o, status.Error(codes.Aborted, datastore.ErrLockHeld.Error())
	}
	return res, o, nil
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

// optionalID parses an optional id, generating one when empty.
func optionalID(field, v string) (uuid.UUID, error) {
	if v == "" {
		return uuid.New(), nil
	}
	return parseUUID(field, v)
}

func (l *lifecycle) CreateVolume(ctx context.Context, req *orchestratorv1.CreateVolumeRequest) (*orchestratorv1.CreateVolumeResponse, error) {
	id, err := optionalID("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	bs := req.BlockSize
	if bs == 0 {
		bs = 512
	}
	g, err := sagas.GeometryFor(req.SizeBytes, bs)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	res, _, err := l.start(ctx, sagas.VolumeCreate, id, sagas.RegionSetParams{VolumeID: id, Geometry: &g}, req.Wait)
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.CreateVolumeResponse{VolumeId: id.String(), Saga: res}, nil
}

func (l *lifecycle) SnapshotVolume(ctx context.Context, req *orchestratorv1.SnapshotVolumeRequest) (*orchestratorv1.SnapshotVolumeResponse, error) {
	disk, err := parseUUID("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	snap, err := optionalID("snapshot_id", req.SnapshotId)
	if err != nil {
		return nil, err
	}
	res, _, err := l.start(ctx, sagas.SnapshotCreate, snap, sagas.SnapshotParams{DiskVolumeID: disk, SnapshotID: snap}, req.Wait)
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.SnapshotVolumeResponse{SnapshotId: snap.String(), Saga: res}, nil
}

func (l *lifecycle) CloneVolume(ctx context.Context, req *orchestratorv1.CloneVolumeRequest) (*orchestratorv1.CloneVolumeResponse, error) {
	snap, err := parseUUID("snapshot_id", req.SnapshotId)
	if err != nil {
		return nil, err
	}
	id, err := optionalID("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	res, _, err := l.start(ctx, sagas.VolumeClone, id, sagas.RegionSetParams{VolumeID: id, SnapshotID: &snap}, req.Wait)
	if err != nil {
		return nil, err
	}
	return &orchestratorv1.CloneVolumeResponse{VolumeId: id.String(), Saga: res}, nil
}

// DeleteVolume starts a fresh delete saga every time: deleting is safe to
// repeat, and a later delete may free what an earlier one had to keep.
func (l *lifecycle) DeleteVolume(ctx context.Context, req *orchestratorv1.DeleteVolumeRequest) (*orchestratorv1.DeleteVolumeResponse, error) {
	id, err := parseUUID("volume_id", req.VolumeId)
	if err != nil {
		return nil, err
	}
	sec, err := l.s.currentSEC()
	if err != nil {
		return nil, err
	}
	sagaID, err := sec.Create(ctx, sagas.VolumeDelete, sagas.DeleteParams{VolumeID: id}, saga.WithSubject(id.String()))
	if err != nil {
		return nil, grpcError(err)
	}
	res := &orchestratorv1.SagaResult{SagaId: sagaID.String(), Outcome: orchestratorv1.SagaOutcome_SAGA_OUTCOME_RUNNING}
	out := &orchestratorv1.DeleteVolumeResponse{Saga: res}
	if !req.Wait {
		return out, nil
	}
	o, err := sec.Wait(ctx, sagaID)
	if err != nil {
		return nil, status.FromContextError(err).Err()
	}
	fillOutcome(res, o)
	var dr sagas.DeleteResult
	if o.Kind == saga.Succeeded && o.Decode(&dr) == nil {
		out.HardDeleted = dr.HardDeleted
	}
	return out, nil
}
