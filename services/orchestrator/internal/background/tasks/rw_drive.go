package tasks

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
)

// DefaultDrivePeriod is the drive task's period when the tasks' common
// period is longer (it runs at least every 10 s: docs/architecture.md,
// "Background tasks").
const DefaultDrivePeriod = 10 * time.Second

// rwDrive looks at Running requests (docs/replacement.md, "rw-replacement-drive"): one
// whose new region the Upstairs reported repaired goes to ReplacementDone at
// once; the others get an rw-replacement-drive saga, which checks and, when needed, tells
// the running Upstairs or reconciles on a Pantry.
type rwDrive struct {
	env     Env
	limiter *background.Limiter
	drives  pacer // a new rw-replacement-drive per request at most every redriveEvery
	// heldAt is when a pass last found a request held by an operator: the
	// stall bound runs from there, so time spent paused never ends a repair
	// NeedsOperator the moment it is resumed.
	heldAt map[uuid.UUID]time.Time
	lost   lostAnswers // requests whose done or give-up ended in an error
}

// Only the Upstairs can say a repair finished, and it tells the notifier,
// not us. While some request waits on a repair, the task re-activates
// itself every watchEvery to look (one cheap read per request), and starts
// a new rw-replacement-drive for a request at most every redriveEvery.
const (
	watchEvery   = 300 * time.Millisecond
	redriveEvery = 2 * time.Second
)

// RWDriveStatus is the drive task's status per activation.
type RWDriveStatus struct {
	DoneOK         []string `json:"done_ok"`
	DriveInvokedOK []string `json:"drive_invoked_ok"`
	// GaveUp: requests ended DataLost or NeedsOperator, with why.
	GaveUp []string `json:"gave_up"`
	// Skipped: requests left alone this pass, with why (a drive not due
	// yet, the task's saga bound).
	Skipped Skips    `json:"skipped"`
	Errors  []string `json:"errors"`
}

// RWBounds bound how long a rw replacement is driven before it gives up.
// Without them, one whose repair can never finish re-drove every few
// seconds forever, holding its volume's repair lock, and every read-only
// step of that volume (and so its whole request) waited behind it.
type RWBounds struct {
	// MaxDriveAttempts ends a request NeedsOperator once its repair was
	// started this many times (each a live-repair notification or a Pantry
	// reconciliation) without finishing: a repair that fails that often
	// is not failing transiently.
	MaxDriveAttempts int
	// StallTimeout ends a request NeedsOperator when neither a drive
	// attempt nor any repair report (start, progress, finish) came for
	// this long: an Upstairs that never reports is not repairing.
	StallTimeout time.Duration
}

// Default bounds. A repair reports progress while it runs, so the stall
// timeout only has to outlast the gaps between reports and between drive
// attempts (redriveEvery), not a whole repair of a large region.
const (
	DefaultMaxDriveAttempts = 20
	DefaultStallTimeout     = 10 * time.Minute
)

func (b RWBounds) withDefaults() RWBounds {
	if b.MaxDriveAttempts <= 0 {
		b.MaxDriveAttempts = DefaultMaxDriveAttempts
	}
	if b.StallTimeout <= 0 {
		b.StallTimeout = DefaultStallTimeout
	}
	return b
}

// RWDriveName is the task's name (AdminService, metrics, logs).
const RWDriveName = "rw_replacement_drive"

func (t *rwDrive) Name() string { return RWDriveName }
func (t *rwDrive) Description() string {
	return "marks rw replacements done when the Upstairs reported the new region repaired, or starts rw-replacement-drive"
}

func (t *rwDrive) Activate(ctx context.Context) any {
	st := &RWDriveStatus{DoneOK: []string{}, DriveInvokedOK: []string{}, GaveUp: []string{}, Errors: []string{}}
	d := t.env.Deps
	reqs, err := d.Store.RWReplacementsIn(ctx, store.RWRunning)
	if err != nil {
		errf(&st.Errors, "listing running: %v", err)
		return st
	}
	endedUnseen := advancedPast(&t.lost, reqs, func(r store.RWReplacement) uuid.UUID { return r.ID })
	waiting := false
	for _, r := range reqs {
		if r.NewRegionID == nil {
			errf(&st.Errors, "request %s: running without a new region", r.ID)
			continue
		}
		rs, err := sagadef.RegionRepairState(ctx, d, *r.NewRegionID)
		if err != nil {
			errf(&st.Errors, "request %s: repair notifications: %v", r.ID, err)
			continue
		}
		if rs.Succeeded {
			if err := d.Store.SetRWReplacementDoneFromRunning(ctx, r.ID); err != nil {
				errf(&st.Errors, "request %s: done: %v", r.ID, err)
				t.lost.note(r.ID)
				continue
			}
			st.DoneOK = append(st.DoneOK, "request "+r.ID.String())
			continue
		}
		waiting = true
		if t.env.heldBy(r.ID, &st.Skipped, "request "+r.ID.String()) {
			if t.heldAt == nil {
				t.heldAt = map[uuid.UUID]time.Time{}
			}
			t.heldAt[r.ID] = time.Now()
			continue
		}
		if ok, wait := t.drives.due(r.ID); !ok {
			st.Skipped.Add("request %s: next drive due in %v (the repair is running or being started)", r.ID, wait.Round(time.Millisecond))
			continue
		}
		if end, why, err := t.bound(ctx, r, rs); err != nil {
			errf(&st.Errors, "request %s: bounds: %v", r.ID, err)
			continue
		} else if end != "" {
			if err := d.Store.GiveUpRW(ctx, r.ID, end, why); err != nil {
				errf(&st.Errors, "request %s: give up: %v", r.ID, err)
				t.lost.note(r.ID)
				continue
			}
			t.env.Logger.Error("rw replacement given up", "request_id", r.ID, "volume_id", r.VolumeID, "end", end, "reason", why)
			countGaveUp(ctx, end)
			st.GaveUp = append(st.GaveUp, fmt.Sprintf("request %s: %s: %s", r.ID, end, why))
			continue
		}
		ok, err := startSaga(ctx, t.env, t.limiter, job{key: r.ID.String(), record: r.ID, request: r.ID, task: t.Name(), attempts: r.Attempts, skipped: &st.Skipped}, sagadef.RWDrive,
			sagadef.RWDriveParams{RequestID: r.ID, VolumeID: r.VolumeID, NewRegionID: *r.NewRegionID},
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(r.ID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "request %s: start saga: %v", r.ID, err)
		case ok:
			st.DriveInvokedOK = append(st.DriveInvokedOK, "request "+r.ID.String())
		}
	}
	if len(st.DoneOK) > 0 || len(st.GaveUp) > 0 || endedUnseen > 0 {
		sagadef.Wakeup(d.Wake.RWFinish)
		// Each gave back its repair's rebuild slot.
		t.env.slotFreed(sagadef.RWDrive)
	}
	ids := make([]uuid.UUID, len(reqs))
	for i, r := range reqs {
		ids[i] = r.ID
	}
	t.drives.keepOnly(ids)
	maps.DeleteFunc(t.heldAt, func(id uuid.UUID, _ time.Time) bool { return !slices.Contains(ids, id) })
	if waiting {
		t.drives.kickAfter(watchEvery, func() { sagadef.Wakeup(t.env.Deps.Wake.RWDrive) })
	}
	return st
}

