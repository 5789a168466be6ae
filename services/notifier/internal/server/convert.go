package server

import (
	"encoding/base64"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/notifier/internal/store"
	"storagecp.dev/platform/paging"
)

// Page tokens are opaque to clients: base64 of the last row's position.
func encodeToken(parts ...string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strings.Join(parts, "|")))
}

func decodeToken(tok string, n int) ([]string, error) {
	b, err := base64.RawURLEncoding.DecodeString(tok)
	if err != nil {
		return nil, paging.BadToken(tok)
	}
	parts := strings.Split(string(b), "|")
	if len(parts) != n {
		return nil, paging.BadToken(tok)
	}
	return parts, nil
}

func decodeSeqToken(tok string) (int64, error) {
	if tok == "" {
		return 0, nil
	}
	parts, err := decodeToken(tok, 1)
	if err != nil {
		return 0, err
	}
	seq, perr := strconv.ParseInt(parts[0], 10, 64)
	if perr != nil || seq < 0 {
		return 0, paging.BadToken(tok)
	}
	return seq, nil
}

var kindNames = map[notifierv1.UpstairsKind]string{
	notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS: "propolis",
	notifierv1.UpstairsKind_UPSTAIRS_KIND_PANTRY:   "pantry",
}

var stateNames = map[notifierv1.AttachmentState]string{
	notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING:  store.StateStarting,
	notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING:   store.StateRunning,
	notifierv1.AttachmentState_ATTACHMENT_STATE_REBOOTING: store.StateRebooting,
	notifierv1.AttachmentState_ATTACHMENT_STATE_MIGRATING: store.StateMigrating,
	notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPING:  store.StateStopping,
	notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED:   store.StateStopped,
	notifierv1.AttachmentState_ATTACHMENT_STATE_FAILED:    store.StateFailed,
}

var outcomeNames = map[notifierv1.NotificationOutcome]string{
	notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NO_UPSTAIRS:    store.OutcomeNoUpstairs,
	notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED:       store.OutcomeNotified,
	notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED:         store.OutcomeFailed,
	notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED: store.OutcomeVolumeDeleted,
}

var repairTypeNames = map[notifierv1.RepairType]string{
	notifierv1.RepairType_REPAIR_TYPE_LIVE:           store.RepairLive,
	notifierv1.RepairType_REPAIR_TYPE_RECONCILIATION: store.RepairReconciliation,
}

var repairNotificationNames = map[notifierv1.RepairNotificationType]string{
	notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_STARTED:   store.RepairStarted,
	notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_SUCCEEDED: store.RepairSucceeded,
	notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_FAILED:    store.RepairFailed,
}

// reverse looks a stored name up in one of the maps above.
func reverse[E comparable](m map[E]string, name string) E {
	for k, v := range m {
		if v == name {
			return k
		}
	}
	var zero E
	return zero
}

// replaceResultName stores an Upstairs answer by its enum name.
func replaceResultName(r upstairsv1.ReplaceResult) string {
	if r == upstairsv1.ReplaceResult_REPLACE_RESULT_UNSPECIFIED {
		return ""
	}
	return r.String()
}

func replaceResultFromName(s string) upstairsv1.ReplaceResult {
	return upstairsv1.ReplaceResult(upstairsv1.ReplaceResult_value[s])
}

func attachmentProto(a store.Attachment) *notifierv1.Attachment {
	return &notifierv1.Attachment{
		AttachmentId:     a.ID.String(),
		VolumeId:         a.VolumeID.String(),
		Kind:             reverse(kindNames, a.Kind),
		Endpoint:         a.Endpoint,
		UpstairsId:       a.UpstairsID.String(),
		Incarnation:      a.Incarnation,
		State:            reverse(stateNames, a.State),
		ReadOnly:         a.ReadOnly,
		TimeUpdated:      timestamppb.New(a.TimeUpdated),
		Error:            a.Error,
		UpstairsIdentity: a.UpstairsIdentity,
	}
}

func notificationProto(n store.Notification) *notifierv1.Notification {
	p := &notifierv1.Notification{
		NotificationId: n.ID.String(),
		VolumeId:       n.VolumeID.String(),
		StepKey:        n.StepKey,
		Incarnation:    n.Incarnation,
		VcrGeneration:  n.VCRGeneration,
		Outcome:        reverse(outcomeNames, n.Outcome),
		Result:         replaceResultFromName(n.Result),
		Error:          n.Error,
		Time:           timestamppb.New(n.Time),
	}
	if n.AttachmentID != nil {
		p.AttachmentId = n.AttachmentID.String()
	}
	return p
}

func repairProto(r store.RepairNotification) *notifierv1.RepairNotification {
	return &notifierv1.RepairNotification{
		RepairId:         r.RepairID.String(),
		RepairType:       reverse(repairTypeNames, r.RepairType),
		UpstairsId:       r.UpstairsID.String(),
		SessionId:        r.SessionID.String(),
		RegionId:         r.RegionID,
		TargetAddress:    r.TargetAddress,
		NotificationType: reverse(repairNotificationNames, r.Type),
		Time:             timestamppb.New(r.Time),
	}
}

func parseTime(field string, ts *timestamppb.Timestamp) (time.Time, error) {
	if ts == nil {
		return time.Time{}, invalid(field, "required")
	}
	if err := ts.CheckValid(); err != nil {
		return time.Time{}, invalid(field, "invalid timestamp")
	}
	return ts.AsTime(), nil
}
