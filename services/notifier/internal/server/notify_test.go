package server

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/notifier/internal/vcrutil"
	"storagecp.dev/platform/fence"
)

// volumeFixture creates volumes in the volume-service and changes their
// VCRs the way replacements do.
type volumeFixture interface {
	addr() string
	create(t testing.TB, rw, ro []string) string
	replaceRO(t testing.TB, vol, oldAddr, newAddr string)
	replaceRW(t testing.TB, vol, oldAddr, newAddr string)
}

// world is a notifier, its volume-service and sim-upstairs processes.
type world struct {
	t    testing.TB
	ctx  context.Context
	vols volumeFixture
	n    *notifierEnv
}

func newWorld(t testing.TB) *world {
	t.Helper()
	vols := newVolumes(t)
	return &world{t: t, ctx: ctxT(t), vols: vols, n: startNotifier(t, vols.addr())}
}

func (w *world) sim(extra ...string) *sim {
	w.t.Helper()
	return startSim(w.t, w.n.addr, "", extra...)
}

func (w *world) construct(vol string, s *sim, readOnly bool) (*notifierv1.Attachment, error) {
	resp, err := w.n.client.ConstructVolume(w.ctx, &notifierv1.ConstructVolumeRequest{
		VolumeId: vol, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: s.addr, ReadOnly: readOnly,
	})
	return resp.GetAttachment(), err
}

func (w *world) mustConstruct(vol string, s *sim, readOnly bool) *notifierv1.Attachment {
	w.t.Helper()
	a, err := w.construct(vol, s, readOnly)
	if err != nil {
		w.t.Fatalf("construct: %v", err)
	}
	if a.GetState() != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
		w.t.Fatalf("constructed attachment is %v", a.GetState())
	}
	return a
}

func (w *world) notify(vol, key string) (*notifierv1.NotifyReplacementResponse, error) {
	return w.n.client.NotifyReplacement(w.ctx, &notifierv1.NotifyReplacementRequest{VolumeId: vol, StepKey: key})
}

// mustNotify expects NOTIFIED with one attachment answering want.
func (w *world) mustNotify(vol, key string, want upstairsv1.ReplaceResult, dedup bool) *notifierv1.NotifyReplacementResponse {
	w.t.Helper()
	resp, err := w.notify(vol, key)
	if err != nil {
		w.t.Fatalf("notify %s: %v", key, err)
	}
	if resp.GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED || len(resp.GetAttachments()) != 1 {
		w.t.Fatalf("notify %s: %v", key, resp)
	}
	if a := resp.GetAttachments()[0]; a.GetResult() != want || a.GetDeduplicated() != dedup {
		w.t.Fatalf("notify %s: got %v dedup=%v, want %v dedup=%v", key, a.GetResult(), a.GetDeduplicated(), want, dedup)
	}
	return resp
}

func (w *world) notifications(vol string) []*notifierv1.Notification {
	w.t.Helper()
	resp, err := w.n.client.ListNotifications(w.ctx, &notifierv1.ListNotificationsRequest{VolumeId: vol, PageSize: 1000})
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.GetNotifications()
}

func (w *world) attachments(vol string) []*notifierv1.Attachment {
	w.t.Helper()
	resp, err := w.n.client.ListAttachments(w.ctx, &notifierv1.ListAttachmentsRequest{VolumeId: vol, PageSize: 1000})
	if err != nil {
		w.t.Fatal(err)
	}
	return resp.GetAttachments()
}

func simStatus(t testing.TB, s *sim, vol string) *upstairsv1.VolumeStatus {
	t.Helper()
	resp, err := s.up.GetVolumeStatus(context.Background(), &upstairsv1.GetVolumeStatusRequest{VolumeId: vol})
	if err != nil {
		t.Fatalf("sim status: %v", err)
	}
	return resp.GetStatus()
}

func wantCode(t testing.TB, err error, want codes.Code, what string) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("%s: got %v (%v), want %v", what, got, err, want)
	}
}

const (
	resStarted    = upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED
	resStartedAlr = upstairsv1.ReplaceResult_REPLACE_RESULT_STARTED_ALREADY
	resCompleted  = upstairsv1.ReplaceResult_REPLACE_RESULT_COMPLETED_ALREADY
	resMatches    = upstairsv1.ReplaceResult_REPLACE_RESULT_VCR_MATCHES
	resMissing    = upstairsv1.ReplaceResult_REPLACE_RESULT_MISSING
)

