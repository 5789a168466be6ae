package server

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/notifier/internal/store"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
)

// ConstructVolume implements UpstairsNotifierService. The attachment is
// STARTING before the checkout, so a NotifyReplacement racing with this
// construction fails (and is retried) instead of missing an Upstairs built
// from the old VCR.
func (s *Server) ConstructVolume(ctx context.Context, req *notifierv1.ConstructVolumeRequest) (*notifierv1.ConstructVolumeResponse, error) {
	volumeID, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	kind, ok := kindNames[req.GetKind()]
	if !ok {
		return nil, invalid("kind", "must be PROPOLIS or PANTRY")
	}
	endpoint, err := canonicalEndpoint(req.GetEndpoint())
	if err != nil {
		return nil, invalid("endpoint", "%v", err)
	}
	var upstairsID uuid.UUID
	if req.GetUpstairsId() != "" {
		if upstairsID, err = ids.Parse("upstairs_id", req.GetUpstairsId()); err != nil {
			return nil, err
		}
	}
	// An unknown or deleted volume is refused with nothing recorded.
	vol, err := s.volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: volumeID.String(), View: volumev1.VolumeView_VOLUME_VIEW_REDACTED})
	if err != nil {
		return nil, volumeServiceError(err)
	}
	if vol.GetVolume().GetTimeDeleted() != nil {
		// Its storage is being freed; an Upstairs built from it would lose data.
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is deleted", volumeID)
	}

	att, err := s.store.StartConstruction(ctx, store.ConstructionStart{
		VolumeID: volumeID, Kind: kind, Endpoint: endpoint, UpstairsID: upstairsID, ReadOnly: req.GetReadOnly(),
	})
	if err != nil {
		return nil, s.storeError(ctx, "start construction", err)
	}
	log := s.logger.With("volume_id", volumeID, "attachment_id", att.ID, "incarnation", att.Incarnation, "endpoint", endpoint)

	// From here on every failure is recorded as FAILED, even if the caller
	// has gone away meanwhile.
	fail := func(cause error, what string) error {
		st := status.Convert(cause)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := s.store.FinishConstruction(rctx, att.ID, att.Incarnation, store.StateFailed, what+": "+st.Message(), ""); err != nil && !errors.Is(err, store.ErrSuperseded) {
			log.ErrorContext(ctx, "recording failed construction", "err", err)
		}
		log.WarnContext(ctx, "construction failed", "step", what, "code", st.Code(), "err", st.Message())
		return cause
	}

	// Again, now that the construction is recorded. volume-delete lists a
	// volume's attachments only after soft-deleting it, so a construction
	// its detach did not see sees the deletion here; the check above alone
	// let a delete run between it and the record, and the Upstairs then
	// ran a volume whose regions were being destroyed (checkout does not
	// refuse deleted volumes).
	vol, err = s.volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: volumeID.String(), View: volumev1.VolumeView_VOLUME_VIEW_REDACTED})
	if err != nil {
		return nil, fail(volumeServiceError(err), "checkout")
	}
	if vol.GetVolume().GetTimeDeleted() != nil {
		return nil, fail(status.Errorf(codes.FailedPrecondition, "volume %s is deleted", volumeID), "checkout")
	}
	co, err := s.volumes.CheckoutVolume(ctx, &volumev1.CheckoutVolumeRequest{VolumeId: volumeID.String(), Reason: volumev1.CheckoutReason_CHECKOUT_REASON_CONSTRUCT})
	if err != nil {
		return nil, fail(volumeServiceError(err), "checkout")
	}
	up, err := s.upstairs(endpoint)
	if err != nil {
		return nil, fail(status.Errorf(codes.Unavailable, "endpoint %s: %v", endpoint, err), "activate")
	}
	actx, cancel := context.WithTimeout(ctx, s.upstairsTimeout)
	var server peer.Peer
	_, err = up.Activate(actx, &upstairsv1.ActivateRequest{
		VolumeId: volumeID.String(), Vcr: co.GetVcr(), UpstairsId: att.UpstairsID.String(), ReadOnly: att.ReadOnly,
	}, grpc.Peer(&server))
	cancel()
	if err != nil {
		return nil, fail(upstairsError(endpoint, "Activate", err), "activate")
	}
	// The Upstairs runs it now: record that even if the caller has gone,
	// and who it is, so that only it may report for this upstairs_id
	// (reporterMayReportFor).
	identity := upstairsIdentity(&server)
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	done, err := s.store.FinishConstruction(fctx, att.ID, att.Incarnation, store.StateRunning, "", identity)
	if errors.Is(err, store.ErrSuperseded) {
		s.deactivateOrphan(ctx, att, up)
	}
	if err != nil {
		return nil, s.storeError(ctx, "finish construction", err)
	}
	att = done
	log.InfoContext(ctx, "volume constructed")
	return &notifierv1.ConstructVolumeResponse{Attachment: attachmentProto(att)}, nil
}

