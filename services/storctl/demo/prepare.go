package demo

// Before the demo seeds anything: wait for an orchestrator leader, and
// detach the Upstairs attachments an earlier run left behind.

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
)

// waitLeader waits until the orchestrator leads: lifecycle RPCs answer
// UNAVAILABLE on a standby, and a fresh deployment takes the lease a
// moment after it is healthy.
func (d *run) waitLeader(ctx context.Context) error {
	return poll(ctx, time.Minute, "orchestrator leads", func() error {
		l, err := d.a.admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
		if err != nil {
			return err
		}
		if !l.GetIsLeader() {
			return fmt.Errorf("not leader yet (holder %q)", l.GetHolder())
		}
		return nil
	})
}

// detachStale tells the notifier that Upstairs gone with an earlier run
// are stopped. sim-upstairs keep their volumes in memory, so after a
// restart of `make run` the attachments of the previous demo's clones
// still read RUNNING while no Upstairs holds them, and a run interrupted
// mid-construction leaves them STARTING or FAILED. Any of these makes a
// replacement step's notification fail ("not active here", or a state
// that must settle first) and retry forever. An instance manager would
// report such a VMM as stopped: so does the demo, then it detaches them.
// Pantry attachments are the orchestrator's own and are left alone.
func (d *run) detachStale(ctx context.Context) error {
	var atts []*notifierv1.Attachment
	token := ""
	for {
		resp, err := d.a.notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return fmt.Errorf("list attachments: %w", err)
		}
		atts = append(atts, resp.GetAttachments()...)
		if token = resp.GetNextPageToken(); token == "" {
			break
		}
	}
	active := map[string]map[string]bool{} // endpoint → active volumes; nil: unreachable
	stale := 0
	for _, at := range atts {
		if at.GetKind() != notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS {
			continue
		}
		switch at.GetState() {
		case notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED:
			continue
		case notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING,
			notifierv1.AttachmentState_ATTACHMENT_STATE_MIGRATING:
			// Possibly in progress right now (another client): only an
			// old one is left over.
			updated := at.GetTimeUpdated().AsTime()
			if updated.After(d.o.UpstairsSince) && time.Since(updated) < staleAfter {
				continue
			}
		case notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING,
			notifierv1.AttachmentState_ATTACHMENT_STATE_REBOOTING:
			vols, ok := active[at.GetEndpoint()]
			if !ok {
				var err error
				if vols, err = d.activeVolumes(ctx, at.GetEndpoint()); err != nil {
					return err
				}
				active[at.GetEndpoint()] = vols
			}
			if vols != nil && vols[at.GetVolumeId()] {
				continue
			}
		}
		if _, err := d.a.notifier.SetUpstairsState(ctx, &notifierv1.SetUpstairsStateRequest{
			AttachmentId: at.GetAttachmentId(), State: notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED,
		}); err != nil && status.Code(err) != codes.NotFound {
			return fmt.Errorf("mark attachment %s stopped: %w", at.GetAttachmentId(), err)
		}
		if _, err := d.a.notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: at.GetAttachmentId()}); err != nil {
			return fmt.Errorf("detach attachment %s: %w", at.GetAttachmentId(), err)
		}
		stale++
	}
	if stale > 0 {
		d.printf("  %-10s detached %d attachment(s) left by an earlier run (its sim-upstairs restarted, or it was interrupted)\n", "cleanup", stale)
	}
	return nil
}

// staleAfter is how long a STARTING or MIGRATING attachment must have
// been so before the demo takes it for a leftover.
const staleAfter = time.Minute

// activeVolumes asks an Upstairs which volumes it has active; nil when it
// cannot be reached (gone).
func (d *run) activeVolumes(ctx context.Context, endpoint string) (map[string]bool, error) {
	conn, err := d.sim(endpoint)
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := upstairsv1.NewUpstairsServiceClient(conn).ListVolumes(cctx, &upstairsv1.ListVolumesRequest{})
	switch {
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case status.Code(err) == codes.Unavailable || status.Code(err) == codes.DeadlineExceeded:
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("list volumes on upstairs %s: %w", endpoint, err)
	}
	out := map[string]bool{}
	for _, v := range resp.GetVolumes() {
		if v.GetActive() {
			out[v.GetVolumeId()] = true
		}
	}
	return out, nil
}