func TestNotifyOutcomes(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	// A long repair keeps a rw replacement in flight while we ask again.
	s := w.sim("--repair-delay", "3s")
	rw, ro := addrs("111", 3), addrs("211", 3)
	vol := w.vols.create(t, rw, ro)

	resp, err := w.notify(vol, "nothing-attached")
	if err != nil || resp.GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NO_UPSTAIRS {
		t.Fatalf("no attachment: %v %v", resp, err)
	}

	att := w.mustConstruct(vol, s, false)
	if att.GetIncarnation() != 1 {
		t.Fatalf("incarnation %d", att.GetIncarnation())
	}
	w.mustNotify(vol, "unchanged", resMatches, false)

	// Read-only replacement in the stored VCR: the running Upstairs switches.
	newRO := "[fd00:1122:3344:2ff::1]:19000"
	w.vols.replaceRO(t, vol, ro[0], newRO)
	w.mustNotify(vol, "step-ro", resStarted, false)
	calls := simStatus(t, s, vol).GetReplaceCalls()
	// The same key again: the recorded outcome, the Upstairs not called.
	w.mustNotify(vol, "step-ro", resStarted, true)
	if got := simStatus(t, s, vol).GetReplaceCalls(); got != calls {
		t.Fatalf("a deduplicated notification reached the Upstairs: calls %d → %d", calls, got)
	}
	// Another key is a new notification: the switch is already done.
	w.mustNotify(vol, "step-ro-other", resCompleted, false)

	// Read/write replacement (generation bump): a live repair follows.
	newRW := "[fd00:1122:3344:1ff::1]:19000"
	w.vols.replaceRW(t, vol, rw[1], newRW)
	w.mustNotify(vol, "step-rw", resStarted, false)
	w.mustNotify(vol, "step-rw-again", resStartedAlr, false)
	eventually(t, 15*time.Second, "live repair finished and reported", func() error {
		r, err := w.n.client.ListRepairNotifications(w.ctx, &notifierv1.ListRepairNotificationsRequest{TargetAddress: newRW})
		if err != nil {
			return err
		}
		for _, n := range r.GetNotifications() {
			if n.GetNotificationType() == notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_SUCCEEDED {
				return nil
			}
		}
		return fmt.Errorf("%d rows, no success", len(r.GetNotifications()))
	})

	// The Upstairs reported an address; the notifier resolved its region, so
	// the drive task's query by region id finds the finish too.
	if rv, ok := w.vols.(*realVolumes); ok {
		r, err := w.n.client.ListRepairNotifications(w.ctx, &notifierv1.ListRepairNotificationsRequest{RegionId: rv.target(t, newRW)})
		if err != nil || len(r.GetNotifications()) != 2 || r.GetNotifications()[1].GetTargetAddress() != newRW {
			t.Fatalf("repairs by region id: %v %v", r, err)
		}
	}

	// Two targets changed at once: the Upstairs answers MISSING.
	w.vols.replaceRO(t, vol, ro[1], "[fd00:1122:3344:2ff::2]:19000")
	w.vols.replaceRO(t, vol, ro[2], "[fd00:1122:3344:2ff::3]:19000")
	_, err = w.notify(vol, "step-two")
	wantCode(t, err, codes.FailedPrecondition, "MISSING")
	if !strings.Contains(status.Convert(err).Message(), "MISSING") {
		t.Fatalf("MISSING not named: %v", err)
	}

	rows := w.notifications(vol)
	last := rows[len(rows)-1]
	if last.GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED || last.GetResult() != resMissing || last.GetAttachmentId() != att.GetAttachmentId() {
		t.Fatalf("MISSING not recorded: %v", last)
	}
	// Recorded: no_upstairs, unchanged, step-ro, step-ro-other, step-rw,
	// step-rw-again, step-two (failed). The deduplicated repeat is not a new row.
	if len(rows) != 7 {
		t.Fatalf("%d notification rows: %v", len(rows), rows)
	}
	for _, r := range rows {
		if strings.Contains(r.String(), "c2VjcmV0") {
			t.Fatal("a key reached a notification record")
		}
	}
	if st := simStatus(t, s, vol); st.GetDataLossEvents() != 0 {
		t.Fatalf("data loss %v", st)
	}
}

func TestNotifyUnreachableAndRestartedUpstairs(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	vol := w.vols.create(t, addrs("112", 3), addrs("212", 3))
	att := w.mustConstruct(vol, s, false)

	w.vols.replaceRO(t, vol, addrs("212", 3)[0], "[fd00:1122:3344:2fe::1]:19000")
	s.kill()
	_, err := w.notify(vol, "step")
	wantCode(t, err, codes.Unavailable, "killed Upstairs")
	rows := w.notifications(vol)
	if len(rows) != 1 || rows[0].GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED || rows[0].GetError() == "" {
		t.Fatalf("unreachable attempt not recorded: %v", rows)
	}

	// Restarted with no memory: it no longer runs the volume, so the
	// notification still fails until the consumer constructs it again.
	s.restart(t)
	_, err = w.notify(vol, "step")
	wantCode(t, err, codes.FailedPrecondition, "restarted Upstairs without the volume")

	att2 := w.mustConstruct(vol, s, false)
	if att2.GetAttachmentId() != att.GetAttachmentId() || att2.GetIncarnation() != 2 {
		t.Fatalf("reconstruction: %v", att2)
	}
	// Built from the new VCR already; the new incarnation is notified afresh.
	w.mustNotify(vol, "step", resMatches, false)
	w.mustNotify(vol, "step", resMatches, true)
}

