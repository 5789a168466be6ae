package saga_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/saga"
)

// TestShutdownAnywhereThenRecover runs many sagas (some failing at a random
// node, some stuck), shuts the SEC down at a random moment, recovers them
// in a fresh SEC (possibly twice) and checks each ends consistently:
// succeeded with every effect, failed with none, or stuck.
func TestShutdownAnywhereThenRecover(t *testing.T) {
	rounds := 4
	if testing.Short() {
		rounds = 1
	}
	for round := range rounds {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			f := newFixture(t)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			rng := rand.New(rand.NewPCG(uint64(round), 42))
			nodes := []string{"create_a", "create_b", "create_c", "w0", "w1", "finish"}
			type run struct {
				key      string
				failAt   string
				undoFail string
			}
			sec := saga.NewSEC(f.pool, "sec-s", f.reg, f.pool, testLogger(t))
			runs := map[uuid.UUID]run{}
			for i := range 24 {
				r := run{key: fmt.Sprintf("s%d-%d", round, i)}
				h := &saga.Hooks{}
				switch rng.IntN(4) {
				case 0:
					r.failAt = nodes[rng.IntN(len(nodes))]
					h.InjectError(r.failAt)
				case 1:
					r.failAt = "finish"
					r.undoFail = "create_a"
					h.InjectError(r.failAt).InjectUndoError(r.undoFail)
				}
				id, err := sec.Create(ctx, f.app.sample, sampleParams{Key: r.key, Wide: 2}, saga.WithHooks(h))
				if err != nil {
					t.Fatal(err)
				}
				runs[id] = r
			}
			time.Sleep(time.Duration(rng.IntN(30)) * time.Millisecond) // a random cut, not a wait for a condition
			if err := sec.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			sec2 := f.sec(t, "sec-s")
			if _, err := sec2.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			if rep, err := sec2.Recover(ctx); err != nil || len(rep.Recovered) != 0 {
				t.Fatalf("second pass recovered again: %+v %v", rep, err)
			}
			for id, r := range runs {
				o := wait(t, sec2, id)
				effects := f.effects(t, r.key)
				switch o.Kind {
				case saga.Succeeded:
					if !slices.Equal(effects, []string{"a", "b", "c", "w0", "w1"}) {
						t.Errorf("%s succeeded with effects %v", r.key, effects)
					}
				case saga.Failed:
					// A recovered saga runs without hooks, so only a failure
					// recorded before the cut can unwind it.
					if r.failAt == "" || o.FailedNode != r.failAt {
						t.Errorf("%s failed at %q, injected at %q", r.key, o.FailedNode, r.failAt)
					}
					if len(effects) != 0 {
						t.Errorf("%s failed but left %v", r.key, effects)
					}
				case saga.Stuck:
					if r.undoFail == "" || o.UndoNode != r.undoFail {
						t.Errorf("%s stuck at %q, undo error injected at %q", r.key, o.UndoNode, r.undoFail)
					}
				}
			}
			if n := sec2.InFlight(); n != 0 {
				t.Fatalf("%d still in flight", n)
			}
		})
	}
}
