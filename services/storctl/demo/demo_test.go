package demo

import (
	"bytes"
	"regexp"
	"strings"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

func TestNameIDIsAStableVersion5UUID(t *testing.T) {
	a, b := nameID("demo-sled-0"), nameID("demo-sled-0")
	if a != b {
		t.Fatalf("same name, different ids: %s %s", a, b)
	}
	if nameID("demo-sled-1") == a {
		t.Fatal("different names, same id")
	}
	if !regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`).MatchString(a) {
		t.Fatalf("not a version-5 UUID: %s", a)
	}
}

func TestTraceID(t *testing.T) {
	for in, want := range map[string]string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": "4bf92f3577b34da6a3ce929d0e0e4736",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01": "",
		"":        "",
		"garbage": "",
	} {
		if got := traceID(in); got != want {
			t.Errorf("traceID(%q) = %q, want %q", in, got, want)
		}
	}
}

// Progress never goes backwards along a request's states, and only a
// terminal state counts as done.
func TestRequestProgressIsMonotonic(t *testing.T) {
	prev := -1.0
	for s := orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REQUESTED; s <= orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE; s++ {
		r := &orchestratorv1.Replacement{Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT, ReadOnlyState: s}
		for _, steps := range []StepCounts{{Requested: 4}, {Running: 2, Complete: 2}, {VolumeDeleted: 4}} {
			p := requestProgress(r, steps)
			if s != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_RUNNING && p < prev || p > 1 {
				t.Errorf("%v with %+v: %v after %v", s, steps, p, prev)
			}
			if (p == 1) != terminal(r) {
				t.Errorf("%v: progress %v, terminal %v", s, p, terminal(r))
			}
			prev = max(prev, p)
		}
	}
	prev = -1
	for s := orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_REQUESTED; s <= orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE; s++ {
		r := &orchestratorv1.Replacement{Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION, RegionState: s}
		p := requestProgress(r, StepCounts{})
		if p < prev || (p == 1) != terminal(r) {
			t.Errorf("%v: progress %v after %v", s, p, prev)
		}
		prev = p
	}
}

func testView() view {
	ro := &orchestratorv1.Replacement{ReplacementId: "a", Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_REGION_SNAPSHOT,
		ReadOnlyState: orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_RUNNING}
	rw := &orchestratorv1.Replacement{ReplacementId: "b", Kind: orchestratorv1.ReplacementKind_REPLACEMENT_KIND_READ_WRITE_REGION,
		RegionState: orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DRIVING}
	steps := StepCounts{Running: 3, Complete: 7}
	return view{reqs: []*orchestratorv1.Replacement{ro, rw}, steps: steps, progress: requestProgress(ro, steps) + requestProgress(rw, StepCounts{})}
}

// On a terminal the picture is redrawn over itself: the cursor goes back
// up as many lines as were drawn, and no line outgrows the width.
func TestProgressRedrawsInPlace(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, true)
	p.width = 60
	p.draw(testView(), 3, 1500*time.Millisecond, false)
	first := buf.String()
	if strings.Contains(first, "\x1b[4F") {
		t.Fatalf("first draw moved up: %q", first)
	}
	buf.Reset()
	p.draw(testView(), 3, 1600*time.Millisecond, false)
	if !strings.HasPrefix(buf.String(), "\x1b[4F") {
		t.Fatalf("redraw does not start by going up 4 lines: %q", buf.String())
	}
	for _, l := range strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n") {
		l = strings.TrimPrefix(strings.TrimPrefix(l, "\x1b[4F"), "\x1b[2K")
		if n := len([]rune(l)); n > 59 {
			t.Errorf("line of %d runes on a 60-column terminal: %q", n, l)
		}
	}
	for _, want := range []string{"2 of 3 requests", "read-only  1: 1 running", "rw         1: 1 driving", "steps      10: 3 running · 7 complete"} {
		if !strings.Contains(first, want) {
			t.Errorf("first draw lacks %q:\n%s", want, first)
		}
	}
}

// Elsewhere it prints plain lines: one per change (not more often than
// every half second) and the final one always.
func TestProgressPlainLines(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, false)
	p.draw(testView(), 3, time.Second, false)
	p.draw(testView(), 3, time.Second, false) // unchanged and too soon
	p.draw(testView(), 3, time.Second, true)
	out := buf.String()
	if strings.Contains(out, "\x1b") {
		t.Fatalf("escape codes in plain output: %q", out)
	}
	if n := strings.Count(out, "\n"); n != 2 {
		t.Fatalf("%d lines, want 2 (first and final):\n%s", n, out)
	}
	if !strings.Contains(out, "100%") {
		t.Errorf("final line is not at 100%%:\n%s", out)
	}
}
