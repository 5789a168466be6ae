package bgtasks

import (
	"context"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/datastore"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagas"
	"storagecp.dev/orchestrator/internal/tasks"
)

// DefaultDrivePeriod is the drive task's period when the tasks' common
// period is longer (spec/platform.md §D.4: every 10 s).
const DefaultDrivePeriod = 10 * time.Second

// rwDrive looks at Running requests (spec/platform.md §D.4): one whose new
// region the Upstairs reported repaired goes to ReplacementDone at once;
// the others get an rr-drive saga, which checks and, when needed, tells the
// running Upstairs or reconciles on a Pantry.
type rwDrive struct {
	env     Env
	limiter *tasks.Limiter
	drives  pacer // a new rr-drive per request at most every redriveEvery
}

// Only the Upstairs can say a repair finished, and it tells the notifier,
// not us. While some request waits on a repair, the task re-activates
// itself every watchEvery to look (one cheap read per request), and starts
// a new rr-drive for a request at most every redriveEvery.
const (
	watchEvery   = 300 * time.Millisecond
	redriveEvery = 2 * time.Second
)

// RWDriveStatus is the drive task's status per activation.
type RWDriveStatus struct {
	DoneOK         []string `json:"done_ok"`
	DriveInvokedOK []string `json:"drive_invoked_ok"`
	Errors         []string `json:"errors"`
}

func (t *rwDrive) Name() string { return sagas.TaskRWDrive }
func (t *rwDrive) Description() string {
	return "marks rw replacements done when the Upstairs reported the new region repaired, or starts rr-drive"
}

func (t *rwDrive) Activate(ctx context.Context) any {
	st := &RWDriveStatus{DoneOK: []string{}, DriveInvokedOK: []string{}, Errors: []string{}}
	d := t.env.Deps
	reqs, err := d.Store.RegionRequestsIn(ctx, datastore.RWRunning)
	if err != nil {
		errf(&st.Errors, "listing running: %v", err)
		return st
	}
	waiting := false
	for _, r := range reqs {
		if r.NewRegionID == nil {
			errf(&st.Errors, "request %s: running without a new region", r.ID)
			continue
		}
		rs, err := sagas.RegionRepairState(ctx, d, *r.NewRegionID)
		if err != nil {
			errf(&st.Errors, "request %s: repair notifications: %v", r.ID, err)
			continue
		}
		if rs.Succeeded {
			if err := d.Store.SetRWReplacementDoneFromRunning(ctx, r.ID); err != nil {
				errf(&st.Errors, "request %s: done: %v", r.ID, err)
				continue
			}
			st.DoneOK = append(st.DoneOK, "request "+r.ID.String())
			continue
		}
		waiting = true
		if ok, _ := t.drives.due(r.ID); !ok {
			continue
		}
		ok, err := startSaga(ctx, t.env, t.limiter, r.ID.String(), sagas.RRDrive,
			sagas.RRDriveParams{RequestID: r.ID, VolumeID: r.VolumeID, NewRegionID: *r.NewRegionID},
			saga.WithTraceParent(r.Traceparent), saga.WithSubject(r.ID.String()))
		switch {
		case err != nil:
			errf(&st.Errors, "request %s: start saga: %v", r.ID, err)
		case ok:
			st.DriveInvokedOK = append(st.DriveInvokedOK, "request "+r.ID.String())
		}
	}
	if len(st.DoneOK) > 0 {
		d.KickTasks(sagas.TaskRWFinish)
	}
	ids := make([]uuid.UUID, len(reqs))
	for i, r := range reqs {
		ids[i] = r.ID
	}
	t.drives.keepOnly(ids)
	if waiting {
		t.drives.kickAfter(watchEvery, func() { t.env.Deps.KickTasks(sagas.TaskRWDrive) })
	}
	return st
}

// registerRW adds the rw region replacement tasks; the drive task runs at
// least every DefaultDrivePeriod.
func registerRW(d *tasks.Driver, env Env) {
	det := &rwDetector{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1)}
	d.Register(det, env.Period, det.limiter)
	drivePeriod := env.Period
	if drivePeriod <= 0 || drivePeriod > DefaultDrivePeriod {
		drivePeriod = DefaultDrivePeriod
	}
	drive := &rwDrive{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1), drives: pacer{every: redriveEvery}}
	d.Register(drive, drivePeriod, drive.limiter)
	fin := &rwFinish{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1)}
	d.Register(fin, env.Period, fin.limiter)
}
