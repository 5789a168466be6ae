package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/notifier/internal/store"
	"storagecp.dev/notifier/internal/vcrutil"
	"storagecp.dev/platform/ids"
	"storagecp.dev/platform/paging"
)

const (
	maxStepKeyLen = 512
	// notifyRecordTimeout bounds recording an outcome after the caller may
	// have gone: an Upstairs was called, so the attempt must be kept.
	notifyRecordTimeout = 10 * time.Second
)

type commonVCR = commonv1.VolumeConstructionRequest

// NotifyReplacement implements UpstairsNotifierService.
//
// Outcomes, by the attachments of the volume:
//   - none, or only STOPPED ones → NO_UPSTAIRS: nothing runs the volume, and
//     any later construction checks out the stored (new) VCR;
//   - any STARTING, MIGRATING, STOPPING or FAILED → FailedPrecondition,
//     recorded, nothing called: the caller unwinds and retries later;
//   - otherwise every RUNNING or REBOOTING Upstairs is asked to ReplaceVolume
//     with the current VCR: STARTED, STARTED_ALREADY, COMPLETED_ALREADY and
//     VCR_MATCHES are NOTIFIED; MISSING or a refusal is FailedPrecondition;
//     an unreachable endpoint is Unavailable. Each answer is recorded.
//
// A volume being deleted is VOLUME_DELETED, nothing told and nothing counted
// as failed: found soft-deleted up front, or found so after an attachment
// blocked or an Upstairs refused — the delete soft-deletes the volume before
// it detaches the Upstairs, so a detach that raced this call (an attachment
// STOPPING, an Upstairs that no longer runs the volume) always finds it.
// Nobody runs a deleted volume, and the caller's swap is already durable.
//
// A successful answer is recorded once per (step_key, attachment,
// incarnation, VCR generation); a repeat returns it (deduplicated) without
// calling the Upstairs.
func (s *Server) NotifyReplacement(ctx context.Context, req *notifierv1.NotifyReplacementRequest) (*notifierv1.NotifyReplacementResponse, error) {
	volumeID, err := ids.Parse("volume_id", req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	stepKey := req.GetStepKey()
	if stepKey == "" {
		return nil, invalid("step_key", "required")
	}
	if len(stepKey) > maxStepKeyLen {
		return nil, invalid("step_key", "longer than %d bytes", maxStepKeyLen)
	}
	// Read the VCR before the attachments: a construction that is not yet
	// recorded as STARTING will check out this VCR or a newer one.
	vol, err := s.volumes.GetVolumeWithKeys(ctx, &volumev1.GetVolumeWithKeysRequest{VolumeId: volumeID.String()})
	if err != nil {
		return nil, volumeServiceError(err)
	}
	vcr := vol.GetVolume().GetVcr()
	gen := vcrutil.Generation(vcr)
	deleted := func(rows ...store.Notification) (*notifierv1.NotifyReplacementResponse, error) {
		return s.volumeDeleted(ctx, store.Notification{VolumeID: volumeID, StepKey: stepKey, VCRGeneration: gen}, rows)
	}
	if vol.GetVolume().GetTimeDeleted() != nil {
		return deleted()
	}
	// Fenced: a stale leader must not reach any Upstairs.
	atts, err := s.store.VolumeAttachments(ctx, volumeID)
	if err != nil {
		return nil, s.storeError(ctx, "list attachments", err)
	}
	record := func(ns ...store.Notification) error { return s.record(ctx, ns) }
	base := store.Notification{VolumeID: volumeID, StepKey: stepKey, VCRGeneration: gen}

	var running []store.Attachment
	var blocked []string
	var blockedRows []store.Notification
	for _, a := range atts {
		switch a.State {
		case store.StateRunning, store.StateRebooting:
			running = append(running, a)
		case store.StateStopped:
		default:
			blocked = append(blocked, fmt.Sprintf("attachment %s (incarnation %d) is %s", a.ID, a.Incarnation, strings.ToUpper(a.State)))
			n := base
			n.AttachmentID, n.Incarnation = &a.ID, a.Incarnation
			n.Outcome, n.Error = store.OutcomeFailed, "attachment is "+strings.ToUpper(a.State)
			blockedRows = append(blockedRows, n)
		}
	}
	if len(blocked) > 0 {
		if s.volumeGone(ctx, volumeID) {
			return deleted(blockedRows...)
		}
		if err := record(blockedRows...); err != nil {
			return nil, err
		}
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s cannot be notified now: %s", volumeID, strings.Join(blocked, "; "))
	}
	if len(running) == 0 {
		n := base
		n.Outcome = store.OutcomeNoUpstairs
		if err := record(n); err != nil {
			return nil, err
		}
		return &notifierv1.NotifyReplacementResponse{Outcome: notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NO_UPSTAIRS}, nil
	}

	// Ask every running Upstairs at once; each answer is independent.
	results := make([]notifyResult, len(running))
	var wg sync.WaitGroup
	for i, a := range running {
		wg.Go(func() { results[i] = s.notifyOne(ctx, a, stepKey, gen, vcr) })
	}
	wg.Wait()

	resp := &notifierv1.NotifyReplacementResponse{Outcome: notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED}
	var rows []store.Notification
	var failures []string
	worst := codes.OK
	for i, r := range results {
		a := running[i]
		if r.internal != nil {
			return nil, s.storeError(ctx, "find notification", r.internal)
		}
		if r.deduplicated {
			s.metrics.deduplicated(ctx)
			resp.Attachments = append(resp.Attachments, &notifierv1.AttachmentNotification{
				AttachmentId: a.ID.String(), Incarnation: a.Incarnation, Result: r.result, Deduplicated: true,
			})
			continue
		}
		n := base
		n.AttachmentID, n.Incarnation, n.Result = &a.ID, a.Incarnation, replaceResultName(r.result)
		if r.err != nil {
			st := status.Convert(r.err)
			n.Outcome, n.Error = store.OutcomeFailed, st.Message()
			failures = append(failures, st.Message())
			if worst != codes.Unavailable {
				worst = st.Code()
			}
		} else {
			n.Outcome = store.OutcomeNotified
			resp.Attachments = append(resp.Attachments, &notifierv1.AttachmentNotification{
				AttachmentId: a.ID.String(), Incarnation: a.Incarnation, Result: r.result,
			})
		}
		rows = append(rows, n)
	}
	if len(failures) > 0 && s.volumeGone(ctx, volumeID) {
		return deleted(rows...)
	}
	if len(rows) > 0 {
		if err := record(rows...); err != nil {
			return nil, err
		}
	}
	if len(failures) > 0 {
		return nil, status.Errorf(worst, "volume %s: %s", volumeID, strings.Join(failures, "; "))
	}
	return resp, nil
}

// record keeps attempts and counts them, even after the caller has gone:
// an Upstairs may have been called.
func (s *Server) record(ctx context.Context, ns []store.Notification) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), notifyRecordTimeout)
	defer cancel()
	if err := s.store.RecordNotifications(rctx, ns); err != nil {
		return s.storeError(ctx, "record notification", err)
	}
	s.metrics.recorded(rctx, ns)
	return nil
}