// bound says whether a Running request whose repair has not finished must
// give up, and as what: DataLost when no member of its region set can still
// serve the data (checked first: no attempt can help then), NeedsOperator
// past its attempts or when nothing happened for StallTimeout. "" to go on.
func (t *rwDrive) bound(ctx context.Context, r store.RWReplacement, rs sagadef.RepairState) (store.RegionState, string, error) {
	d := t.env.Deps
	// A deleted volume needs no repair: the drive saga concludes done.
	if gone, err := sagadef.VolumeDeleted(ctx, d, r.VolumeID); err != nil || gone {
		return "", "", err
	}
	unrepaired, err := d.Store.UnrepairedRegions(ctx, r.VolumeID)
	if err != nil {
		return "", "", err
	}
	sources, fates, err := sagadef.RepairSources(ctx, d, r.VolumeID, *r.NewRegionID, unrepaired)
	if err != nil {
		return "", "", err
	}
	if sources == 0 {
		return store.RWDataLost, "no copy of the region set survives to repair from: " + fates, nil
	}
	steps, err := d.Store.DriveSteps(ctx, r.ID)
	if err != nil {
		return "", "", err
	}
	b := t.env.RWBounds.withDefaults()
	if len(steps) >= b.MaxDriveAttempts {
		return store.RWNeedsOperator, fmt.Sprintf("the repair was started %d times (the bound) and never finished", len(steps)), nil
	}
	if len(steps) == 0 {
		// No repair ever started (no running Upstairs, no Pantry to
		// reconcile on, or every drive unwound before it told anyone):
		// the stall bound runs from the first drive this leader tried.
		// Without it such a request held its volume's lock for ever.
		first := t.drives.firstDue(r.ID)
		if h := t.heldAt[r.ID]; !first.IsZero() && h.After(first) {
			first = h
		}
		if idle := time.Since(first); !first.IsZero() && idle > b.StallTimeout && rs.LastReport.Before(first) {
			return store.RWNeedsOperator, fmt.Sprintf("no repair could be started for %v (bound %v): no running Upstairs reported, and no drive reached one (is a consumer running, or a Pantry configured?)",
				idle.Round(time.Second), b.StallTimeout), nil
		}
		return "", "", nil
	}
	last := steps[len(steps)-1].Time
	if rs.LastReport.After(last) {
		last = rs.LastReport
	}
	if h := t.heldAt[r.ID]; h.After(last) {
		last = h
	}
	if idle := time.Since(last); idle > b.StallTimeout {
		return store.RWNeedsOperator, fmt.Sprintf("no drive attempt and no repair report for %v (bound %v) after %d attempts",
			idle.Round(time.Second), b.StallTimeout, len(steps)), nil
	}
	return "", "", nil
}

// registerRW adds the rw region replacement tasks; the drive task runs at
// least every DefaultDrivePeriod.
func registerRW(d *background.Driver, env Env) {
	det := &rwDetector{env: env, limiter: background.NewLimiter(env.MaxSagas, 1), deletedScans: pacer{every: deletedScanEvery},
		listings: listingPacer{pacer: pacer{every: listingEvery}}}
	d.Register(det, env.Period, det.limiter)
	drivePeriod := env.Period
	if drivePeriod <= 0 || drivePeriod > DefaultDrivePeriod {
		drivePeriod = DefaultDrivePeriod
	}
	drive := &rwDrive{env: env, limiter: background.NewLimiter(env.MaxSagas, 1), drives: pacer{every: redriveEvery}}
	d.Register(drive, drivePeriod, drive.limiter)
	fin := &rwFinish{env: env, limiter: background.NewLimiter(env.MaxSagas, 1)}
	d.Register(fin, env.Period, fin.limiter)
}
