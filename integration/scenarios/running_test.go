package scenarios

import (
	"testing"
	"time"

	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

const (
	attRunning   = notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING
	attMigrating = notifierv1.AttachmentState_ATTACHMENT_STATE_MIGRATING
)

// requestWithFHeld constructs F on sim-upstairs 0 and marks it MIGRATING,
// so F's step saga fails at notify_upstairs and unwinds (F's VCR back to A,
// step Requested) on every pass; then requests the replacement of A and
// waits until the request is Running and F's step has failed once. The
// request cannot finish: F still holds A.
func (w *world) requestWithFHeld(t *testing.T) (id, stepID string) {
	t.Helper()
	w.construct(t, w.F, 0, false)
	w.setState(t, w.F, attMigrating)
	id = w.request(t, w.A.TargetId)
	// Passive waits: nothing but the request's own phases activates the
	// step task, so once its one saga has unwound nothing is in flight.
	w.waitStatePassive(t, id, 60*time.Second, roRunning)
	w.waitFailedSagas(t, "ro-replacement-step", "", 1)
	got := w.waitStatePassive(t, id, 10*time.Second, roRunning)
	s := stepOf(got, w.F)
	if s == nil || s.State != stepRequested {
		t.Fatalf("F's step after a failed notify: %v", s)
	}
	if ids := targetIDs(t, w, w.F); !contains(ids, w.A.TargetId) {
		t.Fatalf("F's VCR no longer names A after the unwind: %v", ids)
	}
	return id, s.StepId
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// releaseF lets F's Upstairs be notified and runs the step task.
func (w *world) releaseF(t *testing.T) {
	t.Helper()
	w.setState(t, w.F, attRunning)
	w.activate(t, "ro_replacement_step")
}

// Scenario 28: P and D are deleted once the start saga has swapped B into
// P (ReplacementDone); B must survive through the reference-bump volume
// until F's step needs it. Forced: P and D are deleted as soon as the
// request is seen at ReplacementDone or later, and F's step cannot complete
// before (F is MIGRATING), so the deletes land after the swap and before
// F's step. Not forced: whether the garbage collect saga (started by the
// start saga itself) has run by then — no public API holds it, so the
// deletes race it (the state seen is logged); scenario 29 covers "after".
func TestScenario28DeleteSnapshotAndDiskAfterReplacementDone(t *testing.T) {
	w := newWorld(t, 4)
	w.construct(t, w.F, 0, false)
	w.setState(t, w.F, attMigrating)
	id := w.request(t, w.A.TargetId)
	got := w.waitStatePassive(t, id, 60*time.Second, roReplacementDone, roDeletingOld, roRunning)
	t.Logf("deleting P and D with the request %v", got.Replacement.ReadOnlyState)
	b := got.Replacement.NewRegionId
	w.deleteUser(t, w.P)
	w.deleteUser(t, w.D)
	w.waitIdle(t)
	bt := w.wantAlive(t, b) // only the reference volume (and F's pending step) keeps it
	if got := w.get(t, id).Replacement.ReadOnlyState; got != roRunning {
		t.Fatalf("request %v while F cannot be stepped", got)
	}
	w.releaseF(t)
	w.waitState(t, id, 60*time.Second, roComplete)
	w.wantNames(t, w.F, w.A.TargetId, b)
	if addrs := w.runs(t, 0, w.F); !contains(addrs, bt.Address) || contains(addrs, w.A.Address) {
		t.Errorf("sim-upstairs-0 runs F with %v: want %s instead of %s", addrs, bt.Address, w.A.Address)
	}
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// Scenario 29: P and D are deleted with the request Running (garbage
// collect done) and F's step pending. Forced: F is MIGRATING, so its step
// unwinds on every pass until released.
func TestScenario29DeleteSnapshotAndDiskWhileRunning(t *testing.T) {
	w := newWorld(t, 4)
	id, _ := w.requestWithFHeld(t)
	b := w.get(t, id).Replacement.NewRegionId
	w.deleteUser(t, w.P)
	w.deleteUser(t, w.D)
	w.waitIdle(t)
	bt := w.wantAlive(t, b)
	w.releaseF(t)
	w.waitState(t, id, 60*time.Second, roComplete)
	w.wantNames(t, w.F, w.A.TargetId, b)
	if addrs := w.runs(t, 0, w.F); !contains(addrs, bt.Address) {
		t.Errorf("sim-upstairs-0 runs F with %v: want %s", addrs, bt.Address)
	}
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// Scenario 30: Running with a Requested step for F, then F is deleted: the
// step task retires the step (Requested → VolumeDeleted, lock released)
// without starting a saga, and the request completes. Forced: F's step is
// held Requested (F MIGRATING); F is detached (which activates nothing)
// and deleted, and only that delete's activations run the step task.
func TestScenario30DeleteCloneWithRequestedStep(t *testing.T) {
	w := newWorld(t, 4)
	id, step := w.requestWithFHeld(t)
	w.deleteUser(t, w.F)
	got := w.waitState(t, id, 60*time.Second, roComplete)
	if s := stepOf(got, w.F); s == nil || s.StepId != step || s.State != stepVolumeDeleted {
		t.Fatalf("F's step %v", s)
	}
	// Retired from Requested, never completed by a saga.
	if n := w.sagasEnded(t, "ro-replacement-step", step, "succeeded"); n != 0 {
		t.Errorf("%d step sagas succeeded for F's step", n)
	}
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// removeParent moves F's read-only parent into a new blank volume, as a
// scrub would, and returns that volume.
func (w *world) removeParent(t *testing.T, volume string) string {
	t.Helper()
	temp := w.blankVolume(t)
	resp, err := w.Volumes.RemoveReadOnlyParent(w.ctx, &volumev1.RemoveReadOnlyParentRequest{VolumeId: volume, TempVolumeId: temp})
	if err != nil || !resp.Removed {
		t.Fatalf("remove read-only parent of %s: %v %v", volume, resp, err)
	}
	return temp
}

// Scenario 31: Running with a Requested step for F, then F's read-only
// parent is removed: the step no longer references A and is retired
// (¬referenced) while A is still alive. Forced: F's step is held Requested
// (F MIGRATING), F is detached and its parent moved into a temporary
// volume; nothing activates the step task until the test does. The
// temporary volume now names A and gets (and completes) a step of its own.
func TestScenario31RemoveReadOnlyParentWithRequestedStep(t *testing.T) {
	w := newWorld(t, 4)
	id, step := w.requestWithFHeld(t)
	w.detach(t, w.F)
	temp := w.removeParent(t, w.F)
	w.wantAlive(t, w.A.TargetId)
	w.activate(t, "ro_replacement_step")
	got := w.waitState(t, id, 60*time.Second, roComplete)
	if s := stepOf(got, w.F); s == nil || s.StepId != step || s.State != stepVolumeDeleted {
		t.Fatalf("F's step %v", s)
	}
	if s := stepOf(got, temp); s == nil || s.State != stepVolumeDeleted {
		t.Fatalf("the temporary volume's step %v", s)
	}
	// Retired from Requested, never completed by a saga.
	if n := w.sagasEnded(t, "ro-replacement-step", step, "succeeded"); n != 0 {
		t.Errorf("%d step sagas succeeded for F's step", n)
	}
	w.wantNames(t, temp, w.A.TargetId, got.Replacement.NewRegionId)
	w.wantGone(t, w.A.TargetId)
	w.finish(t, temp)
}

// Scenario 32: as 31, after deleting D and P, and with the temporary volume
// deleted too, so A's count reaches zero and it is destroyed before the
// step task looks: the step is retired because A is gone, and the finish
// proceeds. Forced as in 31; the temporary volume's delete is what
// activates the tasks.
func TestScenario32RemoveReadOnlyParentTargetGone(t *testing.T) {
	w := newWorld(t, 4)
	id, step := w.requestWithFHeld(t)
	w.deleteUser(t, w.D)
	w.deleteUser(t, w.P)
	w.waitIdle(t)
	w.detach(t, w.F)
	temp := w.removeParent(t, w.F)
	w.DeleteVolume(t, temp)
	w.wantGone(t, w.A.TargetId)
	got := w.waitState(t, id, 60*time.Second, roComplete)
	if s := stepOf(got, w.F); s == nil || s.StepId != step || s.State != stepVolumeDeleted {
		t.Fatalf("F's step %v", s)
	}
	if s := stepOf(got, temp); s != nil {
		t.Errorf("the deleted temporary volume got a step: %v", s)
	}
	// Retired from Requested, never completed by a saga.
	if n := w.sagasEnded(t, "ro-replacement-step", step, "succeeded"); n != 0 {
		t.Errorf("%d step sagas succeeded for F's step", n)
	}
	w.finish(t)
}