// volumeGone reports whether the volume is soft- or hard-deleted now. An
// error reading it is not proof: the caller keeps the failure it had.
func (s *Server) volumeGone(ctx context.Context, volumeID uuid.UUID) bool {
	vol, err := s.volumes.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: volumeID.String()})
	if status.Code(err) == codes.NotFound {
		return true
	}
	return err == nil && vol.GetVolume().GetTimeDeleted() != nil
}

// volumeDeleted records the attempt as VOLUME_DELETED: the attempts that
// failed because the delete was detaching the volume's Upstairs are
// relabelled, not counted as failures; without any, one row says so.
func (s *Server) volumeDeleted(ctx context.Context, base store.Notification, rows []store.Notification) (*notifierv1.NotifyReplacementResponse, error) {
	out := make([]store.Notification, 0, len(rows)+1)
	for _, n := range rows {
		if n.Outcome == store.OutcomeFailed {
			n.Outcome = store.OutcomeVolumeDeleted
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		n := base
		n.Outcome = store.OutcomeVolumeDeleted
		out = append(out, n)
	}
	if err := s.record(ctx, out); err != nil {
		return nil, err
	}
	return &notifierv1.NotifyReplacementResponse{Outcome: notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED}, nil
}

type notifyResult struct {
	result       upstairsv1.ReplaceResult
	deduplicated bool
	// err is a status: FailedPrecondition or Unavailable.
	err error
	// internal is a database failure.
	internal error
}

// notifyOne tells one running Upstairs about the VCR, unless this
// incarnation was already told at this generation under this step key.
func (s *Server) notifyOne(ctx context.Context, a store.Attachment, stepKey string, gen uint64, vcr *commonVCR) notifyResult {
	prev, found, err := s.store.FindNotified(ctx, stepKey, a.ID, a.Incarnation, gen)
	if err != nil {
		return notifyResult{internal: err}
	}
	if found {
		return notifyResult{result: replaceResultFromName(prev.Result), deduplicated: true}
	}
	up, err := s.upstairs(a.Endpoint)
	if err != nil {
		return notifyResult{err: status.Errorf(codes.Unavailable, "upstairs %s: %v", a.Endpoint, err)}
	}
	cctx, cancel := context.WithTimeout(ctx, s.upstairsTimeout)
	defer cancel()
	resp, err := up.ReplaceVolume(cctx, &upstairsv1.ReplaceVolumeRequest{VolumeId: a.VolumeID.String(), Vcr: vcr})
	if err != nil {
		return notifyResult{err: upstairsError(a.Endpoint, "ReplaceVolume", err)}
	}
	switch r := resp.GetResult(); r {
	case upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED,
		upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED_ALREADY,
		upstairsv1.ReplaceResult_REPLACE_RESULT_COMPLETED_ALREADY,
		upstairsv1.ReplaceResult_REPLACE_RESULT_VCR_MATCHES:
		return notifyResult{result: r}
	case upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING:
		return notifyResult{result: r, err: status.Errorf(codes.FailedPrecondition, "upstairs %s answered MISSING: %s", a.Endpoint, resp.GetDetail())}
	default:
		return notifyResult{result: r, err: status.Errorf(codes.FailedPrecondition, "upstairs %s answered %s", a.Endpoint, r)}
	}
}

// ListNotifications implements UpstairsNotifierService.
func (s *Server) ListNotifications(ctx context.Context, req *notifierv1.ListNotificationsRequest) (*notifierv1.ListNotificationsResponse, error) {
	limit, err := paging.Size(req.GetPageSize())
	if err != nil {
		return nil, err
	}
	after, err := decodeSeqToken(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	var volumeID *uuid.UUID
	if req.GetVolumeId() != "" {
		id, err := ids.Parse("volume_id", req.GetVolumeId())
		if err != nil {
			return nil, err
		}
		volumeID = &id
	}
	rows, err := s.store.ListNotifications(ctx, volumeID, after, limit+1)
	if err != nil {
		return nil, s.storeError(ctx, "list notifications", err)
	}
	resp := &notifierv1.ListNotificationsResponse{}
	if len(rows) > limit {
		rows = rows[:limit]
		resp.NextPageToken = encodeToken(fmt.Sprint(rows[limit-1].Seq))
	}
	for _, n := range rows {
		resp.Notifications = append(resp.Notifications, notificationProto(n))
	}
	return resp, nil
}
