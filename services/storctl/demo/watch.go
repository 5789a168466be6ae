package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// tracker is the latest view of the expunge's requests, fed by one
// WatchReplacement stream per request (so step counts are per request,
// not every step the deployment ever had).
type tracker struct {
	mu    sync.Mutex
	reqs  map[string]*orchestratorv1.Replacement
	steps map[string]*orchestratorv1.StepCounts
	// lastErr is the latest stream error, reported if the wait times out.
	lastErr error
}

func (t *tracker) seen(id string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.reqs[id]
	return ok
}

// add records a request found by listing; a stream's view wins once it
// has one.
func (t *tracker) add(r *orchestratorv1.Replacement) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.reqs[r.GetReplacementId()]; !ok {
		t.reqs[r.GetReplacementId()] = r
	}
}

func (t *tracker) update(m *orchestratorv1.WatchReplacementResponse) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, r := range m.GetReplacements() {
		t.reqs[r.GetReplacementId()] = r
		t.steps[r.GetReplacementId()] = m.GetSteps()
	}
}

func (t *tracker) fail(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lastErr = err
}

// view is a consistent copy of the tracker.
type view struct {
	reqs  []*orchestratorv1.Replacement
	steps StepCounts
	// fraction of the work done per request, summed.
	progress float64
	terminal bool // every known request is terminal
}

func (t *tracker) view() view {
	t.mu.Lock()
	defer t.mu.Unlock()
	v := view{terminal: true}
	for id, r := range t.reqs {
		v.reqs = append(v.reqs, r)
		var s StepCounts
		if p := t.steps[id]; p != nil {
			s.add(p)
		}
		v.steps.Requested += s.Requested
		v.steps.Running += s.Running
		v.steps.Complete += s.Complete
		v.steps.Collecting += s.Collecting
		v.steps.VolumeDeleted += s.VolumeDeleted
		v.progress += requestProgress(r, s)
		if !terminal(r) {
			v.terminal = false
		}
	}
	sortReplacements(v.reqs)
	return v
}

// sortReplacements orders requests read-only first, then by id.
func sortReplacements(rs []*orchestratorv1.Replacement) {
	slices.SortFunc(rs, func(a, b *orchestratorv1.Replacement) int {
		if ra, rb := isRW(a), isRW(b); ra != rb {
			if ra {
				return 1
			}
			return -1
		}
		return strings.Compare(a.GetReplacementId(), b.GetReplacementId())
	})
}

// requestProgress is how far one request is, in [0,1]: by state, and for
// a read-only request in RUNNING by the share of its steps done (the
// fan-out is most of the work).
func requestProgress(r *orchestratorv1.Replacement, s StepCounts) float64 {
	if isRW(r) {
		switch r.GetRegionState() {
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_ALLOCATING:
			return 0.15
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_RUNNING:
			return 0.3
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DRIVING:
			return 0.5
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_REPLACEMENT_DONE:
			return 0.75
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETING:
			return 0.9
		case orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_DATA_LOST,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_NEEDS_OPERATOR,
			orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_CANCELLED:
			return 1
		}
		return 0
	}
	switch r.GetReadOnlyState() {
	case orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_ALLOCATING:
		return 0.1
	case orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_REPLACEMENT_DONE:
		return 0.2
	case orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DELETING_OLD_VOLUME:
		return 0.25
	case orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_RUNNING:
		if n := s.Total(); n > 0 {
			return 0.3 + 0.6*float64(s.Done())/float64(n)
		}
		return 0.3
	case orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETING:
		return 0.95
	case orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE,
		orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST,
		orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_CANCELLED:
		return 1
	}
	return 0
}

