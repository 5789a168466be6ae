package replacement

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// A replacement requested by hand (by target id, idempotently) is watched
// to the end: the stream reports progress and closes once it is Complete.
func TestRequestAndWatchReplacement(t *testing.T) {
	r := rack.Start(t, 4, 1, stack.Config{})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	r.Clone(t, snap)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]

	first, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil || !first.Created {
		t.Fatalf("request: %v %v", first, err)
	}
	again, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil || again.Created || again.Replacement.ReplacementId != first.Replacement.ReplacementId {
		t.Fatalf("second request for the same target: %v %v", again, err)
	}
	stream, err := r.Replacement.WatchReplacement(ctx, &orchestratorv1.WatchReplacementRequest{ReplacementId: first.Replacement.ReplacementId})
	if err != nil {
		t.Fatal(err)
	}
	var last *orchestratorv1.WatchReplacementResponse
	states := []string{}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		last = msg
		states = append(states, msg.Replacements[0].ReadOnlyState.String())
	}
	if last == nil || !last.Done || last.Replacements[0].ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
		t.Fatalf("watch ended with %v (states seen %v)", last, states)
	}
	if last.Steps.VolumeDeleted != 1 { // the clone's step
		t.Fatalf("steps %v", last.Steps)
	}
	t.Logf("states seen: %s", strings.Join(states, " → "))

	// Bad input: a rw region, an unknown target, a malformed id.
	rw := r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION)[0]
	for _, tc := range []struct {
		id   string
		want codes.Code
	}{{rw.TargetId, codes.InvalidArgument}, {uuid.NewString(), codes.NotFound}, {"not-a-uuid", codes.InvalidArgument}} {
		if _, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: tc.id}); status.Code(err) != tc.want {
			t.Errorf("request for %s: %v, want %v", tc.id, err, tc.want)
		}
	}
	r.Invariants(t)
	r.Validate(t)
}

// One replacement is one trace: every saga that worked on the request (and
// the RPCs they made to the other services) carries the trace id of the
// request's root span.
func TestReplacementIsOneTrace(t *testing.T) {
	recv := harness.StartOTLPReceiver(t)
	r := rack.Start(t, 4, 2, stack.Config{Env: recv.Env()})
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clones := []string{r.Clone(t, snap), r.Clone(t, snap)}
	for i, c := range clones {
		r.Construct(t, c, i)
	}
	old := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	var req *orchestratorv1.Replacement
	for _, q := range r.WaitRequests(t, 60*time.Second) {
		if q.OldTargetId == old.TargetId {
			req = q
		}
	}
	parts := strings.Split(req.Traceparent, "-")
	if len(parts) != 4 {
		t.Fatalf("request traceparent %q", req.Traceparent)
	}
	traceID := parts[1]
	want := map[string]int{
		"saga ro-replacement-start": 1, "saga ro-replacement-garbage-collect": 1, "saga ro-replacement-step": 2,
		"saga ro-replacement-step-garbage-collect": 2, "saga ro-replacement-finish": 1,
	}
	services := []string{stack.Volume, stack.Allocator, stack.Notifier}
	harness.Eventually(t, 20*time.Second, "the whole replacement in one trace", func() error {
		got := map[string]int{}
		servers := map[string]bool{}
		for _, s := range recv.Spans() {
			if s.TraceID != traceID {
				continue
			}
			got[s.Name]++
			if s.Server {
				servers[s.Service] = true
			}
		}
		for name, n := range want {
			if got[name] < n {
				return fmt.Errorf("%d %q spans in the trace, want %d (have %v)", got[name], name, n, got)
			}
		}
		for _, svc := range services {
			if !servers[svc] {
				return fmt.Errorf("no %s server span in the trace", svc)
			}
		}
		return nil
	})
}
