// Package rwreplacement tests read/write region replacement end to end over
// real processes: live repair through a running consumer, reconciliation on
// a Pantry-like sim-upstairs when none, and a consumer restarted mid-repair.
package rwreplacement

import (
	"context"
	"fmt"
	"testing"
	"time"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/db"

	"storagecp.dev/deploy/stack"
	"storagecp.dev/integration/harness"
)

// rack is a running deployment with clients for every service. Copied from
// integration/replacement (trimmed), plus read access to the orchestrator's
// database: the ReplacementService does not list rw requests yet.
type rack struct {
	st          *stack.Stack
	volumes     volumev1.VolumeServiceClient
	allocator   allocatorv1.RegionAllocatorServiceClient
	notifier    notifierv1.UpstairsNotifierServiceClient
	lifecycle   orchestratorv1.LifecycleServiceClient
	replacement orchestratorv1.ReplacementServiceClient
	admin       orchestratorv1.AdminServiceClient
	sims        []upstairsv1.UpstairsServiceClient
	orchDB      db.Querier
}

const gib = 1 << 30

// startRack starts the stack with every task period at an hour (the rw
// drive task still runs every 10 s, its own period) and seeds sleds.
// simArgs are extra arguments for every sim-upstairs.
func startRack(t *testing.T, sleds, disksPerSled int, simArgs ...string) *rack {
	t.Helper()
	extra := map[string][]string{stack.Orchestrator: {"--task-period", "1h", "--lease-ttl", "3s"}}
	for i := 0; i < 2; i++ {
		extra[fmt.Sprintf("%s-%d", stack.SimUpstairs, i)] = simArgs
	}
	st := harness.Start(t, stack.Config{SimUpstairs: 2, ExtraArgs: extra})
	r := &rack{
		st:          st,
		volumes:     volumev1.NewVolumeServiceClient(harness.Dial(t, st.Addr(stack.Volume))),
		allocator:   allocatorv1.NewRegionAllocatorServiceClient(harness.Dial(t, st.Addr(stack.Allocator))),
		notifier:    notifierv1.NewUpstairsNotifierServiceClient(harness.Dial(t, st.Addr(stack.Notifier))),
		lifecycle:   orchestratorv1.NewLifecycleServiceClient(harness.Dial(t, st.Addr(stack.Orchestrator))),
		replacement: orchestratorv1.NewReplacementServiceClient(harness.Dial(t, st.Addr(stack.Orchestrator))),
		admin:       orchestratorv1.NewAdminServiceClient(harness.Dial(t, st.Addr(stack.Orchestrator))),
	}
	for _, a := range st.SimUpstairsAddrs() {
		r.sims = append(r.sims, upstairsv1.NewUpstairsServiceClient(harness.Dial(t, a)))
	}
	ctx := context.Background()
	pool, err := db.Open(ctx, st.Cluster.DSN(stack.DatabaseOf(stack.Orchestrator)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	r.orchDB = pool
	for s := 0; s < sleds; s++ {
		sled, err := r.allocator.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprintf("sled-%d", s)})
		if err != nil {
			t.Fatal(err)
		}
		for d := 0; d < disksPerSled; d++ {
			if _, err := r.allocator.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
				SledId: sled.Sled.SledId, CapacityBytes: 200 * gib, DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::%x", 0x100+s, d+1),
			}); err != nil {
				t.Fatal(err)
			}
		}
	}
	harness.Eventually(t, 30*time.Second, "orchestrator leads", func() error {
		l, err := r.admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
		if err != nil {
			return err
		}
		if !l.IsLeader {
			return fmt.Errorf("not leader yet: %+v", l)
		}
		return nil
	})
	return r
}

func wantSucceeded(t *testing.T, what string, s *orchestratorv1.SagaResult) {
	t.Helper()
	if s.GetOutcome() != orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED {
		t.Fatalf("%s: saga %s ended %v at %s: %s", what, s.GetSagaId(), s.GetOutcome(), s.GetFailedNode(), s.GetError())
	}
}

