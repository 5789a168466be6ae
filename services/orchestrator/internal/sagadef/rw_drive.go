package sagadef

import (
	"context"
	"fmt"
	"hash/fnv"
	"slices"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/store"
)

// rw-replacement-drive: one attempt at getting an Upstairs to fill the new region
// (docs/replacement.md, "rw-replacement-drive"). Running → Driving → Running (not done
// yet) or ReplacementDone; an unwind returns to Running. Done is concluded
// only from the Upstairs (a successful repair finish reported for the new
// region, or COMPLETED_ALREADY) or from the volume being deleted. Its nodes,
// each described where it is declared, are in newRWDrive.

// RWDriveParams are rw-replacement-drive's parameters.
type RWDriveParams struct {
	RequestID   uuid.UUID `json:"request_id"`
	VolumeID    uuid.UUID `json:"volume_id"`
	NewRegionID uuid.UUID `json:"new_region_id"`
}

// RWDrive is the rw-replacement-drive template.
var RWDrive = newRWDrive()

func newRWDrive() *saga.Template {
	t := saga.NewTemplate("rw-replacement-drive")
	// The nodes, in order, each after the one before it.
	nodes := []*saga.Action{
		// S = this saga's id.
		t.Action("saga_id", operatingSagaID, nil).Local(),
		// Generate the id of this attempt's step record.
		t.Action("step_id", newID, nil).Local(),
		// Claim: Running → Driving. ⟲ back to Running.
		t.Action("set_saga_id", rwDriveClaim, rwDriveClaimUndo),
		// Volume deleted or a successful repair finish for N → done; the
		// last step still in flight → wait; else action required.
		t.Action("check", rwDriveCheck, nil),
		// (Action required only) a RUNNING Propolis attachment (rw
		// preferred; a read-only one reads the rw regions too) → propolis
		// step; no consumer → pantry step on one of the Pantry endpoints,
		// chosen by the request id and persisted.
		t.Action("prepare", rwDrivePrepare, nil),
		// Propolis: NotifyReplacement (ReplaceVolume → a live repair);
		// pantry: ConstructVolume kind PANTRY (its activation reconciles).
		// No undo: the external effect cannot be rolled back and the next
		// check needs its record.
		t.Action("execute", rwDriveExecute, nil),
		// Commit: record the step, Running or ReplacementDone.
		t.Action("update_request", rwDriveCommit, nil),
	}
	saga.SetBuild(t, func(b *saga.Builder, _ RWDriveParams) error {
		for _, a := range nodes {
			b.Append(a.Node())
		}
		return nil
	})
	return t
}

// Drive check results.
const (
	DriveDone           = "done"
	DriveActionRequired = "action_required"
	DriveWait           = "wait"
)

// Drive step kinds (the step record's step_type).
const (
	StepPropolis = "propolis"
	StepPantry   = "pantry"
)

// DriveCheck is the check node's output.
type DriveCheck struct {
	Result string `json:"result"`
	Reason string `json:"reason"`
}

// DrivePlan is the prepare node's output: what execute does.
type DrivePlan struct {
	Kind         string     `json:"kind,omitempty"` // "" (nothing), propolis, pantry
	AttachmentID *uuid.UUID `json:"attachment_id,omitempty"`
	Incarnation  *int64     `json:"incarnation,omitempty"`
	Endpoint     string     `json:"endpoint,omitempty"`
}

// DriveExecution is the execute node's output.
type DriveExecution struct {
	Done         bool       `json:"done"`
	Result       string     `json:"result,omitempty"`
	AttachmentID *uuid.UUID `json:"attachment_id,omitempty"`
	Incarnation  *int64     `json:"incarnation,omitempty"`
}

func rwDriveParams(ac *saga.ActionContext) (RWDriveParams, uuid.UUID, error) {
	p, err := saga.Params[RWDriveParams](ac)
	if err != nil {
		return p, uuid.Nil, err
	}
	s, err := saga.Lookup[uuid.UUID](ac, "saga_id")
	return p, s, err
}