func TestConstructionRace(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	ro := addrs("213", 3)
	vol := w.vols.create(t, addrs("113", 3), ro)

	before, err := w.vols.(*realVolumes).c.GetVolume(w.ctx, &volumev1.GetVolumeRequest{VolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	genBefore := vcrutil.Generation(before.GetVolume().GetVcr())
	// Hold the construction between its checkout and RUNNING.
	if _, err := s.faults.InjectUpstairsFault(w.ctx, &upstairsv1.InjectUpstairsFaultRequest{Method: "Activate", Count: 1, Delay: durationpb.New(3 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.construct(vol, s, false)
		done <- err
	}()
	eventually(t, 10*time.Second, "attachment STARTING", func() error {
		for _, a := range w.attachments(vol) {
			if a.GetState() == notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING {
				return nil
			}
		}
		return fmt.Errorf("no STARTING attachment")
	})
	// STARTING is recorded before the checkout: wait for the checkout too
	// (it bumps the generation), so that the construction holds the old
	// VCR. Without this wait, a slow run replaced the target first and the
	// construction checked out the new VCR (VCR_MATCHES below).
	rv := w.vols.(*realVolumes)
	eventually(t, 10*time.Second, "the construction's checkout", func() error {
		g, err := rv.c.GetVolume(w.ctx, &volumev1.GetVolumeRequest{VolumeId: vol})
		if err != nil {
			return err
		}
		if gen := vcrutil.Generation(g.GetVolume().GetVcr()); gen <= genBefore {
			return fmt.Errorf("generation %d, not yet bumped", gen)
		}
		return nil
	})
	// The replacement commits while the consumer holds the old VCR.
	w.vols.replaceRO(t, vol, ro[2], "[fd00:1122:3344:2fd::1]:19000")
	_, err = w.notify(vol, "race")
	wantCode(t, err, codes.FailedPrecondition, "notify during construction")
	if err := <-done; err != nil {
		t.Fatalf("construction: %v", err)
	}
	// Now RUNNING on the old VCR: the retry reaches it and it switches.
	w.mustNotify(vol, "race", resStarted, false)
	rows := w.notifications(vol)
	if len(rows) != 2 || rows[0].GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED ||
		!strings.Contains(rows[0].GetError(), "STARTING") {
		t.Fatalf("attempts: %v", rows)
	}
}

func TestNotifyStateTable(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	const (
		running   = notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING
		rebooting = notifierv1.AttachmentState_ATTACHMENT_STATE_REBOOTING
		migrating = notifierv1.AttachmentState_ATTACHMENT_STATE_MIGRATING
		stopping  = notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPING
		stopped   = notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED
		failed    = notifierv1.AttachmentState_ATTACHMENT_STATE_FAILED
	)
	tests := []struct {
		state   notifierv1.AttachmentState
		code    codes.Code
		outcome notifierv1.NotificationOutcome
	}{
		{running, codes.OK, notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED},
		{rebooting, codes.OK, notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED},
		{migrating, codes.FailedPrecondition, 0},
		{stopping, codes.FailedPrecondition, 0},
		{failed, codes.FailedPrecondition, 0},
		{stopped, codes.OK, notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NO_UPSTAIRS},
	}
	for i, tc := range tests {
		t.Run(tc.state.String(), func(t *testing.T) {
			ro := addrs(fmt.Sprintf("22%d", i), 3)
			vol := w.vols.create(t, addrs(fmt.Sprintf("12%d", i), 3), ro)
			att := w.mustConstruct(vol, s, false)
			if _, err := w.n.client.SetUpstairsState(w.ctx, &notifierv1.SetUpstairsStateRequest{AttachmentId: att.GetAttachmentId(), State: tc.state}); err != nil {
				t.Fatal(err)
			}
			w.vols.replaceRO(t, vol, ro[0], fmt.Sprintf("[fd00:1122:3344:2fc::%x]:19000", i+1))
			resp, err := w.notify(vol, "k")
			wantCode(t, err, tc.code, "notify")
			if err == nil && resp.GetOutcome() != tc.outcome {
				t.Fatalf("outcome %v, want %v", resp.GetOutcome(), tc.outcome)
			}
			if tc.outcome == notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED && resp.GetAttachments()[0].GetResult() != resStarted {
				t.Fatalf("answer %v", resp.GetAttachments()[0])
			}
			if n := len(w.notifications(vol)); n != 1 {
				t.Fatalf("%d attempts recorded, want 1", n)
			}
		})
	}

	// Reported transitions: a stopped or failed Upstairs cannot be reported
	// running again (it needs a new construction); STARTING is not reportable.
	vol := w.vols.create(t, addrs("130", 3), nil)
	att := w.mustConstruct(vol, s, false)
	set := func(st notifierv1.AttachmentState) error {
		_, err := w.n.client.SetUpstairsState(w.ctx, &notifierv1.SetUpstairsStateRequest{AttachmentId: att.GetAttachmentId(), State: st})
		return err
	}
	for _, step := range []struct {
		st   notifierv1.AttachmentState
		want codes.Code
	}{
		{migrating, codes.OK}, {running, codes.OK}, {rebooting, codes.OK}, {running, codes.OK}, {running, codes.OK},
		{stopped, codes.OK}, {running, codes.FailedPrecondition}, {rebooting, codes.FailedPrecondition},
		{failed, codes.OK}, {running, codes.FailedPrecondition},
		{notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING, codes.InvalidArgument},
		{notifierv1.AttachmentState_ATTACHMENT_STATE_UNSPECIFIED, codes.InvalidArgument},
	} {
		wantCode(t, set(step.st), step.want, "set "+step.st.String())
	}
	_, err := w.n.client.SetUpstairsState(w.ctx, &notifierv1.SetUpstairsStateRequest{AttachmentId: uuid.NewString(), State: running})
	wantCode(t, err, codes.NotFound, "unknown attachment")
}

func TestConstructVolumeRules(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s1, s2 := w.sim(), w.sim()
	vol := w.vols.create(t, addrs("140", 3), addrs("240", 3))

	a1 := w.mustConstruct(vol, s1, false)
	_, err := w.construct(vol, s2, false)
	wantCode(t, err, codes.FailedPrecondition, "second rw consumer")
	// A read-only consumer may join.
	ro := w.mustConstruct(vol, s2, true)
	// A Pantry never takes over a Propolis attachment's endpoint: the
	// replacement would then detach the user's consumer. Nothing changes.
	_, err = w.n.client.ConstructVolume(w.ctx, &notifierv1.ConstructVolumeRequest{
		VolumeId: vol, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PANTRY, Endpoint: s2.addr,
	})
	wantCode(t, err, codes.FailedPrecondition, "Pantry at a Propolis attachment's endpoint")
	for _, a := range w.attachments(vol) {
		if a.GetAttachmentId() == ro.GetAttachmentId() && (a.GetIncarnation() != 1 || a.GetKind() != notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS || !a.GetReadOnly()) {
			t.Fatalf("refused Pantry changed the read-only attachment: %v", a)
		}
	}
	// The same endpoint again is a restart: a new incarnation, no conflict.
	again := w.mustConstruct(vol, s1, false)
	if again.GetAttachmentId() != a1.GetAttachmentId() || again.GetIncarnation() != 2 {
		t.Fatalf("restart: %v", again)
	}
	if g1, g2 := simStatus(t, s1, vol).GetGeneration(), simStatus(t, s2, vol).GetGeneration(); g1 <= g2 {
		t.Fatalf("every construction checks out a higher generation: %d then %d", g2, g1)
	}
	// Once the first is stopped, another rw consumer may take over.
	if _, err := w.n.client.SetUpstairsState(w.ctx, &notifierv1.SetUpstairsStateRequest{AttachmentId: a1.GetAttachmentId(), State: notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPED}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.construct(vol, s2, false); err != nil {
		t.Fatalf("rw after the first stopped: %v", err)
	}

	// An unreachable endpoint leaves the attachment FAILED, with the reason.
	vol2 := w.vols.create(t, addrs("141", 3), nil)
	dead := &sim{process: &process{addr: freeAddr(t)}}
	_, err = w.construct(vol2, dead, false)
	wantCode(t, err, codes.Unavailable, "unreachable endpoint")
	atts := w.attachments(vol2)
	if len(atts) != 1 || atts[0].GetState() != notifierv1.AttachmentState_ATTACHMENT_STATE_FAILED || atts[0].GetError() == "" {
		t.Fatalf("attachment after failed activation: %v", atts)
	}
	if strings.Contains(atts[0].GetError(), "c2VjcmV0") {
		t.Fatal("key in error")
	}
	// A FAILED attachment blocks notification until it is detached.
	_, err = w.notify(vol2, "k")
	wantCode(t, err, codes.FailedPrecondition, "notify with a FAILED attachment")
	if _, err := w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: atts[0].GetAttachmentId()}); err != nil {
		t.Fatalf("detach a failed attachment on a dead endpoint: %v", err)
	}
	resp, err := w.notify(vol2, "k")
	if err != nil || resp.GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NO_UPSTAIRS {
		t.Fatalf("after detach: %v %v", resp, err)
	}

	// An Upstairs refusing activation (injected) also leaves it FAILED.
	vol3 := w.vols.create(t, addrs("142", 3), nil)
	if _, err := s1.faults.InjectUpstairsFault(w.ctx, &upstairsv1.InjectUpstairsFaultRequest{Method: "Activate", Count: 1, Fail: true}); err != nil {
		t.Fatal(err)
	}
	_, err = w.construct(vol3, s1, false)
	if err == nil {
		t.Fatal("construction succeeded through a failing Activate")
	}
	if atts := w.attachments(vol3); len(atts) != 1 || atts[0].GetState() != notifierv1.AttachmentState_ATTACHMENT_STATE_FAILED {
		t.Fatalf("after failing Activate: %v", atts)
	}
	// Constructing again succeeds and supersedes the failure.
	w.mustConstruct(vol3, s1, false)
}

func TestDetachUpstairs(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	vol := w.vols.create(t, addrs("150", 3), nil)
	att := w.mustConstruct(vol, s, false)
	for range 2 {
		if _, err := w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: att.GetAttachmentId()}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.up.GetVolumeStatus(w.ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol}); status.Code(err) != codes.NotFound {
		t.Fatalf("still active on the Upstairs after detach: %v", err)
	}
	if atts := w.attachments(vol); len(atts) != 0 {
		t.Fatalf("attachments after detach: %v", atts)
	}

	// A running Upstairs that cannot be reached is not forgotten silently.
	att = w.mustConstruct(vol, s, false)
	s.kill()
	_, err := w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: att.GetAttachmentId()})
	wantCode(t, err, codes.Unavailable, "detach from a dead endpoint")
	if atts := w.attachments(vol); len(atts) != 1 || atts[0].GetState() != notifierv1.AttachmentState_ATTACHMENT_STATE_STOPPING {
		t.Fatalf("after failed detach: %v", atts)
	}
	_, err = w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: "x"})
	wantCode(t, err, codes.InvalidArgument, "bad attachment id")
}

