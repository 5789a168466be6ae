package tasks

import (
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/store"
)

// Rebuilds are admitted by operator priority, then by risk (fewest live
// copies; uncounted last), then holders of a lock someone waits for, then
// by age.
func TestAdmissionOrder(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	mk := func(name string, prio, copies int32, age int) candidate {
		id := uuid.NewSHA1(uuid.Nil, []byte(name))
		return candidate{id: id, kind: name, order: store.Order{Priority: prio, LiveCopies: copies}, requestTime: t0.Add(time.Duration(age) * time.Second)}
	}
	blocking := func(c candidate) candidate { c.blocking = true; return c }
	in := []candidate{
		mk("two-copies-old", 0, 2, 0),
		mk("uncounted", 0, -1, 0),
		mk("one-copy-young", 0, 1, 9),
		mk("one-copy-old", 0, 1, 1),
		mk("priority-two-copies", 5, 2, 20),
		mk("negative-priority-one-copy", -1, 1, 0),
		blocking(mk("two-copies-blocking-young", 0, 2, 30)),
		blocking(mk("uncounted-blocking", 0, -1, 40)),
	}
	slices.SortFunc(in, before)
	var got []string
	for _, c := range in {
		got = append(got, c.kind)
	}
	want := []string{"priority-two-copies", "one-copy-old", "one-copy-young", "two-copies-blocking-young", "two-copies-old",
		"uncounted-blocking", "uncounted", "negative-priority-one-copy"}
	if !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
}

// Under a step budget, a small request is not starved by a large fan-out
// that is older and riskier: within a priority the next slot goes to the
// request with the fewest steps in flight. Operator priority still comes
// first.
func TestStepOrderIsFair(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	large := &store.ROReplacement{ID: uuid.New(), RequestTime: t0, Order: store.Order{LiveCopies: 1}}
	small := &store.ROReplacement{ID: uuid.New(), RequestTime: t0.Add(time.Hour), Order: store.Order{LiveCopies: 2}}
	// The large request already has a step in flight: the small one is next.
	if !stepBefore(small, 0, large, 1) || stepBefore(large, 1, small, 0) {
		t.Fatal("a request with nothing in flight must go before one with a step in flight")
	}
	// Level: the riskier (older) large request first.
	if !stepBefore(large, 1, small, 1) {
		t.Fatal("at equal steps in flight, fewer live copies first")
	}
	// Simulate a budget of 2 slots, each step finishing before the next pass
	// in turn: the small request's only step starts in the first pass.
	running := map[uuid.UUID]int{}
	reqs := []*store.ROReplacement{large, small}
	left := map[uuid.UUID]int{large.ID: 1000, small.ID: 1}
	var started []uuid.UUID
	for slot := 0; slot < 2; slot++ {
		var next *store.ROReplacement
		for _, r := range reqs {
			if left[r.ID] > 0 && (next == nil || stepBefore(r, running[r.ID], next, running[next.ID])) {
				next = r
			}
		}
		running[next.ID]++
		left[next.ID]--
		started = append(started, next.ID)
	}
	if !slices.Contains(started, small.ID) {
		t.Fatal("the small request's step did not get one of the first two slots")
	}
	// An operator's priority overrides fairness.
	small.Priority = -1
	if stepBefore(small, 0, large, 5) {
		t.Fatal("a lower priority must wait whatever is in flight")
	}
}