func rwDriveClaim(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwDriveParams(ac)
	if err != nil {
		return nil, err
	}
	return nil, deps(ac).Store.SetRWDriving(ctx, p.RequestID, s)
}

func rwDriveClaimUndo(ctx context.Context, ac *saga.ActionContext) error {
	p, s, err := rwDriveParams(ac)
	if err != nil {
		return err
	}
	return deps(ac).Store.UndoRWDriving(ctx, p.RequestID, s)
}

// RepairState is what the Upstairs reported about repairs of one target.
type RepairState struct {
	// Succeeded: some repair (live or reconciliation) finished successfully
	// with the target among the repaired downstairs.
	Succeeded bool
	// LastFailed: the latest notification is a failed (aborted) finish.
	LastFailed bool
	// LastReport is the time of the latest notification of any kind (start,
	// progress, finish): a repair that reports is moving.
	LastReport time.Time
}

// RegionRepairState reads the repair notifications for a region by its id.
// An Upstairs reports addresses; the notifier records, with each report,
// the region that served the address then. Agents reuse ports, so asking by
// address would also return the finished repair of an earlier region at the
// same address and call a fresh, empty region repaired. A report the
// notifier could not resolve is never counted here: the drive saga's check
// asks the Upstairs itself instead.
func RegionRepairState(ctx context.Context, d *Deps, regionID uuid.UUID) (RepairState, error) {
	var st RepairState
	token := ""
	for {
		resp, err := d.Notifier.ListRepairNotifications(ctx, &notifierv1.ListRepairNotificationsRequest{
			RegionId: regionID.String(), PageSize: 1000, PageToken: token,
		})
		if err != nil {
			return st, err
		}
		for _, n := range resp.Notifications {
			if t := n.GetTime().AsTime(); n.GetTime() != nil && t.After(st.LastReport) {
				st.LastReport = t
			}
			switch n.NotificationType {
			case notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_SUCCEEDED:
				st.Succeeded = true
				st.LastFailed = false
			case notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_FAILED:
				st.LastFailed = true
			default:
				st.LastFailed = false
			}
		}
		if token = resp.NextPageToken; token == "" {
			return st, nil
		}
	}
}

// volumeAttachments lists a volume's attachments, read-only ones included:
// an Upstairs that attached a disk read-only still reads its rw regions, so
// it must switch to the new region too. Left on the old VCR, it would refuse
// every later replacement of the volume (two targets would differ).
func volumeAttachments(ctx context.Context, d *Deps, volume uuid.UUID) ([]*notifierv1.Attachment, error) {
	var out []*notifierv1.Attachment
	token := ""
	for {
		resp, err := d.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{
			VolumeId: volume.String(), PageSize: 1000, PageToken: token,
		})
		if err != nil {
			return nil, err
		}
		out = append(out, resp.Attachments...)
		if token = resp.NextPageToken; token == "" {
			return out, nil
		}
	}
}

func running(a *notifierv1.Attachment) bool {
	return a.State == notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING ||
		a.State == notifierv1.AttachmentState_ATTACHMENT_STATE_REBOOTING
}

func changing(a *notifierv1.Attachment) bool {
	switch a.State {
	case notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING, notifierv1.AttachmentState_ATTACHMENT_STATE_MIGRATING,
		notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPING:
		return true
	}
	return false
}