func TestBadInputRecordsNothing(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	vol := w.vols.create(t, addrs("160", 3), nil)
	unknown := uuid.NewString()
	construct := func(r *notifierv1.ConstructVolumeRequest) error {
		_, err := w.n.client.ConstructVolume(w.ctx, r)
		return err
	}
	ok := func() *notifierv1.ConstructVolumeRequest {
		return &notifierv1.ConstructVolumeRequest{VolumeId: vol, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PANTRY, Endpoint: s.addr}
	}
	cases := []struct {
		name   string
		mutate func(*notifierv1.ConstructVolumeRequest)
		want   codes.Code
	}{
		{"unknown volume", func(r *notifierv1.ConstructVolumeRequest) { r.VolumeId = unknown }, codes.NotFound},
		{"bad volume id", func(r *notifierv1.ConstructVolumeRequest) { r.VolumeId = "vol-1" }, codes.InvalidArgument},
		{"no kind", func(r *notifierv1.ConstructVolumeRequest) { r.Kind = 0 }, codes.InvalidArgument},
		{"empty endpoint", func(r *notifierv1.ConstructVolumeRequest) { r.Endpoint = "" }, codes.InvalidArgument},
		{"endpoint without port", func(r *notifierv1.ConstructVolumeRequest) { r.Endpoint = "127.0.0.1" }, codes.InvalidArgument},
		{"endpoint port out of range", func(r *notifierv1.ConstructVolumeRequest) { r.Endpoint = "127.0.0.1:70000" }, codes.InvalidArgument},
		{"endpoint garbage", func(r *notifierv1.ConstructVolumeRequest) { r.Endpoint = "http://x/y:80" }, codes.InvalidArgument},
		{"bad upstairs id", func(r *notifierv1.ConstructVolumeRequest) { r.UpstairsId = "u" }, codes.InvalidArgument},
	}
	for _, c := range cases {
		r := ok()
		c.mutate(r)
		wantCode(t, construct(r), c.want, c.name)
	}
	if rv, isReal := w.vols.(*realVolumes); isReal {
		deleted := w.vols.create(t, addrs("161", 3), nil)
		if _, err := rv.c.SoftDeleteVolume(w.ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: deleted}); err != nil {
			t.Fatal(err)
		}
		r := ok()
		r.VolumeId = deleted
		wantCode(t, construct(r), codes.FailedPrecondition, "deleted volume")
	}
	_, err := w.notify(unknown, "k")
	wantCode(t, err, codes.NotFound, "notify unknown volume")
	_, err = w.notify(vol, "")
	wantCode(t, err, codes.InvalidArgument, "notify empty key")
	_, err = w.notify("", "k")
	wantCode(t, err, codes.InvalidArgument, "notify empty volume")
	_, err = w.notify(vol, strings.Repeat("k", 600))
	wantCode(t, err, codes.InvalidArgument, "notify huge key")

	all, err := w.n.client.ListAttachments(w.ctx, &notifierv1.ListAttachmentsRequest{})
	if err != nil || len(all.GetAttachments()) != 0 {
		t.Fatalf("attachments recorded by bad input: %v %v", all, err)
	}
	ns, err := w.n.client.ListNotifications(w.ctx, &notifierv1.ListNotificationsRequest{})
	if err != nil || len(ns.GetNotifications()) != 0 {
		t.Fatalf("notifications recorded by bad input: %v %v", ns, err)
	}
	for _, bad := range []*notifierv1.ListNotificationsRequest{{PageSize: -1}, {PageToken: "%%%"}, {VolumeId: "v"}} {
		_, err := w.n.client.ListNotifications(w.ctx, bad)
		wantCode(t, err, codes.InvalidArgument, "bad list request")
	}
}

