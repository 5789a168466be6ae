package agentapi

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "storagecp.dev/gen/go/storage/agent/v1"
	"storagecp.dev/platform/apierr"
)

// Every agent error survives the wire: the code of its kind, the agent's
// message, and errors.Is of its sentinel, and of no other.
func TestWireRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, r := range reasons {
		sent := fmt.Errorf("dataset d1: %w", r.err)
		wire := Status(ctx, nil, sent)
		if got, want := status.Code(wire), apierr.KindOf(r.err).Code(); got != want {
			t.Errorf("%v: code %v, want %v", r.reason, got, want)
		}
		back := FromStatus(wire)
		if back.Error() != sent.Error() {
			t.Errorf("%v: message %q, want %q", r.reason, back, sent)
		}
		for _, other := range reasons {
			if errors.Is(back, other.err) != (other.err == r.err) {
				t.Errorf("%v came back as errors.Is(%v) = %v", r.reason, other.reason, !(other.err == r.err))
			}
		}
	}
}

// Every reason the proto declares has a sentinel: a reason added to the
// enum and not here would reach the allocator as an unknown error.
func TestEveryReasonMapped(t *testing.T) {
	for v, name := range agentv1.AgentReason_name {
		if v == 0 {
			continue
		}
		found := false
		for _, r := range reasons {
			found = found || int32(r.reason) == v
		}
		if !found {
			t.Errorf("%s has no sentinel", name)
		}
	}
}

// What is not an agent error keeps its meaning: UNAVAILABLE without a
// reason is an agent out of reach, deadlines and cancellations are the
// context's, and any other status (a stale fence) goes on as it is.
func TestWireOtherStatuses(t *testing.T) {
	if err := FromStatus(status.Error(codes.Unavailable, "connection refused")); !errors.Is(err, ErrUnavailable) {
		t.Errorf("unavailable: %v", err)
	}
	if err := FromStatus(status.Error(codes.DeadlineExceeded, "slow")); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("deadline: %v", err)
	}
	if err := FromStatus(status.Error(codes.Canceled, "gone")); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: %v", err)
	}
	stale := status.Error(codes.FailedPrecondition, "stale epoch")
	if err := FromStatus(stale); err != stale {
		t.Errorf("stale fence: %v", err)
	}
	// An ErrorInfo of another domain names nothing here.
	st, _ := status.New(codes.FailedPrecondition, "x").WithDetails(&errdetails.ErrorInfo{Domain: "other.example", Reason: "GONE"})
	if err := FromStatus(st.Err()); errors.Is(err, ErrGone) {
		t.Errorf("foreign status: %v", err)
	}
	if FromStatus(nil) != nil || Status(context.Background(), nil, nil) != nil {
		t.Errorf("nil is not nil")
	}
}