func rwDriveCheck(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, _, err := rwDriveParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	gone, err := VolumeDeleted(ctx, d, p.VolumeID)
	if err != nil {
		return nil, err
	}
	if gone {
		return DriveCheck{Result: DriveDone, Reason: "volume deleted: nothing to repair, nobody to notify"}, nil
	}
	rs, err := RegionRepairState(ctx, d, p.NewRegionID)
	if err != nil {
		return nil, err
	}
	if rs.Succeeded {
		return DriveCheck{Result: DriveDone, Reason: "the Upstairs reported a successful repair of the new region"}, nil
	}
	atts, err := volumeAttachments(ctx, d, p.VolumeID)
	if err != nil {
		return nil, err
	}
	for _, a := range atts {
		if changing(a) {
			return DriveCheck{Result: DriveWait, Reason: fmt.Sprintf("attachment %s is %s", a.AttachmentId, a.State)}, nil
		}
	}
	steps, err := d.Store.DriveSteps(ctx, p.RequestID)
	if err != nil {
		return nil, err
	}
	if len(steps) == 0 {
		return DriveCheck{Result: DriveActionRequired, Reason: "no previous step"}, nil
	}
	if rs.LastFailed {
		return DriveCheck{Result: DriveActionRequired, Reason: "the last repair of the new region failed"}, nil
	}
	last := steps[len(steps)-1]
	if last.AttachmentID == nil || last.Incarnation == nil {
		return DriveCheck{Result: DriveActionRequired, Reason: "the last step reached no Upstairs"}, nil
	}
	for _, a := range atts {
		if a.AttachmentId == last.AttachmentID.String() && a.Incarnation == *last.Incarnation && running(a) {
			// The notifier's record says running, but an Upstairs that
			// restarted (a Pantry forgetting its volumes, say) never reports
			// the repair it lost. Ask it, through the notifier, under a key
			// of this saga so the answer is never a deduplicated old one.
			_, err := d.Notifier.NotifyReplacement(ctx, &notifierv1.NotifyReplacementRequest{
				VolumeId: p.VolumeID.String(), StepKey: "drive-check/" + ac.SagaID().String(),
			})
			switch status.Code(err) {
			case codes.OK:
			case codes.FailedPrecondition, codes.Unavailable:
				return DriveCheck{Result: DriveActionRequired, Reason: fmt.Sprintf(
					"the Upstairs of the last %s step no longer runs the volume: %v", last.StepType, status.Convert(err).Message())}, nil
			default:
				return nil, err
			}
			return DriveCheck{Result: DriveWait, Reason: fmt.Sprintf("last %s step still running on attachment %s incarnation %d",
				last.StepType, a.AttachmentId, a.Incarnation)}, nil
		}
	}
	return DriveCheck{Result: DriveActionRequired, Reason: fmt.Sprintf("the Upstairs of the last %s step is gone or restarted", last.StepType)}, nil
}

// pantryFor picks the Pantry endpoint for a request: deterministic, so
// every attempt of one request reconstructs on the same host, skipping the
// endpoints that run the volume for a Propolis attachment (an Upstairs
// serves a volume once; the notifier refuses a Pantry there). "" when every
// endpoint does.
func pantryFor(endpoints []string, request uuid.UUID, atts []*notifierv1.Attachment) string {
	h := fnv.New32a()
	h.Write(request[:])
	first := int(h.Sum32() % uint32(len(endpoints)))
	for i := range endpoints {
		e := endpoints[(first+i)%len(endpoints)]
		if !slices.ContainsFunc(atts, func(a *notifierv1.Attachment) bool {
			return a.Endpoint == e && a.Kind != notifierv1.UpstairsKind_UPSTAIRS_KIND_PANTRY
		}) {
			return e
		}
	}
	return ""
}

func rwDrivePrepare(ctx context.Context, ac *saga.ActionContext) (any, error) {
	c, err := saga.Lookup[DriveCheck](ac, "check")
	if err != nil || c.Result != DriveActionRequired {
		return DrivePlan{}, err
	}
	p, _, err := rwDriveParams(ac)
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	atts, err := volumeAttachments(ctx, d, p.VolumeID)
	if err != nil {
		return nil, err
	}
	// A running consumer is told (NotifyReplacement reaches every running
	// attachment, read-only ones too); the step records a rw one when there
	// is one, since that is the Upstairs that live-repairs.
	var consumer *notifierv1.Attachment
	for _, a := range atts {
		if a.Kind == notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS && running(a) && (consumer == nil || consumer.ReadOnly) {
			consumer = a
		}
	}
	if consumer != nil {
		id, err := uuid.Parse(consumer.AttachmentId)
		if err != nil {
			return nil, err
		}
		inc := consumer.Incarnation
		return DrivePlan{Kind: StepPropolis, AttachmentID: &id, Incarnation: &inc, Endpoint: consumer.Endpoint}, nil
	}
	if len(d.PantryEndpoints) == 0 {
		return nil, fmt.Errorf("%w: volume %s has no running consumer and no Pantry endpoint is configured", errInvalidState, p.VolumeID)
	}
	endpoint := pantryFor(d.PantryEndpoints, p.RequestID, atts)
	if endpoint == "" {
		return nil, fmt.Errorf("%w: volume %s: every Pantry endpoint runs it for a Propolis attachment", errInvalidState, p.VolumeID)
	}
	return DrivePlan{Kind: StepPantry, Endpoint: endpoint}, nil
}

