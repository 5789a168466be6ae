// Package ha runs storagecp on a replicated PostgreSQL (pg_auto_failover)
// and takes the primary away in the middle of a replacement.
package ha

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// The primary's postmaster is killed (kill -9) in the middle of a 200-clone
// fan-out. pg_auto_failover promotes the synchronous standby; the services
// reach it through their multi-host DSN with no restart, and the
// replacement completes with nothing lost.
func TestPrimaryKilledMidFanOut(t *testing.T) {
	r := rack.Start(t, 4, 2, stack.Config{HA: true})
	ctx := context.Background()
	f := r.Stack.Formation
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	const clones = 200
	var wg sync.WaitGroup
	ids := make(chan string)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				if _, err := r.Volumes.CreateVolume(ctx, &volumev1.CreateVolumeRequest{
					VolumeId: id, ReadOnlyParentFromVolumeId: snap,
					Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{
						Volume: &commonv1.VcrVolume{Id: id, BlockSize: 512},
					}},
				}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	for range clones {
		ids <- uuid.NewString()
	}
	close(ids)
	wg.Wait()

	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	// Kill once the fan-out is under way: some steps done, most not.
	harness.Eventually(t, 60*time.Second, "the fan-out under way", func() error {
		resp, err := r.Replacement.ListSteps(ctx, &orchestratorv1.ListStepsRequest{PageSize: 1000})
		if err != nil {
			return err
		}
		if len(resp.Steps) < 20 {
			return fmt.Errorf("%d steps so far", len(resp.Steps))
		}
		return nil
	})
	primary, err := f.Primary(ctx)
	if err != nil || primary == nil {
		t.Fatalf("primary: %v %v", primary, err)
	}
	// What was acknowledged before the kill: the sagas reported succeeded,
	// and the leader's epoch.
	succeeded := sagasWithOutcome(t, r, "succeeded")
	lead, err := r.Admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := syscall.Kill(primary.Postmaster(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed %s's postmaster", primary.Name)
	// The killed node's keeper may restart its PostgreSQL at once; the
	// monitor promotes the standby anyway. Wait for that, so that the
	// checks below do not meet a failover still to come.
	now, err := f.WaitFailover(ctx, primary.Name, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary %s → %s %s after the kill", primary.Name, now.Name, time.Since(killed).Round(time.Millisecond))

	reqs := r.WaitRequests(t, 3*time.Minute)
	t.Logf("every request terminal %s after the kill", time.Since(killed).Round(time.Millisecond))
	for _, q := range reqs {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("%v request %s ended %v%v", q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
		}
	}
	if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	after := sagasWithOutcome(t, r, "succeeded")
	for id := range succeeded {
		if !after[id] {
			t.Errorf("saga %s was reported succeeded before the kill and is not after it", id)
		}
	}
	t.Logf("%d sagas acknowledged succeeded before the kill, all still succeeded after", len(succeeded))
	// The lease lapsed with the database; whoever leads now won a new term.
	r.WaitLeader(t, r.Admin)
	lead2, err := r.Admin.GetLeadership(ctx, &orchestratorv1.GetLeadershipRequest{})
	if err != nil || lead2.Epoch <= lead.Epoch {
		t.Errorf("leader epoch %d before the failover, %v after (%v): want a higher one", lead.Epoch, lead2.GetEpoch(), err)
	}
	if err := r.Stack.WaitHealthy(ctx, 30*time.Second); err != nil {
		t.Errorf("after the failover: %v", err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
}

// sagasWithOutcome lists the ids of the sagas with an outcome.
func sagasWithOutcome(t *testing.T, r *rack.Rack, outcome string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	token := ""
	for {
		resp, err := r.Admin.ListSagas(context.Background(), &orchestratorv1.ListSagasRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range resp.Sagas {
			if s.Outcome == outcome {
				out[s.SagaId] = true
			}
		}
		if token = resp.NextPageToken; token == "" {
			return out
		}
	}
}