// deactivateOrphan undoes an activation whose attachment was detached while
// it was being constructed: no record would lead a notification to it, so
// it must not keep running. If the endpoint has a newer construction of the
// volume, that one owns the activation and it is left alone.
func (s *Server) deactivateOrphan(ctx context.Context, att store.Attachment, up upstairsClient) {
	ctx = context.WithoutCancel(ctx)
	_, err := s.store.AttachmentAt(ctx, att.VolumeID, att.Endpoint)
	if err == nil {
		// A newer construction owns the endpoint's activation, or the same
		// incarnation moved on by a reported state that stands.
		return
	}
	if !errors.Is(err, store.ErrNotFound) {
		s.logger.ErrorContext(ctx, "checking a superseded construction", "attachment_id", att.ID, "err", err)
		return
	}
	dctx, cancel := context.WithTimeout(ctx, s.upstairsTimeout)
	defer cancel()
	if _, err := up.Deactivate(dctx, &upstairsv1.DeactivateRequest{VolumeId: att.VolumeID.String()}); err != nil {
		s.logger.WarnContext(ctx, "deactivating a detached construction", "attachment_id", att.ID, "endpoint", att.Endpoint, "err", err)
	}
}

// volumeServiceError keeps NotFound, InvalidArgument and
// FailedPrecondition from the volume-service and reports anything else as
// Unavailable (the caller retries).
func volumeServiceError(err error) error {
	st := status.Convert(err)
	switch st.Code() {
	case codes.NotFound, codes.InvalidArgument, codes.FailedPrecondition, codes.Canceled:
		return status.Errorf(st.Code(), "volume-service: %s", st.Message())
	}
	return status.Errorf(codes.Unavailable, "volume-service: %s", st.Message())
}

// upstairsError maps an Upstairs call failure: unreachable is Unavailable,
// anything else FailedPrecondition (the Upstairs refused).
func upstairsError(endpoint, method string, err error) error {
	st := status.Convert(err)
	code := codes.FailedPrecondition
	if unreachable(err) {
		code = codes.Unavailable
	}
	return status.Errorf(code, "upstairs %s %s: %s: %s", endpoint, method, st.Code(), st.Message())
}

// DetachUpstairs implements UpstairsNotifierService. The attachment is
// marked STOPPING (so notifications wait), the volume deactivated on the
// endpoint, and the record forgotten. An endpoint that cannot be reached is
// Unavailable and the attachment stays STOPPING, unless the Upstairs was
// already reported STOPPED or FAILED (then it has nothing to deactivate).
func (s *Server) DetachUpstairs(ctx context.Context, req *notifierv1.DetachUpstairsRequest) (*notifierv1.DetachUpstairsResponse, error) {
	id, err := ids.Parse("attachment_id", req.GetAttachmentId())
	if err != nil {
		return nil, err
	}
	att, err := s.store.GetAttachment(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return &notifierv1.DetachUpstairsResponse{}, nil
	}
	if err != nil {
		return nil, s.storeError(ctx, "get attachment", err)
	}
	mustDeactivate := att.State != store.StateStopped && att.State != store.StateFailed
	if mustDeactivate {
		if _, err := s.store.SetState(ctx, id, store.StateStopping); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return &notifierv1.DetachUpstairsResponse{}, nil
			}
			return nil, s.storeError(ctx, "mark stopping", err)
		}
	} else if err := s.store.CheckFence(ctx); err != nil {
		return nil, s.storeError(ctx, "fence", err)
	}
	if up, derr := s.upstairs(att.Endpoint); derr == nil {
		dctx, cancel := context.WithTimeout(ctx, s.upstairsTimeout)
		_, err = up.Deactivate(dctx, &upstairsv1.DeactivateRequest{VolumeId: att.VolumeID.String()})
		cancel()
	} else {
		err = status.Error(codes.Unavailable, derr.Error())
	}
	if err != nil && mustDeactivate {
		return nil, upstairsError(att.Endpoint, "Deactivate", err)
	}
	if err := s.store.DeleteAttachment(ctx, id); err != nil {
		return nil, s.storeError(ctx, "delete attachment", err)
	}
	return &notifierv1.DetachUpstairsResponse{}, nil
}

