package sagadef_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/internal/testenv"
)

func dummyParams(t *saga.Template) any {
	id := uuid.New()
	switch t {
	case sagadef.ROGarbageCollect:
		return sagadef.GCParams{RequestID: id, StashID: id}
	case sagadef.ROStepGarbageCollect:
		return sagadef.StepGCParams{StepID: id, StashID: id}
	case sagadef.ROFinish:
		return sagadef.FinishParams{RequestID: id, NewRegionVolumeID: &id}
	case sagadef.ROStep:
		return sagadef.StepParams{StepID: id, RequestID: id, VolumeID: id}
	case sagadef.ROStepBatch:
		return sagadef.StepBatchParams{RequestID: id, Steps: []sagadef.BatchStep{{StepID: id, VolumeID: id}}}
	case sagadef.ROStepGCBatch:
		return sagadef.StepGCBatchParams{RequestID: id, Steps: []sagadef.GCBatchStep{{StepID: id, StashID: id}}}
	case sagadef.RWStart:
		return sagadef.RWStartParams{RequestID: id, VolumeID: id, OldRegionID: id}
	case sagadef.RWDrive:
		return sagadef.RWDriveParams{RequestID: id, VolumeID: id, NewRegionID: id}
	case sagadef.RWFinish:
		return sagadef.RWFinishParams{RequestID: id, StashVolumeID: id}
	case sagadef.VolumeCreate:
		return diskParams()
	case sagadef.VolumeClone:
		return sagadef.RegionSetParams{VolumeID: id, SnapshotID: &id}
	case sagadef.SnapshotCreate:
		return sagadef.SnapshotParams{DiskVolumeID: id, SnapshotID: id}
	case sagadef.VolumeDelete:
		return sagadef.DeleteParams{VolumeID: id}
	}
	return sagadef.StartParams{RequestID: id}
}

// drainer runs the real background tasks against the test's SEC, giving
// the sagas of one template hooks of the test's making.
type drainer struct {
	e      *testenv.Env
	driver *background.Driver
	mu     sync.Mutex
	tmpl   string
	hooks  func() *saga.Hooks
}

func newDrainer(t *testing.T, e *testenv.Env, tune ...func(*tasks.Env)) *drainer {
	d := &drainer{e: e, driver: background.NewDriver(e.Logger)}
	env := tasks.Env{Deps: e.Deps, Start: d.start, Period: 200 * time.Millisecond, MaxSagas: 16, Logger: e.Logger}
	for _, f := range tune {
		f(&env)
	}
	tasks.Register(d.driver, env)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.driver.Run(ctx); close(done) }()
	// Register bound e.Deps.Wake to this driver, and it stays bound: a
	// task's scheduled follow-up may still fire after the driver stopped,
	// and activating a stopped driver does nothing.
	t.Cleanup(func() { cancel(); <-done })
	return d
}

// arm gives every saga of template tmpl that the tasks start from now on
// the hooks that newHooks makes (one set per saga); nil disarms.
func (d *drainer) arm(tmpl string, newHooks func() *saga.Hooks) {
	d.mu.Lock()
	d.tmpl, d.hooks = tmpl, newHooks
	d.mu.Unlock()
}

func (d *drainer) start(ctx context.Context, t *saga.Template, params any, opts ...saga.CreateOption) (uuid.UUID, <-chan saga.Outcome, error) {
	d.mu.Lock()
	if t.Name() == d.tmpl && d.hooks != nil {
		opts = append(opts, saga.WithHooks(d.hooks()))
	}
	d.mu.Unlock()
	id, err := d.e.SEC.Create(ctx, t, params, opts...)
	if err != nil {
		return uuid.Nil, nil, err
	}
	done := make(chan saga.Outcome, 1)
	go func() {
		o, _ := d.e.SEC.Wait(context.Background(), id)
		done <- o
	}()
	return id, done, nil
}

// drain kicks the tasks until the request and every step are terminal.
func (d *drainer) drain(t *testing.T, request uuid.UUID) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		sagadef.Wakeup(d.e.Deps.Wake.All)
		r, err := d.e.Store.GetROReplacement(ctx, request)
		if err != nil {
			t.Fatal(err)
		}
		steps, err := d.e.Store.InProgressSteps(ctx, request)
		if err != nil {
			t.Fatal(err)
		}
		if r.State == store.ROComplete && steps == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s stuck in %s with %d steps in progress", request, r.State, steps)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sagatest.WaitIdle(t, d.e.Pool, 30*time.Second)
	sagatest.NoUndoFailed(t, d.e.Pool)
}

// deleteEverything deletes every volume left (twice: a disk kept for its
// snapshot's sake is freed by the second pass).
func deleteEverything(t *testing.T, e *testenv.Env) {
	t.Helper()
	for pass := 0; pass < 2; pass++ {
		vs := volumeIDs(t, e)
		for _, v := range vs {
			e.MustSucceed(t, sagadef.VolumeDelete, sagadef.DeleteParams{VolumeID: v})
		}
	}
}

func volumeIDs(t *testing.T, e *testenv.Env) []uuid.UUID {
	t.Helper()
	var out []uuid.UUID
	resp, err := e.Volumes.ListVolumes(context.Background(), listAll())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.Volumes {
		out = append(out, uuid.MustParse(v.VolumeId))
	}
	return out
}

// drainRW kicks the tasks until the rw request is Complete.
func (d *drainer) drainRW(t *testing.T, request uuid.UUID) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		sagadef.Wakeup(d.e.Deps.Wake.All)
		if r := rwGet(t, d.e, request); r.State == store.RWComplete {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("rw request %s stuck in %s", request, r.State)
		}
		time.Sleep(50 * time.Millisecond)
	}
	sagatest.WaitIdle(t, d.e.Pool, 30*time.Second)
	sagatest.NoUndoFailed(t, d.e.Pool)
}
