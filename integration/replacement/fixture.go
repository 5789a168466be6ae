// Package replacement tests read-only target replacement end to end over
// real processes.
package replacement

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

	"storagecp.dev/deploy/stack"
	"storagecp.dev/integration/harness"
)

// rack is a running deployment with clients for every service.
type rack struct {
	st          *stack.Stack
	volumes     volumev1.VolumeServiceClient
	allocator   allocatorv1.RegionAllocatorServiceClient
	notifier    notifierv1.UpstairsNotifierServiceClient
	lifecycle   orchestratorv1.LifecycleServiceClient
	replacement orchestratorv1.ReplacementServiceClient
	admin       orchestratorv1.AdminServiceClient
	sims        []upstairsv1.UpstairsServiceClient
}

const gib = 1 << 30

// startRack starts the stack with every task period set to an hour, so
// anything that completes did so through activations, and seeds sleds.
func startRack(t *testing.T, sleds, disksPerSled int) *rack {
	t.Helper()
	st := harness.Start(t, stack.Config{
		SimUpstairs: 2,
		ExtraArgs: map[string][]string{
			stack.Orchestrator: {"--task-period", "1h", "--lease-ttl", "3s"},
		},
	})
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
	// The orchestrator must be leading before lifecycle calls.
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

func (r *rack) clone(t *testing.T, snap string) string {
	t.Helper()
	resp, err := r.lifecycle.CloneVolume(context.Background(), &orchestratorv1.CloneVolumeRequest{SnapshotId: snap, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	wantSucceeded(t, "clone", resp.Saga)
	return resp.VolumeId
}

func (r *rack) deleteVolume(t *testing.T, id string) {
	t.Helper()
	resp, err := r.lifecycle.DeleteVolume(context.Background(), &orchestratorv1.DeleteVolumeRequest{VolumeId: id, Wait: true})
	if err != nil {
		t.Fatal(err)
	}
	wantSucceeded(t, "delete "+id, resp.Saga)
}

// construct builds a volume on sim-upstairs i through the notifier.
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

// targets returns a volume's registered targets of a kind.
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

// expunge expunges a disk and tells the orchestrator's detectors, as
// `storctl disks expunge` does.
func (r *rack) expunge(t *testing.T, disk string) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: disk}); err != nil {
		t.Fatal(err)
	}
	if _, err := r.admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: "ro_replacement_detector"}); err != nil {
		t.Fatal(err)
	}
}

// waitRequests waits until every read-only request is terminal and returns
// them.
func (r *rack) waitRequests(t *testing.T, timeout time.Duration) []*orchestratorv1.Replacement {
	t.Helper()
	var out []*orchestratorv1.Replacement
	harness.Eventually(t, timeout, "every replacement terminal", func() error {
		resp, err := r.replacement.ListReplacements(context.Background(), &orchestratorv1.ListReplacementsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if len(resp.Replacements) == 0 {
			return fmt.Errorf("no request yet")
		}
		for _, rep := range resp.Replacements {
			s := rep.ReadOnlyState
			if s != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
				s != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
				return fmt.Errorf("request %s is %v", rep.ReplacementId, s)
			}
		}
		out = resp.Replacements
		return nil
	})
	return out
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

// validate waits for the sagas to settle and expects ValidateSystem empty.
func (r *rack) validate(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if _, err := r.admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	resp, err := r.admin.ValidateSystem(ctx, &orchestratorv1.ValidateSystemRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Violations {
		t.Errorf("system %s on %s: %s", v.Code, v.Subject, v.Detail)
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