// follow streams one request's progress into the tracker until the
// request is terminal (the server ends the stream) or ctx ends. A broken
// stream (an orchestrator restart, say) is opened again.
func (d *run) follow(ctx context.Context, t *tracker, id string) {
	for ctx.Err() == nil {
		stream, err := d.a.replacement.WatchReplacement(ctx, &orchestratorv1.WatchReplacementRequest{ReplacementId: id})
		for err == nil {
			var m *orchestratorv1.WatchReplacementResponse
			if m, err = stream.Recv(); err == nil {
				t.update(m)
				if m.GetDone() {
					return
				}
			}
		}
		if errors.Is(err, io.EOF) || ctx.Err() != nil {
			return
		}
		t.fail(fmt.Errorf("watch %s: %w", id, err))
		select {
		case <-ctx.Done():
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// watch follows every request the expunge causes until all are terminal:
// it lists requests to find new ones (the detectors create them, and a
// request held back by lock contention appears later), follows each with
// its own stream, and redraws the progress.
func (d *run) watch(ctx context.Context, v victim) error {
	wctx, cancel := context.WithTimeout(ctx, d.o.Timeout)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	t := &tracker{reqs: map[string]*orchestratorv1.Replacement{}, steps: map[string]*orchestratorv1.StepCounts{}}
	// pending are targets on the disk that have no request yet.
	pending := map[string]bool{}
	for id := range v.targets {
		pending[id] = true
	}
	total := len(pending)
	out := newProgress(d.w, !d.o.NonInteractive && isTerminal(d.w))
	var lastPrune, lastKick time.Time
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		reqs, err := listReplacements(wctx, d.a)
		if err != nil && wctx.Err() == nil {
			t.fail(err)
		}
		for _, r := range reqs {
			if !v.targets[r.GetOldTargetId()] && !v.targets[r.GetOldRegionId()] {
				continue
			}
			delete(pending, r.GetOldTargetId())
			delete(pending, r.GetOldRegionId())
			if t.seen(r.GetReplacementId()) {
				continue
			}
			t.add(r)
			wg.Add(1)
			go func(id string) {
				defer wg.Done()
				d.follow(wctx, t, id)
			}(r.GetReplacementId())
		}
		cur := t.view()
		if len(pending) > 0 && cur.terminal && time.Since(lastPrune) > time.Second {
			// A target the registry no longer knows gets no request (its
			// volume's deletion freed it).
			lastPrune = time.Now()
			for id := range pending {
				_, err := d.a.vol.GetTarget(wctx, &volumev1.GetTargetRequest{TargetId: id})
				if status.Code(err) == codes.NotFound {
					delete(pending, id)
					total--
				}
			}
		}
		if len(pending) > 0 && time.Since(lastKick) > 2*time.Second && time.Since(d.expungedAt) > 2*time.Second {
			// Contention defers a request to the detectors' next pass:
			// make that pass now rather than at their period.
			lastKick = time.Now()
			if err := d.activateDetectors(wctx); err != nil && wctx.Err() == nil {
				t.fail(err)
			}
		}
		elapsed := time.Since(d.expungedAt)
		done := len(pending) == 0 && cur.terminal && len(cur.reqs) > 0
		out.draw(cur, total, elapsed, done)
		if done {
			d.finish(cur, elapsed)
			for _, r := range cur.reqs {
				if !isRW(r) && r.GetReadOnlyState() == orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_DATA_LOST {
					return fmt.Errorf("replacement %s ended DATA_LOST", r.GetReplacementId())
				}
			}
			return nil
		}
		select {
		case <-wctx.Done():
			if ctx.Err() != nil {
				return ctx.Err()
			}
			t.mu.Lock()
			last := t.lastErr
			t.mu.Unlock()
			var open []string
			for _, r := range cur.reqs {
				if !terminal(r) {
					open = append(open, fmt.Sprintf("%s %s is %s", kindName(r.GetKind()), r.GetReplacementId(), stateName(r)))
				}
			}
			for id := range pending {
				open = append(open, "target "+id+" has no request")
			}
			return fmt.Errorf("replacement not finished %s after the expunge: %s (last error: %v)",
				fmtDur(elapsed), strings.Join(open, "; "), last)
		case <-tick.C:
		}
	}
}

// finish records the final view in the result.
func (d *run) finish(v view, elapsed time.Duration) {
	d.res.ExpungeToComplete = elapsed
	d.res.Steps = v.steps
	d.res.States = map[string]int{}
	d.res.TraceIDs = map[string]string{}
	d.res.RequestIDs = nil
	d.res.Replacements = nil
	// This run's snapshot's request first: it is the one the demo is about
	// (the others replace earlier runs' targets on the same disk).
	reqs := slices.Clone(v.reqs)
	slices.SortStableFunc(reqs, func(a, b *orchestratorv1.Replacement) int {
		ours := func(r *orchestratorv1.Replacement) int {
			if !isRW(r) && r.GetOldSnapshotId() == d.res.SnapshotID {
				return 0
			}
			return 1
		}
		return ours(a) - ours(b)
	})
	for _, r := range reqs {
		d.res.RequestIDs = append(d.res.RequestIDs, r.GetReplacementId())
		d.res.Replacements = append(d.res.Replacements, proto.Clone(r).(*orchestratorv1.Replacement))
		d.res.States[stateKey(r)]++
		if tid := traceID(r.GetTraceparent()); tid != "" {
			d.res.TraceIDs[r.GetReplacementId()] = tid
		}
	}
}

// traceID is the trace id of a W3C traceparent ("" when malformed).
func traceID(traceparent string) string {
	parts := strings.Split(traceparent, "-")
	if len(parts) != 4 || len(parts[1]) != 32 || strings.Trim(parts[1], "0") == "" {
		return ""
	}
	return parts[1]
}

func listReplacements(ctx context.Context, a api) ([]*orchestratorv1.Replacement, error) {
	var out []*orchestratorv1.Replacement
	token := ""
	for {
		resp, err := a.replacement.ListReplacements(ctx, &orchestratorv1.ListReplacementsRequest{PageSize: 1000, PageToken: token})
		if err != nil {
			return out, fmt.Errorf("list replacements: %w", err)
		}
		out = append(out, resp.GetReplacements()...)
		if token = resp.GetNextPageToken(); token == "" {
			return out, nil
		}
	}
}

// progress draws the watch: redrawn in place on a terminal, otherwise a
// plain line whenever the picture changes (at most every half second)
// and at least every five seconds.
type progress struct {
	w        io.Writer
	ansi     bool
	width    int // terminal columns (ansi): longer lines are cut, or a wrap would break the redraw
	lines    int // lines drawn last time (ansi)
	last     string
	lastTime time.Time
}

func newProgress(w io.Writer, ansi bool) *progress {
	p := &progress{w: w, ansi: ansi, width: 80}
	if f, ok := w.(*os.File); ok && ansi {
		if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
			p.width = int(ws.Col)
		}
	}
	return p
}

func (p *progress) draw(v view, total int, elapsed time.Duration, final bool) {
	frac := 0.0
	if total > 0 {
		frac = min(v.progress/float64(total), 1)
	}
	if final {
		frac = 1
	}
	found := fmt.Sprintf("%d of %d", len(v.reqs), total)
	if len(v.reqs) >= total {
		found = fmt.Sprint(len(v.reqs))
	}
	ro, rw := map[string]int{}, map[string]int{}
	nro, nrw := 0, 0
	for _, r := range v.reqs {
		if isRW(r) {
			rw[stateName(r)]++
			nrw++
		} else {
			ro[stateName(r)]++
			nro++
		}
	}
	if p.ansi {
		lines := []string{
			fmt.Sprintf("  %-10s %s %3.0f%%  %s  %s requests", "replacing", bar(frac, min(max(p.width-50, 10), 30)), 100*frac, fmtDur(elapsed), found),
			fmt.Sprintf("  %-10s %d: %s", "read-only", nro, statesLine(ro)),
			fmt.Sprintf("  %-10s %d: %s", "rw", nrw, statesLine(rw)),
			fmt.Sprintf("  %-10s %d: %s", "steps", v.steps.Total(), stepsLine(v.steps)),
		}
		if p.lines > 0 {
			fmt.Fprintf(p.w, "\x1b[%dF", p.lines)
		}
		for _, l := range lines {
			fmt.Fprintf(p.w, "\x1b[2K%s\n", cut(l, p.width-1))
		}
		p.lines = len(lines)
		return
	}
	states := map[string]int{}
	for _, r := range v.reqs {
		states[stateKey(r)]++
	}
	line := fmt.Sprintf("%3.0f%%  requests %s found · %s  steps %s", 100*frac, found, statesLine(states), stepsLine(v.steps))
	now := time.Now()
	changed := line != p.last && now.Sub(p.lastTime) >= 500*time.Millisecond
	if final || changed || now.Sub(p.lastTime) >= 5*time.Second {
		fmt.Fprintf(p.w, "  %-10s [%7s] %s\n", "replacing", fmtDur(elapsed), line)
		p.last, p.lastTime = line, now
	}
}

// cut shortens s to n runes, marking the cut.
func cut(s string, n int) string {
	r := []rune(s)
	if n < 1 || len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func bar(frac float64, width int) string {
	n := int(frac*float64(width) + 0.5)
	return "▕" + strings.Repeat("█", n) + strings.Repeat("░", width-n) + "▏"
}

// isTerminal reports whether w is a character device (a terminal), where
// redrawing in place works; TERM=dumb opts out.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
