package server

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	"storagecp.dev/orchestrator/internal/store"
)

// How long a request has to go, for operators ("when will it be done?").
// A read-only request's work is its steps, one per volume that names the
// old target; the rate is how many of its steps finished over the last
// rateWindow (or since its first step, when that is more recent), and the
// estimate is its open steps at that rate. Before its steps exist (the new
// copy is still being made) and while it is held, nothing honest can be
// said, and the answer says why. A rw request's work is three phases
// (allocate and swap, repair, finish); its estimate is the average time rw
// requests that completed within rwWindow took, less the time this one has
// run. Both are estimates from what was observed, never promises: a lock
// held by a long snapshot, or a budget, stretches them.
const (
	rateWindow = time.Minute
	rwWindow   = time.Hour
)

// describeRO fills what the API shows beyond the record: the wait, the
// hold, and (in the full form) the step counts and the estimate.
func (w waits) describeRO(ctx context.Context, p *orchestratorv1.Replacement, r store.ROReplacement) {
	p.Wait = w.readOnly(ctx, r)
	if !r.State.Terminal() {
		p.Pause = pauseProto(w.holds.Of(r.ID))
	}
	if !w.full {
		return
	}
	counts, err := w.s.store.StepCounts(ctx, &r.ID)
	if err != nil {
		return
	}
	p.StepCounts = stepCountsProto(counts)
	p.Estimate = w.roEstimate(ctx, r, counts, time.Now())
}

// describeRW is describeRO for a rw request.
func (w waits) describeRW(ctx context.Context, p *orchestratorv1.Replacement, r store.RWReplacement) {
	p.Wait = w.regionRequest(ctx, r)
	if !r.State.Terminal() {
		p.Pause = pauseProto(w.holds.Of(r.ID))
	}
	if w.full {
		p.Estimate = w.rwEstimate(ctx, r, time.Now())
	}
}

func stepCountsProto(c map[store.StepState]int64) *orchestratorv1.StepCounts {
	return &orchestratorv1.StepCounts{
		Requested: c[store.StepRequested], Running: c[store.StepRunning], Complete: c[store.StepComplete],
		Collecting: c[store.StepCollecting], VolumeDeleted: c[store.StepVolumeDeleted],
	}
}

func unknown(left, done int64, format string, args ...any) *orchestratorv1.Estimate {
	return &orchestratorv1.Estimate{UnitsLeft: left, UnitsDone: done, Basis: fmt.Sprintf(format, args...)}
}

func known(now time.Time, remaining time.Duration, left, done int64, rate float64, format string, args ...any) *orchestratorv1.Estimate {
	return &orchestratorv1.Estimate{
		Known: true, Remaining: durationpb.New(remaining), CompleteTime: timestamppb.New(now.Add(remaining)),
		UnitsLeft: left, UnitsDone: done, UnitsPerSecond: rate, Basis: fmt.Sprintf(format, args...),
	}
}

func (w waits) roEstimate(ctx context.Context, r store.ROReplacement, counts map[store.StepState]int64, now time.Time) *orchestratorv1.Estimate {
	done := counts[store.StepVolumeDeleted]
	left := counts[store.StepRequested] + counts[store.StepRunning] + counts[store.StepComplete] + counts[store.StepCollecting]
	switch {
	case r.State.Terminal():
		return known(now, 0, 0, done, 0, "ended %s", r.State)
	case w.holds.Of(r.ID) != nil:
		return unknown(left, done, "paused: nothing moves until it is resumed")
	case r.State == store.ROCompleting:
		return known(now, 0, 0, done, 0, "every step done; the finish saga is completing it")
	case r.State != store.RORunning:
		return unknown(left, done, "%s: its steps (one per volume naming the old target) are made once the new copy is in place", r.State)
	case left == 0:
		return known(now, 0, 0, done, 0, "%d steps done; the old target's last references are going, then it completes", done)
	}
	finished, first, err := w.s.store.StepsDoneSince(ctx, r.ID, now.Add(-rateWindow))
	if err != nil {
		return unknown(left, done, "step rate unavailable: %v", err)
	}
	window := rateWindow
	if !first.IsZero() && now.Sub(first) < window {
		window = now.Sub(first)
	}
	if finished == 0 || window <= 0 {
		return unknown(left, done, "%d of %d steps done; none finished in the last %v", done, done+left, window.Round(time.Second))
	}
	rate := float64(finished) / window.Seconds()
	remaining := time.Duration(float64(left) / rate * float64(time.Second))
	return known(now, remaining, left, done, rate, "%d of %d steps done; %.1f steps/s over the last %v",
		done, done+left, rate, window.Round(time.Second))
}

func (w waits) rwEstimate(ctx context.Context, r store.RWReplacement, now time.Time) *orchestratorv1.Estimate {
	var done int64
	switch r.State {
	case store.RWRunning, store.RWDriving:
		done = 1
	case store.RWReplacementDone, store.RWCompleting:
		done = 2
	}
	left := 3 - done
	switch {
	case r.State.Terminal():
		return known(now, 0, 0, 3, 0, "ended %s", r.State)
	case w.holds.Of(r.ID) != nil:
		return unknown(left, done, "paused: nothing moves until it is resumed")
	}
	avg, n, err := w.s.store.RecentRWDurations(ctx, now.Add(-rwWindow))
	if err != nil {
		return unknown(left, done, "history unavailable: %v", err)
	}
	if n == 0 {
		return unknown(left, done, "%s (phase %d of 3); no rw request completed in the last %v to estimate from", r.State, done+1, rwWindow)
	}
	remaining := max(avg-now.Sub(r.RequestTime), 0)
	return known(now, remaining, left, done, 3/avg.Seconds(), "%s (phase %d of 3); the %d rw requests completed in the last %v took %v on average",
		r.State, done+1, n, rwWindow, avg.Round(time.Millisecond))
}

// watchKey is what must change for WatchReplacement to send a message: the
// records, not the estimates, which move with the clock.
func watchKey(msg *orchestratorv1.WatchReplacementResponse) string {
	c := proto.Clone(msg).(*orchestratorv1.WatchReplacementResponse)
	for _, r := range c.Replacements {
		r.Estimate = nil
	}
	return c.String()
}
