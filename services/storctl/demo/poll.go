package demo

// Waiting: poll retries a call until it succeeds, fails permanently or
// times out; retry does so for a lifecycle saga call.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// permanent marks an error poll must not retry.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// poll calls f until it succeeds, fails permanently, or timeout passes,
// with a growing pause between calls.
func poll(ctx context.Context, timeout time.Duration, what string, f func() error) error {
	deadline := time.Now().Add(timeout)
	pause := 50 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return fmt.Errorf("%s: %w", what, p.error)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not done after %s: %w", what, timeout, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-time.After(pause):
		}
		pause = min(2*pause, time.Second)
	}
}

// retry runs a lifecycle saga call until it succeeds. ABORTED ("volume
// repair lock": a replacement of an earlier run still holds the volume)
// and UNAVAILABLE (a leader change) are retried; a saga that did not
// succeed is an error.
func retry(ctx context.Context, what string, call func() (*orchestratorv1.SagaResult, error)) error {
	return poll(ctx, time.Minute, what, func() error {
		saga, err := call()
		if c := status.Code(err); c == codes.Aborted || c == codes.Unavailable {
			return err
		}
		if err != nil {
			return permanent{err}
		}
		if saga.GetOutcome() != orchestratorv1.SagaOutcome_SAGA_OUTCOME_SUCCEEDED {
			return permanent{fmt.Errorf("saga %s ended %v at node %s: %s", saga.GetSagaId(), saga.GetOutcome(), saga.GetFailedNode(), saga.GetError())}
		}
		return nil
	})
}