func TestListPagination(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	var vols []string
	for i := range 5 {
		vol := w.vols.create(t, addrs(fmt.Sprintf("17%d", i), 3), nil)
		w.mustConstruct(vol, s, true)
		vols = append(vols, vol)
		for j := range 2 {
			w.mustNotify(vol, fmt.Sprint("k", j), resMatches, false)
		}
	}
	var atts []*notifierv1.Attachment
	tok := ""
	for {
		r, err := w.n.client.ListAttachments(w.ctx, &notifierv1.ListAttachmentsRequest{PageSize: 2, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		atts = append(atts, r.GetAttachments()...)
		if tok = r.GetNextPageToken(); tok == "" {
			break
		}
	}
	if len(atts) != 5 {
		t.Fatalf("%d attachments", len(atts))
	}
	var ns []*notifierv1.Notification
	for {
		r, err := w.n.client.ListNotifications(w.ctx, &notifierv1.ListNotificationsRequest{PageSize: 3, PageToken: tok})
		if err != nil {
			t.Fatal(err)
		}
		ns = append(ns, r.GetNotifications()...)
		if tok = r.GetNextPageToken(); tok == "" {
			break
		}
	}
	if len(ns) != 10 {
		t.Fatalf("%d notifications", len(ns))
	}
	if got := w.notifications(vols[3]); len(got) != 2 || got[0].GetVolumeId() != vols[3] {
		t.Fatalf("filtered: %v", got)
	}
}

func TestNotifyPartialFailureKeepsSuccesses(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s1, s2 := w.sim(), w.sim()
	ro := addrs("180", 3)
	vol := w.vols.create(t, addrs("181", 3), ro)
	a1 := w.mustConstruct(vol, s1, false)
	a2 := w.mustConstruct(vol, s2, true)
	w.vols.replaceRO(t, vol, ro[0], "[fd00:1122:3344:2fb::1]:19000")

	s2.kill()
	_, err := w.notify(vol, "step")
	wantCode(t, err, codes.Unavailable, "one of two Upstairs unreachable")
	// The answer of the reachable one is kept; the other is a failed attempt.
	outcomes := map[string]notifierv1.NotificationOutcome{}
	for _, n := range w.notifications(vol) {
		outcomes[n.GetAttachmentId()] = n.GetOutcome()
	}
	if outcomes[a1.GetAttachmentId()] != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_NOTIFIED ||
		outcomes[a2.GetAttachmentId()] != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED {
		t.Fatalf("recorded outcomes %v", outcomes)
	}

	s2.restart(t)
	if again := w.mustConstruct(vol, s2, true); again.GetAttachmentId() != a2.GetAttachmentId() {
		t.Fatalf("reconstruction made a new attachment: %v", again)
	}
	// The reconstruction's checkout raised the stored generation, so this is
	// a changed VCR: both are told again. The first already switched, the
	// restarted one was built from it.
	byID := func(resp *notifierv1.NotifyReplacementResponse) map[string]*notifierv1.AttachmentNotification {
		got := map[string]*notifierv1.AttachmentNotification{}
		for _, a := range resp.GetAttachments() {
			got[a.GetAttachmentId()] = a
		}
		return got
	}
	resp, err := w.notify(vol, "step")
	if err != nil {
		t.Fatal(err)
	}
	got := byID(resp)
	if r := got[a1.GetAttachmentId()]; r == nil || r.GetDeduplicated() || r.GetResult() != resMatches {
		t.Fatalf("first Upstairs: %v", r)
	}
	if r := got[a2.GetAttachmentId()]; r == nil || r.GetDeduplicated() || r.GetResult() != resMatches || r.GetIncarnation() != 2 {
		t.Fatalf("restarted Upstairs: %v", r)
	}
	// Nothing changed since: a repeat reaches neither.
	c1, c2 := simStatus(t, s1, vol).GetReplaceCalls(), simStatus(t, s2, vol).GetReplaceCalls()
	resp, err = w.notify(vol, "step")
	if err != nil {
		t.Fatal(err)
	}
	for id, r := range byID(resp) {
		if !r.GetDeduplicated() {
			t.Fatalf("%s not deduplicated", id)
		}
	}
	if simStatus(t, s1, vol).GetReplaceCalls() != c1 || simStatus(t, s2, vol).GetReplaceCalls() != c2 {
		t.Fatal("a deduplicated notification reached an Upstairs")
	}
}

func TestStaleLeaderIsFenced(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	vol := w.vols.create(t, addrs("190", 3), nil)
	w.mustConstruct(vol, s, false)
	leader := func(epoch int64) context.Context {
		return metadata.AppendToOutgoingContext(w.ctx, fence.MetadataKey, fmt.Sprint(epoch))
	}
	if _, err := w.n.client.NotifyReplacement(leader(7), &notifierv1.NotifyReplacementRequest{VolumeId: vol, StepKey: "a"}); err != nil {
		t.Fatal(err)
	}
	calls := simStatus(t, s, vol).GetReplaceCalls()
	_, err := w.n.client.NotifyReplacement(leader(6), &notifierv1.NotifyReplacementRequest{VolumeId: vol, StepKey: "b"})
	wantCode(t, err, codes.FailedPrecondition, "stale epoch")
	if now := simStatus(t, s, vol).GetReplaceCalls(); now != calls {
		t.Fatal("a stale leader reached the Upstairs")
	}
	_, err = w.n.client.ConstructVolume(leader(6), &notifierv1.ConstructVolumeRequest{VolumeId: vol, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: s.addr})
	wantCode(t, err, codes.FailedPrecondition, "stale epoch construct")
	if atts := w.attachments(vol); len(atts) != 1 || atts[0].GetIncarnation() != 1 {
		t.Fatalf("a stale leader changed an attachment: %v", atts)
	}
}

func TestDetachDuringConstructionLeavesNothingRunning(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	s := w.sim()
	vol := w.vols.create(t, addrs("195", 3), nil)
	if _, err := s.faults.InjectUpstairsFault(w.ctx, &upstairsv1.InjectUpstairsFaultRequest{Method: "Activate", Count: 1, Delay: durationpb.New(3 * time.Second)}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := w.construct(vol, s, false)
		done <- err
	}()
	var id string
	eventually(t, 10*time.Second, "attachment STARTING", func() error {
		for _, a := range w.attachments(vol) {
			if a.GetState() == notifierv1.AttachmentState_ATTACHMENT_STATE_STARTING {
				id = a.GetAttachmentId()
				return nil
			}
		}
		return fmt.Errorf("no STARTING attachment")
	})
	if _, err := w.n.client.DetachUpstairs(w.ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: id}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, <-done, codes.FailedPrecondition, "construction of a detached attachment")
	// Nothing records it, so nothing may run it.
	if _, err := s.up.GetVolumeStatus(w.ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol}); status.Code(err) != codes.NotFound {
		t.Fatalf("orphan activation left running: %v", err)
	}
}

