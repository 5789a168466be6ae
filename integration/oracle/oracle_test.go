// Package oracle proves that the sim-upstairs content oracle can fail: each
// test runs one replacement scenario twice over real processes, once with a
// deliberate replacement bug switched on in the orchestrator
// (STORAGECP_SABOTAGE, a dev-only hook) and once without. With the bug the
// oracle must fire — where the liveness (data-loss) probe stays silent —
// and without it the same scenario must be clean.
package oracle

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// start starts a rack of sleds with one disk each, the orchestrator running
// the named sabotage ("" for none).
func start(t *testing.T, sleds int, sabotage string) *rack.Rack {
	t.Helper()
	var cfg stack.Config
	if sabotage != "" {
		cfg.Env = []string{"STORAGECP_SABOTAGE=" + sabotage}
	}
	return rack.Start(t, sleds, 1, cfg)
}

// write writes to a volume running on sim i once its activation has
// reconciled, and returns the content identity its rw regions now hold.
func write(t *testing.T, r *rack.Rack, sim int, volume string) string {
	t.Helper()
	var content string
	harness.Eventually(t, 30*time.Second, "write to "+volume, func() error {
		resp, err := r.Sims[sim].Write(context.Background(), &upstairsv1.WriteRequest{VolumeId: volume})
		if err != nil {
			return err
		}
		content = resp.Content
		return nil
	})
	return content
}

