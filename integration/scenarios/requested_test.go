package scenarios

import (
	"testing"
	"time"
)

// unblockStart clears the agent faults and activates the start task: the
// request now runs to the end by itself.
func (w *world) unblockAndStart(t *testing.T) {
	t.Helper()
	w.unblockStart(t)
	w.activate(t, "ro_replacement_start")
}

// Scenario 25: P is deleted while the request is Requested; D and F
// remain. Forced: every start saga fails at its region ensure until P's
// delete saga has finished, so the start saga that succeeds runs on a
// hard-deleted snapshot volume (the swap answers HARD_DELETED); F still
// names A and gets a step.
func TestScenario25DeleteSnapshotWhileRequested(t *testing.T) {
	w := newWorld(t, 4)
	id := w.requestHeldInRequested(t, w.A.TargetId)
	w.deleteUser(t, w.P)
	if _, err := w.Volumes.GetVolume(w.ctx, volumeReq(w.P)); err == nil {
		t.Fatalf("snapshot volume %s still exists after its delete", w.P)
	}
	w.unblockAndStart(t)
	got := w.waitState(t, id, 60*time.Second, roComplete)
	if s := stepOf(got, w.F); s == nil || s.State != stepVolumeDeleted {
		t.Fatalf("F's step: %v (steps %v)", s, got.Steps)
	}
	w.wantNames(t, w.F, w.A.TargetId, got.Replacement.NewRegionId)
	w.wantGone(t, w.A.TargetId)
	w.finish(t)
}

// Scenario 26: P and D are deleted while Requested; only F holds A.
// Forced as in 25. D's volume is only soft-deleted (its regions are pinned
// by P's region snapshots, which F still references).
func TestScenario26DeleteSnapshotAndDiskWhileRequested(t *testing.T) {
	w := newWorld(t, 4)
	id := w.requestHeldInRequested(t, w.A.TargetId)
	w.deleteUser(t, w.P)
	w.deleteUser(t, w.D)
	w.unblockAndStart(t)
	got := w.waitState(t, id, 60*time.Second, roComplete)
	if s := stepOf(got, w.F); s == nil || s.State != stepVolumeDeleted {
		t.Fatalf("F's step: %v (steps %v)", s, got.Steps)
	}
	w.wantNames(t, w.F, w.A.TargetId, got.Replacement.NewRegionId)
	w.wantGone(t, w.A.TargetId)
	w.finish(t, w.D) // D's kept volume is freed once F lets go of P's region snapshots
}

// Scenario 27: P, D and F are deleted while Requested: A's count reaches
// zero and it is destroyed, so the start task completes the request
// directly (R10) without starting a saga or allocating anything. Forced as
// in 25; the faults stay on, so no start saga could have succeeded.
func TestScenario27DeleteEverythingWhileRequested(t *testing.T) {
	w := newWorld(t, 4)
	id := w.requestHeldInRequested(t, w.A.TargetId)
	// Each delete activates every task at its end; waiting for the start
	// saga it provokes (which fails at its ensure) keeps any start saga from
	// running while F's delete frees A (see the racing variant below).
	for _, v := range []string{w.P, w.D} {
		n := w.failedSagas(t, "ro-replacement-start", id)
		w.deleteUser(t, v)
		w.waitFailedSagas(t, "ro-replacement-start", id, n+1)
	}
	w.deleteUser(t, w.F)
	w.wantGone(t, w.A.TargetId)
	w.activate(t, "ro_replacement_start")
	got := w.waitState(t, id, 30*time.Second, roComplete)
	if got.Replacement.NewRegionId != "" || len(got.Steps) != 0 {
		t.Fatalf("completed with new region %q and steps %v", got.Replacement.NewRegionId, got.Steps)
	}
	if n := w.sagasEnded(t, "ro-replacement-start", id, "succeeded"); n != 0 {
		t.Errorf("%d start sagas succeeded", n)
	}
	w.unblockStart(t)
	w.finish(t)
}

// Scenario 27 with the deletes racing the start sagas they provoke: a start
// saga started while A was still alive may reach get_clone_source after
// F's delete made every region snapshot of P (A included) DELETING. It used
// to end the request DataLost — a false alarm, nothing referenced A any
// more — until 64e5b33 (a gone target completes the request); this keeps
// it so. Which interleaving occurs is timing-dependent; both must end
// Complete.
func TestScenario27DeleteEverythingRacingStart(t *testing.T) {
	w := newWorld(t, 4)
	id := w.requestHeldInRequested(t, w.A.TargetId)
	w.deleteUser(t, w.P)
	w.deleteUser(t, w.D)
	w.deleteUser(t, w.F)
	w.wantGone(t, w.A.TargetId)
	w.activate(t, "ro_replacement_start")
	got := w.waitState(t, id, 30*time.Second, roComplete, roDataLost)
	if got.Replacement.ReadOnlyState != roComplete {
		t.Errorf("request ended %v although nothing referenced A any more", got.Replacement.ReadOnlyState)
	}
	w.unblockStart(t)
	w.finish(t)
}