func TestConcurrentReadWriteConsumersOneWins(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	sims := []*sim{w.sim(), w.sim(), w.sim()}
	vol := w.vols.create(t, addrs("196", 3), nil)
	errs := make(chan error, len(sims))
	for _, s := range sims {
		go func() {
			_, err := w.construct(vol, s, false)
			errs <- err
		}()
	}
	wins := 0
	for range sims {
		err := <-errs
		switch status.Code(err) {
		case codes.OK:
			wins++
		case codes.FailedPrecondition:
		default:
			t.Fatalf("unexpected: %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d rw consumers constructed, want exactly 1", wins)
	}
	running := 0
	for _, a := range w.attachments(vol) {
		if a.GetState() == notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
			running++
		}
	}
	if running != 1 {
		t.Fatalf("%d RUNNING attachments", running)
	}
}

// deletesAfterFirstLook is the volume-service as ConstructVolume sees it
// when a user's delete lands right after its first look at the volume.
type deletesAfterFirstLook struct {
	volumeClient
	t      testing.TB
	rv     *realVolumes
	volume string
	once   sync.Once
}

func (d *deletesAfterFirstLook) GetVolume(ctx context.Context, in *volumev1.GetVolumeRequest, opts ...grpc.CallOption) (*volumev1.GetVolumeResponse, error) {
	resp, err := d.volumeClient.GetVolume(ctx, in, opts...)
	if in.GetVolumeId() == d.volume {
		d.once.Do(func() {
			if _, derr := d.rv.c.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: d.volume}); derr != nil {
				d.t.Errorf("soft delete: %v", derr)
			}
		})
	}
	return resp, err
}

