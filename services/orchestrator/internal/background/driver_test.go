package background_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"storagecp.dev/orchestrator/internal/background"
)

type counting struct {
	runs    atomic.Int64
	block   chan struct{}
	started chan struct{}
}

func (c *counting) Name() string        { return "counting" }
func (c *counting) Description() string { return "counts its activations" }
func (c *counting) Activate(ctx context.Context) any {
	n := c.runs.Add(1)
	if c.started != nil {
		c.started <- struct{}{}
	}
	if c.block != nil {
		<-c.block
	}
	return map[string]int64{"run": n}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A task runs at start, runs again when activated (long before its period),
// and records its last status.
func TestActivationRunsAtOnce(t *testing.T) {
	d := background.NewDriver(slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &counting{}
	d.Register(c, time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	waitUntil(t, "first run", func() bool { return c.runs.Load() == 1 })
	if err := d.Activate("counting"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "activated run", func() bool { return c.runs.Load() == 2 })
	waitUntil(t, "status recorded", func() bool {
		st := d.Statuses()[0]
		var got map[string]int64
		_ = json.Unmarshal(st.LastStatus, &got)
		return st.Activations == 2 && got["run"] == 2
	})
	if err := d.Activate("nope"); err != background.ErrUnknownTask {
		t.Fatalf("unknown task: %v", err)
	}
}

// Activations requested while a pass runs coalesce into exactly one more.
func TestActivationsCoalesce(t *testing.T) {
	d := background.NewDriver(slog.New(slog.NewTextHandler(io.Discard, nil)))
	c := &counting{block: make(chan struct{}), started: make(chan struct{}, 10)}
	d.Register(c, time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	<-c.started // first pass running, blocked
	for i := 0; i < 5; i++ {
		_ = d.Activate("counting")
	}
	c.block <- struct{}{} // finish first pass
	<-c.started           // the one coalesced follow-up
	c.block <- struct{}{}
	waitUntil(t, "second pass finished", func() bool { return d.Statuses()[0].Activations == 2 })
	select {
	case <-c.started:
		t.Fatal("a third pass ran: activations did not coalesce")
	default:
	}
}

func TestLimiter(t *testing.T) {
	l := background.NewLimiter(3, 2)
	var rel []func()
	for _, k := range []string{"a", "a"} {
		r, ok := l.TryAcquire(k)
		if !ok {
			t.Fatal("refused under the bound")
		}
		rel = append(rel, r)
	}
	if _, ok := l.TryAcquire("a"); ok {
		t.Fatal("per-key bound not enforced")
	}
	r, ok := l.TryAcquire("b")
	if !ok {
		t.Fatal("b refused")
	}
	if _, ok := l.TryAcquire("c"); ok {
		t.Fatal("total bound not enforced")
	}
	r()
	r() // release is idempotent
	if l.InFlight() != 2 {
		t.Fatalf("in flight %d", l.InFlight())
	}
	var wg sync.WaitGroup
	for _, f := range rel {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	wg.Wait()
	if l.InFlight() != 0 {
		t.Fatalf("in flight %d after releases", l.InFlight())
	}
}

// erring reports errors on its first passes, then none.
type erring struct {
	errs int64 // passes that report an error
	runs atomic.Int64
	mu   sync.Mutex
	at   []time.Time
}

func (e *erring) Name() string        { return "erring" }
func (e *erring) Description() string { return "errs, then recovers" }
func (e *erring) Activate(ctx context.Context) any {
	n := e.runs.Add(1)
	e.mu.Lock()
	e.at = append(e.at, time.Now())
	e.mu.Unlock()
	if n <= e.errs {
		return map[string][]string{"errors": {"conn closed"}}
	}
	return map[string][]string{"errors": {}}
}

// A pass that reports errors runs again long before the task's period,
// after a wait that doubles while the passes keep erring; a clean pass
// returns the task to its period. (Without this, a pass that lost a
// COMMIT's answer left its work for the next period: an hour here.)
func TestErringPassRunsAgainBeforeItsPeriod(t *testing.T) {
	d := background.NewDriver(slog.New(slog.NewTextHandler(io.Discard, nil)))
	e := &erring{errs: 2}
	d.Register(e, time.Hour, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go d.Run(ctx)
	waitUntil(t, "two retries after two erring passes", func() bool { return e.runs.Load() == 3 })
	e.mu.Lock()
	first, second := e.at[1].Sub(e.at[0]), e.at[2].Sub(e.at[1])
	e.mu.Unlock()
	if first < time.Second || second < 2*time.Second {
		t.Errorf("waits before the retries: %v then %v, want at least 1s then 2s", first, second)
	}
	// The third pass was clean: the next waits for the period.
	time.Sleep(1500 * time.Millisecond)
	if n := e.runs.Load(); n != 3 {
		t.Errorf("%d passes after a clean one, want 3", n)
	}
}
