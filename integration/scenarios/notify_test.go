package scenarios

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"

	"storagecp.dev/integration/harness"
)

// attachmentOf returns the attachment of a volume.
func (w *world) attachmentOf(t *testing.T, volume string) *notifierv1.Attachment {
	t.Helper()
	resp, err := w.Notifier.ListAttachments(w.ctx, &notifierv1.ListAttachmentsRequest{VolumeId: volume, PageSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Attachments) != 1 {
		t.Fatalf("volume %s has attachments %v", volume, resp.Attachments)
	}
	return resp.Attachments[0]
}

// Scenario 43: F's Upstairs is STARTING when its step runs: the step saga
// unwinds (F's VCR still names A, step Requested); once RUNNING, the next
// pass completes with STARTED. Forced: the request is first brought to
// Running with F's step held (F MIGRATING); then F is constructed again on
// the same sim-upstairs (a restart: next incarnation, STARTING) with that
// Upstairs' Activate delayed, and the step task is activated — and its
// saga seen failed — while the attachment is still STARTING.
func TestScenario43UpstairsStarting(t *testing.T) {
	w := newWorld(t, 4)
	id, step := w.requestWithFHeld(t)
	if _, err := w.upFaults[0].InjectUpstairsFault(w.ctx, &upstairsv1.InjectUpstairsFaultRequest{
		Method: "Activate", Count: 1, Delay: durationpb.New(6 * time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	constructed := make(chan error, 1)
	go func() {
		_, err := w.Notifier.ConstructVolume(w.ctx, &notifierv1.ConstructVolumeRequest{
			VolumeId: w.F, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: w.Stack.SimUpstairsAddrs()[0],
		})
		constructed <- err
	}()
	harness.Eventually(t, 5*time.Second, "F's attachment STARTING", func() error {
		if a := w.attachmentOf(t, w.F); a.State != notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING {
			return fmt.Errorf("attachment %v", a.State)
		}
		return nil
	})
	n := w.failedSagas(t, "ro-replacement-step", step)
	w.activate(t, "ro_replacement_step")
	w.waitFailedSagas(t, "ro-replacement-step", step, n+1)
	if a := w.attachmentOf(t, w.F); a.State != notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING {
		t.Fatalf("the step saga ran after the attachment became %v: STARTING not exercised", a.State)
	}
	got := w.get(t, id)
	if s := stepOf(got, w.F); s == nil || s.State != stepRequested {
		t.Fatalf("F's step after the STARTING unwind: %v", s)
	}
	if !contains(targetIDs(t, w, w.F), w.A.TargetId) {
		t.Fatalf("F's VCR no longer names A after the unwind")
	}
	if err := <-constructed; err != nil {
		t.Fatalf("construct F again: %v", err)
	}
	if a := w.attachmentOf(t, w.F); a.State != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
		t.Fatalf("attachment %v after construction", a.State)
	}
	w.activate(t, "ro_replacement_step")
	got = w.waitState(t, id, 60*time.Second, roComplete)
	b := got.Replacement.NewRegionId
	w.wantNames(t, w.F, w.A.TargetId, b)
	notes, err := w.Notifier.ListNotifications(w.ctx, &notifierv1.ListNotificationsRequest{VolumeId: w.F, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	started := false
	for _, n := range notes.Notifications {
		if n.Result == upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED && n.StepKey == step {
			started = true
		}
	}
	if !started {
		t.Errorf("no STARTED notification for F's step: %v", notes.Notifications)
	}
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// Scenario 44: F is deleted after its step swapped A for B and before the
// notification concluded. The reference deletes F between the swap and
// the notify node, so notify finds nothing attached. No public API stops a
// saga between two nodes; the closest deterministic variant: F's Upstairs
// answers ReplaceVolume only after a delay, and while the step saga waits
// on it (the swap is committed: F names B, step Running), F is detached
// and deleted. Whichever way the notification ends (answered, or failed
// and unwound on the deleted volume), the step must reach VolumeDeleted
// and the request Complete, with nothing leaked.
func TestScenario44DeleteBetweenSwapAndNotify(t *testing.T) {
	w := newWorld(t, 4)
	w.construct(t, w.F, 0, false)
	if _, err := w.upFaults[0].InjectUpstairsFault(w.ctx, &upstairsv1.InjectUpstairsFaultRequest{
		Method: "ReplaceVolume", Count: 1, Delay: durationpb.New(4 * time.Second),
	}); err != nil {
		t.Fatal(err)
	}
	id := w.request(t, w.A.TargetId)
	var step string
	harness.Eventually(t, 30*time.Second, "F swapped with its step Running", func() error {
		got, err := w.Replacement.GetReplacement(w.ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id})
		if err != nil {
			return err
		}
		s := stepOf(got, w.F)
		if s == nil || s.State != orchestratorv1.StepState_STEP_STATE_RUNNING {
			return fmt.Errorf("step %v", s)
		}
		if b := got.Replacement.NewRegionId; !contains(targetIDs(t, w, w.F), b) {
			return fmt.Errorf("F does not name B yet")
		}
		step = s.StepId
		return nil
	})
	w.deleteUser(t, w.F)
	// A step saga that unwinds activates nothing: its retry is "a later
	// pass" (the period, an hour here), so the test makes those passes.
	var got *orchestratorv1.GetReplacementResponse
	harness.Eventually(t, 60*time.Second, "request Complete over later passes", func() error {
		w.activate(t, "ro_replacement_step", "ro_replacement_finish")
		var err error
		if got, err = w.Replacement.GetReplacement(w.ctx, &orchestratorv1.GetReplacementRequest{ReplacementId: id}); err != nil {
			return err
		}
		if got.Replacement.ReadOnlyState != roComplete {
			return fmt.Errorf("request %v", got.Replacement.ReadOnlyState)
		}
		return nil
	})
	if s := stepOf(got, w.F); s == nil || s.StepId != step || s.State != stepVolumeDeleted {
		t.Fatalf("F's step %v", s)
	}
	t.Logf("F's step sagas: %d succeeded, %d failed", w.sagasEnded(t, "ro-replacement-step", step, "succeeded"), w.failedSagas(t, "ro-replacement-step", step))
	// The step task may run (activated by F's delete) while F's step saga
	// still waits on the notification: its stash, which names A until the
	// saga ends, is then a live volume naming A and gets a step of its own
	// (the stash is known as one only once the step is Complete).
	stashes := w.stashesOf(t, step)
	for _, s := range got.Steps {
		if contains(stashes, s.VolumeId) {
			t.Logf("step %s was created for the stash %s of F's in-flight step saga; it ended %v", s.StepId, s.VolumeId, s.State)
		}
	}
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// stashesOf returns the stash volume ids the ro-replacement-step sagas of a step
// generated (their new_volume_id node outputs).
func (w *world) stashesOf(t *testing.T, step string) []string {
	t.Helper()
	var out []string
	resp, err := w.Admin.ListSagas(w.ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, sg := range resp.Sagas {
		if sg.Name != "ro-replacement-step" || sg.SubjectId != step {
			continue
		}
		g, err := w.Admin.GetSaga(w.ctx, &orchestratorv1.GetSagaRequest{SagaId: sg.SagaId})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range g.Nodes {
			if n.Name == "new_volume_id" && n.DataJson != "" {
				out = append(out, strings.Trim(n.DataJson, "\" "))
			}
		}
	}
	return out
}