// A volume deleted between ConstructVolume's first look and its record of
// the construction is refused, with nothing left running it: volume-delete
// lists attachments only after the soft delete, so its detach never sees
// this construction, and the volume's regions are destroyed next
// (scenario 33 caught an Upstairs probing destroyed targets this way).
func TestConstructRefusesVolumeDeletedMeanwhile(t *testing.T) {
	w := newWorld(t)
	s := w.sim()
	rv := w.vols.(*realVolumes)
	vol := w.vols.create(t, addrs("162", 3), nil)
	w.n.srv.volumes = &deletesAfterFirstLook{volumeClient: w.n.srv.volumes, t: t, rv: rv, volume: vol}
	_, err := w.construct(vol, s, false)
	wantCode(t, err, codes.FailedPrecondition, "volume deleted during the construction")
	if _, err := s.up.GetVolumeStatus(w.ctx, &upstairsv1.GetVolumeStatusRequest{VolumeId: vol}); status.Code(err) != codes.NotFound {
		t.Fatalf("the sim-upstairs runs the deleted volume: %v", err)
	}
	atts, err := w.n.client.ListAttachments(w.ctx, &notifierv1.ListAttachmentsRequest{VolumeId: vol})
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range atts.GetAttachments() {
		if a.GetState() != notifierv1.AttachmentState_ATTACHMENT_STATE_FAILED {
			t.Fatalf("attachment %s is %v, want FAILED", a.GetAttachmentId(), a.GetState())
		}
	}
}