func (r *rack) createDisk(t *testing.T) string {
	t.Helper()
	resp, err := r.lifecycle.CreateVolume(context.Background(), &orchestratorv1.CreateVolumeRequest{SizeBytes: gib, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	wantSucceeded(t, "create disk", resp.Saga)
	return resp.VolumeId
}

func (r *rack) snapshot(t *testing.T, disk string) string {
	t.Helper()
	resp, err := r.lifecycle.SnapshotVolume(context.Background(), &orchestratorv1.SnapshotVolumeRequest{VolumeId: disk, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	wantSucceeded(t, "snapshot", resp.Saga)
	return resp.SnapshotId
}

func (r *rack) deleteVolume(t *testing.T, id string) {
	t.Helper()
	resp, err := r.lifecycle.DeleteVolume(context.Background(), &orchestratorv1.DeleteVolumeRequest{VolumeId: id, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	wantSucceeded(t, "delete "+id, resp.Saga)
}

// construct builds a volume on sim-upstairs i as a Propolis consumer; again
// on the same endpoint it is a restart (next incarnation).
func (r *rack) construct(t *testing.T, volume string, sim int) *notifierv1.Attachment {
	t.Helper()
	resp, err := r.notifier.ConstructVolume(context.Background(), &notifierv1.ConstructVolumeRequest{
		VolumeId: volume, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: r.st.SimUpstairsAddrs()[sim],
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp.Attachment.State != notifierv1.AttachmentState_ATTACHMENT_STATE_RUNNING {
		t.Fatalf("attachment %+v", resp.Attachment)
	}
	return resp.Attachment
}

// regionSet returns a volume's rw region targets and the region set's
// generation.
func (r *rack) regionSet(t *testing.T, volume string) ([]*commonv1.Target, uint64) {
	t.Helper()
	resp, err := r.volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	var out []*commonv1.Target
	for _, tg := range resp.Volume.Targets {
		if tg.Kind == commonv1.TargetKind_TARGET_KIND_RW_REGION {
			out = append(out, tg)
		}
	}
	return out, resp.Volume.GetVcr().GetVolume().GetSubVolumes()[0].GetRegion().GetGen()
}

func (r *rack) targets(t *testing.T, volume string, kind commonv1.TargetKind) []*commonv1.Target {
	t.Helper()
	resp, err := r.volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: volume})
	if err != nil {
		t.Fatal(err)
	}
	var out []*commonv1.Target
	for _, tg := range resp.Volume.Targets {
		if tg.Kind == kind {
			out = append(out, tg)
		}
	}
	return out
}

// diskOf returns the physical disk holding a dataset.
func (r *rack) diskOf(t *testing.T, dataset string) string {
	t.Helper()
	resp, err := r.allocator.ListPhysicalDisks(context.Background(), &allocatorv1.ListPhysicalDisksRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range resp.Disks {
		if d.DatasetId == dataset {
			return d.DiskId
		}
	}
	t.Fatalf("no disk holds dataset %s", dataset)
	return ""
}

// expunge expunges a disk and activates both detectors, as `storctl disks
// expunge` does.
func (r *rack) expunge(t *testing.T, disk string) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: disk}); err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}
}

func (r *rack) activate(t *testing.T, task string) {
	t.Helper()
	if _, err := r.admin.ActivateBackgroundTask(context.Background(), &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
		t.Fatal(err)
	}
}

// rwRequest is a rw replacement request as stored by the orchestrator.
type rwRequest struct {
	ID, OldRegion, Volume, State string
	NewRegion, Stash             *string
}

func (r *rack) rwRequests(t *testing.T) []rwRequest {
	t.Helper()
	rows, err := r.orchDB.Query(context.Background(), `SELECT id::text, old_region_id::text, volume_id::text, state,
		new_region_id::text, old_region_volume_id::text FROM rw_replacement ORDER BY request_time`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []rwRequest
	for rows.Next() {
		var q rwRequest
		if err := rows.Scan(&q.ID, &q.OldRegion, &q.Volume, &q.State, &q.NewRegion, &q.Stash); err != nil {
			t.Fatal(err)
		}
		out = append(out, q)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// waitRW waits until the rw request for a region reaches a state.
func (r *rack) waitRW(t *testing.T, region, state string, timeout time.Duration) rwRequest {
	t.Helper()
	var got rwRequest
	harness.Eventually(t, timeout, "rw request for "+region+" "+state, func() error {
		for _, q := range r.rwRequests(t) {
			if q.OldRegion == region {
				got = q
				if q.State == state {
					return nil
				}
				return fmt.Errorf("request %s is %s", q.ID, q.State)
			}
		}
		return fmt.Errorf("no request yet")
	})
	return got
}

// driveStep is one recorded drive attempt.
type driveStep struct {
	Type        string
	Attachment  *string
	Incarnation *int64
	Endpoint    string
}

func (r *rack) driveSteps(t *testing.T, request string) []driveStep {
	t.Helper()
	rows, err := r.orchDB.Query(context.Background(), `SELECT step_type, attachment_id::text, incarnation, endpoint
		FROM rw_replacement_drive_step WHERE request_id = $1 ORDER BY time, id`, request)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []driveStep
	for rows.Next() {
		var s driveStep
		if err := rows.Scan(&s.Type, &s.Attachment, &s.Incarnation, &s.Endpoint); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

// repairFinished reports whether an Upstairs reported a successful repair
// of the target at addr.
func (r *rack) repairFinished(t *testing.T, addr string) bool {
	t.Helper()
	resp, err := r.notifier.ListRepairNotifications(context.Background(), &notifierv1.ListRepairNotificationsRequest{TargetAddress: addr, PageSize: 1000})
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

func (r *rack) locks(t *testing.T) int {
	t.Helper()
	resp, err := r.replacement.ListLocks(context.Background(), &orchestratorv1.ListLocksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Locks)
}

func (r *rack) invariants(t *testing.T) {
	t.Helper()
	resp, err := r.volumes.CheckInvariants(context.Background(), &volumev1.CheckInvariantsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Violations {
		t.Errorf("invariant %s on %s: %s", v.Code, v.Subject, v.Detail)
	}
}

func (r *rack) noDataLoss(t *testing.T) {
	t.Helper()
	for i, s := range r.sims {
		resp, err := s.ListVolumes(context.Background(), &upstairsv1.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.TotalDataLossEvents != 0 {
			t.Errorf("sim-upstairs-%d saw %d data-loss probes", i, resp.TotalDataLossEvents)
		}
	}
}
