package agentfault

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/allocator/agentapi"
)

func TestFaultsConsumeInOrderPerDataset(t *testing.T) {
	ctx := context.Background()
	var f Faults
	d1, d2 := uuid.New(), uuid.New()
	f.Inject(Fault{Op: OpEnsureRegion, DatasetID: d1, Count: 2, Fail: true})
	f.Inject(Fault{Op: OpEnsureRegion, Count: 1, Fail: true})
	f.Inject(Fault{Op: OpDeleteRegion, Count: 0, Fail: true}) // ignored

	var injected *InjectedError
	// d2 only matches the any-dataset fault, once.
	if err := f.apply(ctx, OpEnsureRegion, d2); !errors.As(err, &injected) {
		t.Fatalf("d2 first call: %v", err)
	}
	if err := f.apply(ctx, OpEnsureRegion, d2); err != nil {
		t.Fatalf("d2 second call: %v", err)
	}
	for i := range 2 {
		if err := f.apply(ctx, OpEnsureRegion, d1); !errors.As(err, &injected) {
			t.Fatalf("d1 call %d: %v", i, err)
		}
	}
	if err := f.apply(ctx, OpEnsureRegion, d1); err != nil {
		t.Fatalf("d1 after its faults: %v", err)
	}
	if err := f.apply(ctx, OpDeleteRegion, d1); err != nil || f.Pending() != 0 {
		t.Fatalf("delete: %v, pending %d", err, f.Pending())
	}

	// A delay honours cancellation.
	f.Inject(Fault{Op: OpDeleteRegion, Count: 1, Delay: time.Hour})
	cctx, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
	defer cancel()
	if err := f.apply(cctx, OpDeleteRegion, d1); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("delayed call: %v", err)
	}
	var none *Faults
	if err := none.apply(ctx, OpDeleteRegion, d1); err != nil {
		t.Fatalf("nil registry: %v", err)
	}
}

// An injected failure is, by the contract's errors, an agent out of reach
// or (Permanent) a broken one: the server classifies it by those alone.
func TestInjectedErrorKinds(t *testing.T) {
	ctx := context.Background()
	var f Faults
	f.Inject(Fault{Op: OpEnsureRegion, Count: 1, Fail: true})
	f.Inject(Fault{Op: OpDeleteRegion, Count: 1, Fail: true, Permanent: true})
	if err := f.apply(ctx, OpEnsureRegion, uuid.New()); !errors.Is(err, agentapi.ErrUnavailable) || errors.Is(err, agentapi.ErrBroken) {
		t.Fatalf("transient fault: %v", err)
	}
	if err := f.apply(ctx, OpDeleteRegion, uuid.New()); !errors.Is(err, agentapi.ErrBroken) || errors.Is(err, agentapi.ErrUnavailable) {
		t.Fatalf("permanent fault: %v", err)
	}
}