func status(t *testing.T, r *rack.Rack, sim int, volume string) *upstairsv1.VolumeStatus {
	t.Helper()
	st, err := r.Sims[sim].GetVolumeStatus(context.Background(), &upstairsv1.GetVolumeStatusRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	return st.Status
}

// readOnlyPosition returns the read-only position of a volume running on
// sim i once its content is recorded, and that content.
func readOnlyPosition(t *testing.T, r *rack.Rack, sim int, volume string) (position, content string) {
	t.Helper()
	harness.Eventually(t, 10*time.Second, "read-only position recorded", func() error {
		for _, p := range status(t, r, sim, volume).Positions {
			if p.ReadOnly && p.Expected != "" {
				position, content = p.Position, p.Expected
				return nil
			}
		}
		return fmt.Errorf("no read-only position with known content yet")
	})
	return position, content
}

// expunge expunges the disks holding the datasets at once, then activates
// both detectors, as `storctl disks expunge` does for each.
func expunge(t *testing.T, r *rack.Rack, datasets ...string) {
	t.Helper()
	var disks []string
	for _, d := range datasets {
		disks = append(disks, r.DiskOf(t, d))
	}
	for _, d := range disks {
		r.Expunge(t, d)
	}
}

// clean ends a scenario that must be clean the way every end-to-end test
// ends: both oracles included.
func clean(t *testing.T, r *rack.Rack) {
	t.Helper()
	r.WaitRequests(t, 90*time.Second)
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
}

// fired waits until some sim-upstairs reports a content mismatch that want
// accepts, then checks that the liveness probe saw no data loss: only the
// content oracle can see these bugs.
func fired(t *testing.T, r *rack.Rack, what string, want func(*upstairsv1.ContentMismatch) bool) {
	t.Helper()
	harness.Eventually(t, 90*time.Second, "content oracle fires: "+what, func() error {
		total, found := r.ContentMismatches(t)
		for _, m := range found {
			if want(m) {
				t.Logf("content mismatch (%d in all): %v at %s on %v: expected %q, read %q", total, m.Kind, m.Position, m.Addresses, m.Expected, m.Observed)
				return nil
			}
		}
		return fmt.Errorf("%d content mismatches, none the one expected: %v", total, found)
	})
	for i, s := range r.Sims {
		resp, err := s.ListVolumes(context.Background(), &upstairsv1.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.TotalDataLossEvents != 0 {
			t.Errorf("sim-upstairs-%d counted %d data-loss probes: the liveness probe saw this bug too", i, resp.TotalDataLossEvents)
		}
	}
}

// wrong_clone_source: a disk running on sim-upstairs 0 is written,
// snapshotted (S1), written again and snapshotted again (S2); a clone of S1
// runs on sim-upstairs 1; the disk of one of S1's region snapshots is
// expunged. Sabotaged, ro-replacement-start clones S1's new read-only region from S2's
// copy: every target stays served — the liveness probe is content — but the
// clone's read-only parent now reads the second write where it read the
// first.
func TestWrongCloneSource(t *testing.T) {
	for _, sabotaged := range []bool{true, false} {
		t.Run(fmt.Sprintf("sabotaged=%v", sabotaged), func(t *testing.T) {
			sabotage := ""
			if sabotaged {
				sabotage = "ro-replacement-start/wrong_clone_source"
			}
			r := start(t, 6, sabotage)
			disk := r.CreateDisk(t)
			r.Construct(t, disk, 0)
			w1 := write(t, r, 0, disk)
			s1 := r.Snapshot(t, disk)
			w2 := write(t, r, 0, disk)
			r.Snapshot(t, disk)
			clone := r.Clone(t, s1)
			r.Construct(t, clone, 1)
			position, held := readOnlyPosition(t, r, 1, clone)
			if held != w1 {
				t.Fatalf("the clone's read-only parent holds %q, want the first write %q", held, w1)
			}

			old := r.Targets(t, s1, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
			expunge(t, r, old.DatasetId)
			if !sabotaged {
				clean(t, r)
				return
			}
			fired(t, r, "the clone reads the second snapshot", func(m *upstairsv1.ContentMismatch) bool {
				return m.Kind == upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_CHANGED &&
					m.Position == position && m.Expected == w1 && m.Observed == w2
			})
		})
	}
}

// skip_swap: a snapshot's clone runs on sim-upstairs 0; the disk of one of
// the snapshot's region snapshots (A) is expunged and, once the clone's
// step has run, the disks of the two other copies too. Done right, the
// first replacement's read-only region B already stands in for A in the
// clone, and the other two are cloned from it. Sabotaged, the step leaves
// the clone on A (unreachable, never destroyed: its reference keeps it, so
// the liveness probe has nothing to count) while reporting the swap done;
// the request then never finishes and holds the snapshot's lock, so the
// other two copies are never replaced, and the clone can no longer read its
// read-only parent at all.
func TestSkipSwap(t *testing.T) {
	for _, sabotaged := range []bool{true, false} {
		t.Run(fmt.Sprintf("sabotaged=%v", sabotaged), func(t *testing.T) {
			sabotage := ""
			if sabotaged {
				sabotage = "ro-replacement-step/skip_swap"
			}
			r := start(t, 8, sabotage)
			disk := r.CreateDisk(t)
			snap := r.Snapshot(t, disk)
			copies := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
			var copyDatasets []string
			for _, c := range copies {
				copyDatasets = append(copyDatasets, c.DatasetId)
			}
			clone := cloneNotAllOn(t, r, snap, copyDatasets)
			r.Construct(t, clone, 0)
			position, _ := readOnlyPosition(t, r, 0, clone)

			expunge(t, r, copies[0].DatasetId)
			waitStep(t, r, copies[0].TargetId, clone)
			expunge(t, r, copies[1].DatasetId, copies[2].DatasetId)
			if !sabotaged {
				clean(t, r)
				return
			}
			fired(t, r, "the clone cannot read its read-only parent", func(m *upstairsv1.ContentMismatch) bool {
				return m.Kind == upstairsv1.ContentMismatchKind_CONTENT_MISMATCH_KIND_UNREADABLE && m.Position == position
			})
		})
	}
}

// cloneNotAllOn clones snap until a clone has a rw region off the given
// datasets: expunging all three would leave that clone's own data
// unreadable whatever the control plane does. A clone it rejects is
// deleted, for the same reason: left behind, its rw replacement would
// reconcile it on a Pantry after the test expunged every copy of its data,
// and the oracle would rightly report it unreadable (a flake, seen once,
// that depended on placement).
func cloneNotAllOn(t *testing.T, r *rack.Rack, snap string, datasets []string) string {
	t.Helper()
	for range 10 {
		clone := r.Clone(t, snap)
		for _, rg := range r.Targets(t, clone, commonv1.TargetKind_TARGET_KIND_RW_REGION) {
			if !slices.Contains(datasets, rg.DatasetId) {
				return clone
			}
		}
		r.DeleteVolume(t, clone)
	}
	t.Fatal("ten clones all on the snapshot's disks")
	return ""
}

// waitStep waits until the request replacing target has run its step for
// volume to the end (the step's swap, notification and collection done).
func waitStep(t *testing.T, r *rack.Rack, target, volume string) {
	t.Helper()
	ctx := context.Background()
	harness.Eventually(t, 60*time.Second, "the step for "+volume, func() error {
		reqs, err := r.Replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, q := range reqs.Replacements {
			if q.OldTargetId != target {
				continue
			}
			steps, err := r.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{ReplacementId: q.ReplacementId, PageSize: 1000})
			if err != nil {
				return err
			}
			for _, s := range steps.Steps {
				if s.VolumeId == volume && s.State == orchestratorv1.StepState_STEP_STATE_VOLUME_DELETED {
					return nil
				}
			}
			return fmt.Errorf("steps %v", steps.Steps)
		}
		return fmt.Errorf("no request for %s yet", target)
	})
}