func rwDriveExecute(ctx context.Context, ac *saga.ActionContext) (any, error) {
	plan, err := saga.Lookup[DrivePlan](ac, "prepare")
	if err != nil {
		return nil, err
	}
	p, _, err := rwDriveParams(ac)
	if err != nil {
		return nil, err
	}
	stepID, err := saga.Lookup[uuid.UUID](ac, "step_id")
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	switch plan.Kind {
	case StepPropolis:
		// The notifier reads the VCR itself (keys never pass through here)
		// and deduplicates a re-run on the step key.
		resp, err := d.Notifier.NotifyReplacement(ctx, &notifierv1.NotifyReplacementRequest{
			VolumeId: p.VolumeID.String(), StepKey: stepID.String(),
		})
		if err != nil {
			return nil, err
		}
		ex := DriveExecution{Result: resp.Outcome.String(), AttachmentID: plan.AttachmentID, Incarnation: plan.Incarnation}
		for _, a := range resp.Attachments {
			if a.AttachmentId == plan.AttachmentID.String() {
				ex.Result = a.Result.String()
				inc := a.Incarnation
				ex.Incarnation = &inc
				// VCR_MATCHES (an Upstairs built from the current VCR, e.g.
				// restarted) is not taken as done: its activation's
				// reconciliation reports the finish the next check sees.
				ex.Done = a.Result == upstairsv1.ReplaceResult_REPLACE_RESULT_COMPLETED_ALREADY
			}
		}
		return ex, nil
	case StepPantry:
		resp, err := d.Notifier.ConstructVolume(ctx, &notifierv1.ConstructVolumeRequest{
			VolumeId: p.VolumeID.String(), Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PANTRY, Endpoint: plan.Endpoint,
		})
		if err != nil {
			return nil, err
		}
		id, err := uuid.Parse(resp.Attachment.AttachmentId)
		if err != nil {
			return nil, err
		}
		inc := resp.Attachment.Incarnation
		return DriveExecution{Result: resp.Attachment.State.String(), AttachmentID: &id, Incarnation: &inc}, nil
	}
	return DriveExecution{}, nil
}

func rwDriveCommit(ctx context.Context, ac *saga.ActionContext) (any, error) {
	p, s, err := rwDriveParams(ac)
	if err != nil {
		return nil, err
	}
	c, err := saga.Lookup[DriveCheck](ac, "check")
	if err != nil {
		return nil, err
	}
	plan, err := saga.Lookup[DrivePlan](ac, "prepare")
	if err != nil {
		return nil, err
	}
	ex, err := saga.Lookup[DriveExecution](ac, "execute")
	if err != nil {
		return nil, err
	}
	stepID, err := saga.Lookup[uuid.UUID](ac, "step_id")
	if err != nil {
		return nil, err
	}
	d := deps(ac)
	if plan.Kind != "" {
		if err := d.Store.RecordDriveStep(ctx, store.DriveStep{
			ID: stepID, RequestID: p.RequestID, StepType: plan.Kind,
			AttachmentID: ex.AttachmentID, Incarnation: ex.Incarnation, Endpoint: plan.Endpoint,
		}); err != nil {
			return nil, err
		}
	}
	done := c.Result == DriveDone || ex.Done
	if err := d.Store.FinishRWDriving(ctx, p.RequestID, s, done); err != nil {
		return nil, err
	}
	if done {
		Wakeup(d.Wake.RWFinish)
	}
	return done, nil
}
