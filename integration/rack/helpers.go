package rack

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// RetryUnavailable runs f until it returns anything but Unavailable, for
// at most a minute.
func RetryUnavailable(ctx context.Context, f func() error) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := f()
		if status.Code(err) != codes.Unavailable || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Drain detaches every attachment and deletes every volume, retrying what
// answers Unavailable or unwinds, then waits until the orchestrator is
// idle.
func (r *Rack) Drain(t *testing.T, atts []*notifierv1.Attachment, volumes []string) {
	t.Helper()
	ctx := context.Background()
	for _, a := range atts {
		if err := RetryUnavailable(ctx, func() error {
			_, err := r.Notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: a.AttachmentId})
			return err
		}); err != nil {
			t.Fatalf("detach %s: %v", a.AttachmentId, err)
		}
	}
	for _, id := range volumes {
		if err := RetryUnavailable(ctx, func() error {
			resp, err := r.Lifecycle.DeleteVolume(ctx, &orchestratorv1.DeleteVolumeRequest{VolumeId: id, Wait: true})
			return SagaOutcome(t, "delete "+id, resp.GetSaga(), err)
		}); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	r.WaitRequests(t, 2*time.Minute)
	if err := RetryUnavailable(ctx, func() error {
		_, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// SagaOutcome turns an RPC that waited for its saga into what
// RetryUnavailable understands: the RPC's error, else nil when the saga
// succeeded, Unavailable when it unwound cleanly (its retries ran out, as
// they may while answers are lost: the user tries again under the same
// id), and an error otherwise.
func SagaOutcome(t *testing.T, what string, s *orchestratorv1.SagaResult, err error) error {
	switch {
	case err != nil:
		return err
	case s.GetOutcome() == orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED:
		return nil
	case s.GetOutcome() == orchestratorv1.SagaOutcome_SAGA_OUTCOME_FAILED:
		t.Logf("%s: saga failed at %s (%s); again", what, s.GetFailedNode(), s.GetError())
		return status.Error(codes.Unavailable, "again")
	default:
		return fmt.Errorf("%s: saga %v", what, s.GetOutcome())
	}
}

// NoStuckSagas fails for every saga left stuck or running.
func (r *Rack) NoStuckSagas(t *testing.T) {
	t.Helper()
	for _, outcome := range []string{"stuck", "running"} {
		for id := range r.SagasWithOutcome(t, outcome) {
			t.Errorf("saga %s is %s", id, outcome)
		}
	}
}

// StepCount is how many read-only replacement steps exist so far.
func (r *Rack) StepCount(t *testing.T) int {
	t.Helper()
	resp, err := r.Replacement.ListSteps(context.Background(), &orchestratorv1.ListStepsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Steps)
}

// SagasWithOutcome lists the ids of the sagas with an outcome.
func (r *Rack) SagasWithOutcome(t *testing.T, outcome string) map[string]bool {
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

// DoneSteps are the read-only replacement steps past their swap.
func (r *Rack) DoneSteps(t *testing.T) map[string]bool {
	t.Helper()
	resp, err := r.Replacement.ListSteps(context.Background(), &orchestratorv1.ListStepsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, s := range resp.Steps {
		if s.State >= orchestratorv1.StepState_STEP_STATE_COMPLETE {
			out[s.StepId] = true
		}
	}
	return out
}

// CloneFanOut makes n clones of a snapshot the way a rack's image service
// does, straight through VolumeService/CreateVolume with the snapshot as
// read-only parent (eight at a time), and returns their ids: the fan-out a
// replacement of the snapshot's targets then has to step through.
func (r *Rack) CloneFanOut(t *testing.T, snap string, n int) []string {
	t.Helper()
	ctx := context.Background()
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
	out := make([]string, 0, n)
	for range n {
		id := uuid.NewString()
		out = append(out, id)
		ids <- id
	}
	close(ids)
	wg.Wait()
	return out
}