// SetUpstairsState implements UpstairsNotifierService.
func (s *Server) SetUpstairsState(ctx context.Context, req *notifierv1.SetUpstairsStateRequest) (*notifierv1.SetUpstairsStateResponse, error) {
	id, err := ids.Parse("attachment_id", req.GetAttachmentId())
	if err != nil {
		return nil, err
	}
	state, ok := stateNames[req.GetState()]
	if !ok {
		return nil, invalid("state", "required")
	}
	if state == store.StateStarting {
		return nil, invalid("state", "STARTING is set by ConstructVolume only")
	}
	att, err := s.store.SetState(ctx, id, state)
	if err != nil {
		return nil, s.storeError(ctx, "set state", err)
	}
	return &notifierv1.SetUpstairsStateResponse{Attachment: attachmentProto(att)}, nil
}

// ListAttachments implements UpstairsNotifierService.
func (s *Server) ListAttachments(ctx context.Context, req *notifierv1.ListAttachmentsRequest) (*notifierv1.ListAttachmentsResponse, error) {
	limit, err := paging.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after := uuid.Nil
	if req.GetPageToken() != "" {
		parts, err := decodeToken(req.GetPageToken(), 1)
		if err != nil {
			return nil, err
		}
		if after, err = uuid.Parse(parts[0]); err != nil {
			return nil, paging.BadToken(req.GetPageToken())
		}
	}
	var volumeID *uuid.UUID
	if req.GetVolumeId() != "" {
		id, err := ids.Parse("volume_id", req.GetVolumeId())
		if err != nil {
			return nil, err
		}
		volumeID = &id
	}
	rows, err := s.store.ListAttachments(ctx, volumeID, after, limit+1)
	if err != nil {
		return nil, s.storeError(ctx, "list attachments", err)
	}
	resp := &notifierv1.ListAttachmentsResponse{}
	if len(rows) > limit {
		rows = rows[:limit]
		resp.NextPageToken = encodeToken(rows[limit-1].ID.String())
	}
	for _, a := range rows {
		resp.Attachments = append(resp.Attachments, attachmentProto(a))
	}
	return resp, nil
}

// maxAttachedQuery bounds FindAttachedVolumes' volume_ids.
const maxAttachedQuery = 1000

// FindAttachedVolumes implements UpstairsNotifierService.
func (s *Server) FindAttachedVolumes(ctx context.Context, req *notifierv1.FindAttachedVolumesRequest) (*notifierv1.FindAttachedVolumesResponse, error) {
	if n := len(req.GetVolumeIds()); n > maxAttachedQuery {
		return nil, invalid("volume_ids", "at most %d, got %d", maxAttachedQuery, n)
	}
	vols := make([]uuid.UUID, len(req.GetVolumeIds()))
	for i, v := range req.GetVolumeIds() {
		id, err := ids.Parse(fmt.Sprintf("volume_ids[%d]", i), v)
		if err != nil {
			return nil, err
		}
		vols[i] = id
	}
	resp := &notifierv1.FindAttachedVolumesResponse{}
	if len(vols) == 0 {
		return resp, nil
	}
	found, err := s.store.AttachedVolumes(ctx, vols)
	if err != nil {
		return nil, s.storeError(ctx, "find attached volumes", err)
	}
	for _, id := range found {
		resp.VolumeIds = append(resp.VolumeIds, id.String())
	}
	return resp, nil
}