// deletedMidNotify is the volume-service as NotifyReplacement sees it when a
// user's delete lands right after its read of the VCR: the volume is
// soft-deleted and its Upstairs deactivated by the delete's detach, whose
// forgetting of the attachment has not happened yet.
// deletedMidNotify is installed as the server's volume client before any
// RPC runs (the field is read by every handler, so swapping it later races
// them); volume, set later, arms it.
type deletedMidNotify struct {
	volumeClient
	t      testing.TB
	rv     *realVolumes
	sim    *sim
	volume atomic.Value // string
	once   sync.Once
}

func (d *deletedMidNotify) GetVolumeWithKeys(ctx context.Context, in *volumev1.GetVolumeWithKeysRequest, opts ...grpc.CallOption) (*volumev1.GetVolumeWithKeysResponse, error) {
	resp, err := d.volumeClient.GetVolumeWithKeys(ctx, in, opts...)
	if armed, _ := d.volume.Load().(string); armed != "" && in.GetVolumeId() == armed {
		d.once.Do(func() {
			if _, derr := d.rv.c.SoftDeleteVolume(ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: armed}); derr != nil {
				d.t.Errorf("soft delete: %v", derr)
			}
			if _, derr := d.sim.up.Deactivate(ctx, &upstairsv1.DeactivateRequest{VolumeId: armed}); derr != nil {
				d.t.Errorf("deactivate: %v", derr)
			}
		})
	}
	return resp, err
}

// A volume being deleted is VOLUME_DELETED, not a failure: the step that
// swapped it completes instead of unwinding and waiting a period. Found up
// front (nothing called), and found after an Upstairs the delete had just
// deactivated refused (that attempt is not counted as FAILED).
func TestNotifyVolumeDeleted(t *testing.T) {
	w := newWorld(t)
	rv := w.vols.(*realVolumes)
	mid := &deletedMidNotify{volumeClient: w.n.srv.volumes, t: t, rv: rv}
	w.n.srv.volumes = mid
	s := w.sim()
	mid.sim = s
	outcomes := func(vol string) map[notifierv1.NotificationOutcome]int {
		out := map[notifierv1.NotificationOutcome]int{}
		for _, n := range w.notifications(vol) {
			out[n.GetOutcome()]++
		}
		return out
	}

	upFront := w.vols.create(t, addrs("171", 3), addrs("271", 3))
	w.mustConstruct(upFront, s, false)
	w.vols.replaceRO(t, upFront, addrs("271", 3)[0], "[fd00:1122:3344:2fe::1]:19001")
	if _, err := rv.c.SoftDeleteVolume(w.ctx, &volumev1.SoftDeleteVolumeRequest{VolumeId: upFront}); err != nil {
		t.Fatal(err)
	}
	resp, err := w.notify(upFront, "step-1")
	if err != nil || resp.GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED {
		t.Fatalf("notify a soft-deleted volume: %v %v", resp, err)
	}
	if n := simStatus(t, s, upFront).GetReplaceCalls(); n != 0 {
		t.Fatalf("the Upstairs of a deleted volume was called %d times", n)
	}
	if got := outcomes(upFront); got[notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED] != 1 || len(got) != 1 {
		t.Fatalf("recorded %v, want one VOLUME_DELETED", got)
	}

	midway := w.vols.create(t, addrs("172", 3), addrs("272", 3))
	w.mustConstruct(midway, s, false)
	w.vols.replaceRO(t, midway, addrs("272", 3)[0], "[fd00:1122:3344:2fe::1]:19002")
	mid.volume.Store(midway)
	resp, err = w.notify(midway, "step-2")
	if err != nil || resp.GetOutcome() != notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED {
		t.Fatalf("notify a volume deleted midway: %v %v", resp, err)
	}
	if got := outcomes(midway); got[notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_FAILED] != 0 ||
		got[notifierv1.NotificationOutcome_NOTIFICATION_OUTCOME_VOLUME_DELETED] != 1 {
		t.Fatalf("recorded %v, want the refused attempt as VOLUME_DELETED", got)
	}
}
