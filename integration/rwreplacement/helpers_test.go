package rwreplacement

import (
	"context"
	"fmt"
	"testing"
	"time"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// rwRack is the shared rack fixture plus the rw replacement helpers.
type rwRack struct{ *rack.Rack }

// Short names for the rw request states the tests wait for.
const (
	rwRequested = orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_REQUESTED
	rwRunning   = orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_RUNNING
	rwComplete  = orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE
)

// startRack starts a rack (every task period at an hour; the rw drive task
// keeps its own period) with two sim-upstairs, each given simArgs.
func startRack(t *testing.T, sleds, disksPerSled int, simArgs ...string) rwRack {
	t.Helper()
	extra := map[string][]string{}
	for i := 0; i < 2; i++ {
		extra[fmt.Sprintf("%s-%d", stack.SimUpstairs, i)] = simArgs
	}
	return rwRack{rack.Start(t, sleds, disksPerSled, stack.Config{SimUpstairs: 2, ExtraArgs: extra})}
}

func (r rwRack) activate(t *testing.T, task string) {
	t.Helper()
	if _, err := r.Admin.ActivateBackgroundTask(context.Background(), &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
		t.Fatal(err)
	}
}

// regionSet returns a volume's rw region targets and the region set's
// generation.
func (r rwRack) regionSet(t *testing.T, volume string) ([]*commonv1.Target, uint64) {
	t.Helper()
	resp, err := r.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	gen := resp.Volume.GetVcr().GetVolume().GetSubVolumes()[0].GetRegion().GetGen()
	return r.Targets(t, volume, commonv1.TargetKind_TARGET_KIND_RW_REGION), gen
}

// expungeRegion expunges the disk holding the first rw region of a volume
// and returns that region and the region set's generation before.
func (r rwRack) expungeRegion(t *testing.T, volume string) (*commonv1.Target, uint64) {
	t.Helper()
	regions, gen := r.regionSet(t, volume)
	old := regions[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	return old, gen
}

// rwRequests lists the rw replacement requests through the orchestrator.
func (r rwRack) rwRequests(t *testing.T) []*orchestratorv1.Replacement {
	t.Helper()
	var out []*orchestratorv1.Replacement
	for token := ""; ; {
		resp, err := r.Replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{
			PageSize: 1000, PageToken: token, Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION,
		})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, resp.Replacements...)
		if token = resp.NextPageToken; token == "" {
			return out
		}
	}
}

// rwRequestFor returns the rw request replacing a region, or an error
// while there is none.
func (r rwRack) rwRequestFor(t *testing.T, region string) (*orchestratorv1.Replacement, error) {
	t.Helper()
	for _, q := range r.rwRequests(t) {
		if q.OldRegionId == region {
			return q, nil
		}
	}
	return nil, fmt.Errorf("no rw request for %s yet", region)
}

// waitRW waits until the rw request for a region reaches a state. poke,
// if not nil, runs before every look.
func (r rwRack) waitRW(t *testing.T, region string, state orchestratorv1.RegionReplacementState, timeout time.Duration, poke ...func()) *orchestratorv1.Replacement {
	t.Helper()
	var got *orchestratorv1.Replacement
	harness.Eventually(t, timeout, fmt.Sprintf("rw request for %s %v", region, state), func() error {
		for _, p := range poke {
			p()
		}
		q, err := r.rwRequestFor(t, region)
		if err != nil {
			return err
		}
		got = q
		if q.RegionState != state {
			return fmt.Errorf("request %s is %v", q.ReplacementId, q.RegionState)
		}
		return nil
	})
	return got
}

// driveSteps returns a rw request's recorded drive attempts, oldest first.
func (r rwRack) driveSteps(t *testing.T, request string) []*orchestratorv1.DriveStep {
	t.Helper()
	resp, err := r.Replacement.GetReplacement(context.Background(), &orchestratorv1.GetReplacementRequest{ReplacementId: request})
	if err != nil {
		t.Fatal(err)
	}
	return resp.DriveSteps
}

// repairFinished reports whether an Upstairs reported a successful repair
// of the target at addr.
func (r rwRack) repairFinished(t *testing.T, addr string) bool {
	t.Helper()
	resp, err := r.Notifier.ListRepairNotifications(context.Background(), &notifierv1.ListRepairNotificationsRequest{TargetAddress: addr, PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range resp.Notifications {
		if n.NotificationType == notifierv1.RepairNotificationType_REPAIR_NOTIFICATION_TYPE_SUCCEEDED {
			return true
		}
	}
	return false
}

// activateDriveOnRepair waits until the request for oldRegion has a new
// region and the Upstairs reported it repaired, then activates the drive
// task rather than leaving it to notice. It returns the time the repair
// was seen done.
func (r rwRack) activateDriveOnRepair(t *testing.T, oldRegion string, timeout time.Duration) time.Time {
	t.Helper()
	var addr string
	harness.Eventually(t, timeout, "new region allocated", func() error {
		q, err := r.rwRequestFor(t, oldRegion)
		if err != nil {
			return err
		}
		if q.NewRegionId == "" {
			return fmt.Errorf("no new region yet")
		}
		tg, err := r.Volumes.GetTarget(context.Background(), &volumev1.GetTargetRequest{TargetId: q.NewRegionId})
		if err != nil {
			return err
		}
		addr = tg.Target.Address
		return nil
	})
	var seen time.Time
	harness.Eventually(t, timeout, "Upstairs reports the new region repaired", func() error {
		if !r.repairFinished(t, addr) {
			return fmt.Errorf("not yet")
		}
		seen = time.Now()
		return nil
	})
	r.activate(t, "rw_replacement_drive")
	return seen
}

func (r rwRack) locks(t *testing.T) int {
	t.Helper()
	resp, err := r.Replacement.ListLocks(context.Background(), &orchestratorv1.ListLocksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Locks)
}
