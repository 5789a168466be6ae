package sagadef_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	upstairsv1 "storagecp.dev/gen/go/storage/upstairs/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/saga/sagatest"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/testenv"
)

// Every user operation before every saga node.
//
// Users clone, snapshot, construct, detach and delete at any moment while a
// replacement runs, and the background tasks run whenever anything wakes
// them. For every action node of every saga — the lifecycle sagas, the
// seven read-only and three rw replacement sagas, and the volume-delete they
// embed — and for every operation the public API lets a user run on the
// objects in play, plus an activation of every background task, a case
// runs that operation right before that node, in the first saga of that
// template to reach it. An operator's abandonment of that very saga is one
// more operation. A second variant of each user operation then makes
// the same saga fail at its last node, so that it unwinds through whatever
// the operation did (a clone that copied a target the saga published, a
// volume deleted under it).
//
// Every case starts from the same world: a disk D written before its
// snapshot P was taken, a clone F running (and written) on a sim-upstairs,
// a clone G nobody runs, a read-only replacement request for one of P's
// region snapshots and a rw replacement request for one of F's regions
// (live repair through F's Upstairs). The
// real background tasks drive both requests; a lifecycle saga under test is
// run by the case itself (a disk created, D snapshotted, P cloned, G
// deleted). Every case ends with the same checks: no saga stuck, every
// request and step terminal, CheckInvariants and ValidateSystem clean, no
// live volume naming a target the allocator no longer has, no data-loss
// probe or content mismatch on any sim-upstairs, and — after every volume
// is deleted — nothing left in any service.
//
// `make test` runs a fixed sample (every interleaveStride-th case);
// `make soak` (STORAGECP_SOAK=1) runs them all. Each case is a subtest named
// template/node/operation[/unwind]: replay one with
// STORAGECP_SOAK=1 go test ./internal/sagadef -run
// 'TestUserOperationsBeforeEveryNode/<name>'.
func TestUserOperationsBeforeEveryNode(t *testing.T) {
	t.Parallel()
	soak := os.Getenv("STORAGECP_SOAK") == "1"
	var n, ran int
	for _, subj := range interleaveSubjects() {
		dag, err := subj.tmpl.BuildDAG(dummyParams(subj.tmpl))
		if err != nil {
			t.Fatal(err)
		}
		// The sample counts cases over every template in a fixed order,
		// so it does not depend on how the cases are grouped to run.
		var cases []interleaveCase
		for _, node := range dag.ActionNodes() {
			for _, o := range interleaveOps() {
				for _, unwind := range []bool{false, true} {
					if unwind && !o.user {
						continue
					}
					n++
					if !soak && n%interleaveStride != 0 {
						continue
					}
					name := fmt.Sprintf("%s/%s", node, o.name)
					if unwind {
						name += "/unwind"
					}
					cases = append(cases, interleaveCase{name: name, node: node, op: o, unwind: unwind})
				}
			}
		}
		ran += len(cases)
		if len(cases) == 0 {
			continue
		}
		// Each template's cases share a deployment of their own, and the
		// templates run in parallel (every case starts from and leaves an
		// empty world, so they need no other deployment's state): the
		// cases are sequential within a deployment, mostly waiting on
		// round trips between the processes.
		t.Run(subj.tmpl.Name(), func(t *testing.T) {
			t.Parallel()
			e := testenv.Start(t, testenv.Options{SimUpstairs: 2})
			// Five sleds: a read-only region kept for a clone after an
			// unwind still takes a sled out of the retry's placement (see
			// TestCloneDuringROStartSurvivesItsUnwind).
			e.SeedRack(t, 5, 2, 100*gib)
			e.Deps.PantryEndpoints = e.Stack.SimUpstairsAddrs()
			d := newDrainer(t, e, subj.tune...)
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					full := subj.tmpl.Name() + "/" + c.name
					t.Logf("case %s (replay: STORAGECP_SOAK=1 go test ./internal/sagadef -run 'TestUserOperationsBeforeEveryNode/%s')", full, full)
					runInterleaveCase(t, e, d, subj, c.node, dag.ActionNodes(), c.op, c.unwind)
				})
			}
		})
	}
	t.Logf("%d cases in all, %d run", n, ran)
}

// interleaveCase is one case of TestUserOperationsBeforeEveryNode: op right
// before node, and with unwind the saga failing at its last node after it.
type interleaveCase struct {
	name   string // node/op[/unwind], under the template's subtest
	node   string
	op     interleaveOp
	unwind bool
}

// interleaveStride samples the cases `make test` runs: about one in this
// many, spread over every template, node and operation (the stride is
// prime, so consecutive nodes get different operations).
const interleaveStride = 37

type interleaveSubject struct {
	tmpl *saga.Template
	// run starts the saga under test itself (lifecycle sagas); nil: the
	// background tasks start it while they drive the requests.
	run func(t *testing.T, w *interleaveWorld, opts ...saga.CreateOption)
	// tune sets up the deployment's tasks (the batch swap is off unless
	// a subject turns it on).
	tune []func(*tasks.Env)
}

func interleaveSubjects() []interleaveSubject {
	direct := func(tmpl *saga.Template, params func(w *interleaveWorld) any) interleaveSubject {
		return interleaveSubject{tmpl: tmpl, run: func(t *testing.T, w *interleaveWorld, opts ...saga.CreateOption) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if _, err := w.e.SEC.Run(ctx, tmpl, params(w), opts...); err != nil {
				t.Fatalf("run %s: %v", tmpl.Name(), err)
			}
		}}
	}
	return []interleaveSubject{
		direct(sagadef.VolumeCreate, func(*interleaveWorld) any { return diskParams() }),
		direct(sagadef.SnapshotCreate, func(w *interleaveWorld) any {
			return sagadef.SnapshotParams{DiskVolumeID: w.disk, SnapshotID: uuid.New()}
		}),
		direct(sagadef.VolumeClone, func(w *interleaveWorld) any {
			return sagadef.RegionSetParams{VolumeID: uuid.New(), SnapshotID: &w.snap}
		}),
		direct(sagadef.VolumeDelete, func(w *interleaveWorld) any { return sagadef.DeleteParams{VolumeID: w.g} }),
		{tmpl: sagadef.ROStart}, {tmpl: sagadef.ROGarbageCollect}, {tmpl: sagadef.ROStep},
		{tmpl: sagadef.ROStepGarbageCollect}, {tmpl: sagadef.ROFinish},
		{tmpl: sagadef.RWStart}, {tmpl: sagadef.RWDrive}, {tmpl: sagadef.RWFinish},
		// Last, so the sample of the others stays as it was: G, which no
		// Upstairs runs, takes the batch (F, running, its own step).
		{tmpl: sagadef.ROStepBatch, tune: []func(*tasks.Env){func(env *tasks.Env) { env.StepBatch = 8 }}},
		// With batches of one, every Complete step's stash is collected
		// in a batch first (F's and G's both).
		{tmpl: sagadef.ROStepGCBatch, tune: []func(*tasks.Env){func(env *tasks.Env) { env.StepBatch = 1 }}},
	}
}

// interleaveOp is one thing a user (or a task) does before the node. An
// operation the system refuses (the volume is gone, the lock is held) is a
// legitimate answer: what matters is that nothing is left inconsistent.
type interleaveOp struct {
	name string
	// user: a user operation (also run in the unwind variant).
	user bool
	run  func(ctx context.Context, t *testing.T, w *interleaveWorld)
}

func interleaveOps() []interleaveOp {
	runSaga := func(tmpl *saga.Template, params func(w *interleaveWorld) any) func(context.Context, *testing.T, *interleaveWorld) {
		return func(ctx context.Context, t *testing.T, w *interleaveWorld) {
			o, err := w.e.SEC.Run(ctx, tmpl, params(w))
			if err != nil {
				t.Errorf("%s: %v", tmpl.Name(), err)
				return
			}
			if o.Kind == saga.Stuck {
				t.Errorf("%s is stuck: %v", tmpl.Name(), o.Error())
			}
			w.opOutcome = o.Kind.String()
			if err := o.Error(); err != nil {
				w.opOutcome += ": " + err.Error()
			}
		}
	}
	return []interleaveOp{
		{name: "clone_snapshot", user: true, run: runSaga(sagadef.VolumeClone, func(w *interleaveWorld) any {
			return sagadef.RegionSetParams{VolumeID: uuid.New(), SnapshotID: &w.snap}
		})},
		{name: "snapshot_clone", user: true, run: runSaga(sagadef.SnapshotCreate, func(w *interleaveWorld) any {
			return sagadef.SnapshotParams{DiskVolumeID: w.g, SnapshotID: uuid.New()}
		})},
		{name: "create_disk", user: true, run: runSaga(sagadef.VolumeCreate, func(*interleaveWorld) any { return diskParams() })},
		{name: "construct_consumer", user: true, run: func(ctx context.Context, t *testing.T, w *interleaveWorld) {
			_, err := w.e.Notifier.ConstructVolume(ctx, &notifierv1.ConstructVolumeRequest{
				VolumeId: w.g.String(), Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: w.e.Stack.SimUpstairsAddrs()[1],
			})
			w.opOutcome = errText(err)
		}},
		{name: "detach_consumer", user: true, run: func(ctx context.Context, t *testing.T, w *interleaveWorld) {
			atts, err := w.e.Notifier.ListAttachments(ctx, &notifierv1.ListAttachmentsRequest{VolumeId: w.f.String()})
			if err != nil {
				t.Errorf("list attachments: %v", err)
				return
			}
			for _, a := range atts.Attachments {
				_, err := w.e.Notifier.DetachUpstairs(ctx, &notifierv1.DetachUpstairsRequest{AttachmentId: a.AttachmentId})
				w.opOutcome = errText(err)
			}
		}},
		{name: "delete_disk", user: true, run: runSaga(sagadef.VolumeDelete, func(w *interleaveWorld) any { return sagadef.DeleteParams{VolumeID: w.disk} })},
		{name: "delete_snapshot", user: true, run: runSaga(sagadef.VolumeDelete, func(w *interleaveWorld) any { return sagadef.DeleteParams{VolumeID: w.snap} })},
		{name: "delete_clone", user: true, run: runSaga(sagadef.VolumeDelete, func(w *interleaveWorld) any { return sagadef.DeleteParams{VolumeID: w.f} })},
		{name: "delete_stash", user: true, run: func(ctx context.Context, t *testing.T, w *interleaveWorld) {
			// A user's delete of a replacement's stash is refused: the
			// replacement deletes it when it is done with it.
			stash := w.liveVolume(ctx, t, volumev1.VolumePurpose_VOLUME_PURPOSE_STASH)
			if stash == uuid.Nil {
				w.opOutcome = "no stash"
				return
			}
			runSaga(sagadef.VolumeDelete, func(*interleaveWorld) any { return sagadef.DeleteParams{VolumeID: stash} })(ctx, t, w)
		}},
		{name: "operator_abandon", run: func(ctx context.Context, t *testing.T, w *interleaveWorld) {
			// An operator abandons the saga itself, right before this node:
			// it unwinds (the node's action, let finish within the unwind
			// grace, is undone too), and its request or step goes back to
			// its task, which must still see it through.
			id, ok := saga.HookSagaID(ctx)
			if !ok {
				t.Errorf("operator_abandon: the hook does not know its saga")
				return
			}
			res, err := w.e.SEC.Unwind(context.Background(), id, "abandoned by the interleaving harness")
			w.opOutcome = fmt.Sprintf("%+v %s", res, errText(err))
			if err != nil {
				t.Errorf("abandon saga %s: %v", id, err)
			}
		}},
		{name: "activate_every_task", run: func(ctx context.Context, t *testing.T, w *interleaveWorld) {
			var wg sync.WaitGroup
			for _, st := range w.d.driver.Statuses() {
				wg.Go(func() { w.d.activateAndWait(t, st.Name) })
			}
			wg.Wait()
		}},
	}
}

func errText(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

// interleaveWorld is one case's objects.
type interleaveWorld struct {
	e                    *testenv.Env
	d                    *drainer
	disk, snap, f, g     uuid.UUID
	roRequest, rwRequest uuid.UUID
	opOutcome            string
	h                    *roHarness
}

// newInterleaveWorld makes the objects every case starts from. D is written
// (through an Upstairs, as a guest would) before P is taken, and F after
// it is constructed, so that the content oracle tells every copy of real
// data from a blank or wrong one: P's region snapshots hold D's written
// content, and F's rw regions content of their own, which the rw
// replacement's live repair must copy into the new region.
func newInterleaveWorld(t *testing.T, e *testenv.Env, d *drainer) *interleaveWorld {
	t.Helper()
	disk := createDisk(t, e)
	att := rwConstruct(t, e, disk, notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, 1)
	rwWrite(t, e, 1, disk)
	if _, err := e.Notifier.DetachUpstairs(context.Background(), &notifierv1.DetachUpstairsRequest{AttachmentId: att.AttachmentId}); err != nil {
		t.Fatal(err)
	}
	h := &roHarness{e: e, disk: disk}
	h.snap = snapshot(t, e, disk)
	h.f = uuid.New()
	e.MustSucceed(t, sagadef.VolumeClone, sagadef.RegionSetParams{VolumeID: h.f, SnapshotID: &h.snap})
	h.snapshots = volumeTargets(t, e, h.snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)
	w := &interleaveWorld{e: e, d: d, disk: h.disk, snap: h.snap, f: h.f, g: uuid.New(), h: h}
	e.MustSucceed(t, sagadef.VolumeClone, sagadef.RegionSetParams{VolumeID: w.g, SnapshotID: &w.snap})
	rwConstruct(t, e, w.f, notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, 0)
	rwWrite(t, e, 0, w.f)
	return w
}

// request inserts the two requests, as the detectors would: the tasks,
// always running, start their sagas from then on.
func (w *interleaveWorld) request(t *testing.T) {
	t.Helper()
	w.roRequest = w.h.request(t, 0).ID
	w.rwRequest = rwRequestFor(t, w.e, w.f).ID
}

// liveVolume returns a live volume of the purpose, or uuid.Nil.
func (w *interleaveWorld) liveVolume(ctx context.Context, t *testing.T, p volumev1.VolumePurpose) uuid.UUID {
	vs, err := w.e.Volumes.ListVolumes(ctx, &volumev1.ListVolumesRequest{PageSize: 1000})
	if err != nil {
		t.Errorf("list volumes: %v", err)
		return uuid.Nil
	}
	for _, v := range vs.Volumes {
		if v.Purpose == p {
			return uuid.MustParse(v.VolumeId)
		}
	}
	return uuid.Nil
}

func runInterleaveCase(t *testing.T, e *testenv.Env, d *drainer, subj interleaveSubject, node string, nodes []string, o interleaveOp, unwind bool) {
	lossBefore, contentBefore := oracleEvents(t, e)
	w := newInterleaveWorld(t, e, d)
	last := nodes[len(nodes)-1]
	var fired atomic.Bool
	var once sync.Once
	hooks := func() *saga.Hooks {
		h := &saga.Hooks{}
		h.BeforeNode = func(ctx context.Context, n string) {
			if n != node {
				return
			}
			once.Do(func() {
				fired.Store(true)
				o.run(ctx, t, w)
				if unwind {
					// This saga, and only this one, unwinds through what
					// the operation did.
					h.InjectError(last)
				}
			})
		}
		return h
	}
	// Armed before the requests exist: the tasks start sagas as soon as
	// they do.
	if subj.run == nil {
		d.arm(subj.tmpl.Name(), hooks)
	}
	w.request(t)
	if subj.run != nil {
		subj.run(t, w, saga.WithHooks(hooks()))
	}
	d.drainAll(t)
	d.arm("", nil)
	if !fired.Load() {
		t.Fatalf("no %s saga reached %s: the operation never ran", subj.tmpl.Name(), node)
	}
	t.Logf("%s before %s: %s", o.name, node, w.opOutcome)
	namedTargetsAllocated(t, e)
	invariantsHold(t, e)
	validateHolds(t, e)
	if loss, content := oracleEvents(t, e); loss != lossBefore || content != contentBefore {
		t.Errorf("the sim-upstairs saw %d data-loss probes and %d content mismatches", loss-lossBefore, content-contentBefore)
		for _, p := range e.Stack.Procs() {
			if strings.HasPrefix(p.Name, "sim-upstairs") {
				t.Logf("---- %s\n%s", p.Name, p.LogTail(40))
			}
		}
	}
	deleteEverything(t, e)
	d.drainAll(t)
	expectWorld(t, e, world{})
}

// oracleEvents sums every sim-upstairs' data-loss probes (a running
// volume's target destroyed) and content mismatches (a running volume
// reading other bytes than it did, or copies that disagree).
func oracleEvents(t testing.TB, e *testenv.Env) (dataLoss, content int64) {
	t.Helper()
	for i := range e.Stack.SimUpstairsAddrs() {
		resp, err := rwSim(t, e, i).ListVolumes(context.Background(), &upstairsv1.ListVolumesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		dataLoss += resp.TotalDataLossEvents
		content += resp.TotalContentMismatchEvents
	}
	return dataLoss, content
}

// drainAll kicks the tasks until every request and step is terminal and no
// saga runs, then requires that none is stuck.
func (d *drainer) drainAll(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(60 * time.Second)
	for {
		sagadef.Wakeup(d.e.Deps.Wake.All)
		var open int
		err := d.e.Pool.QueryRow(ctx, `SELECT
			(SELECT count(*) FROM ro_replacement WHERE state NOT IN ('complete', 'data_lost')) +
			(SELECT count(*) FROM ro_replacement_step WHERE state <> 'volume_deleted') +
			(SELECT count(*) FROM rw_replacement WHERE state <> 'complete') +
			(SELECT count(*) FROM saga WHERE saga_state IN ('running', 'unwinding'))`).Scan(&open)
		if err != nil {
			t.Fatal(err)
		}
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not drained after 60s:\n%s", d.openRecords(t))
		}
		time.Sleep(50 * time.Millisecond)
	}
	sagatest.NoUndoFailed(t, d.e.Pool)
}

// openRecords describes what is not terminal, for a failure message.
func (d *drainer) openRecords(t *testing.T) string {
	var b strings.Builder
	rows, err := d.e.Pool.Query(context.Background(), `
		SELECT 'ro request ' || id || ' ' || state FROM ro_replacement WHERE state NOT IN ('complete', 'data_lost')
		UNION ALL SELECT 'step ' || id || ' of volume ' || volume_id || ' ' || state FROM ro_replacement_step WHERE state <> 'volume_deleted'
		UNION ALL SELECT 'rw request ' || id || ' ' || state FROM rw_replacement WHERE state <> 'complete'
		UNION ALL SELECT 'saga ' || id || ' ' || name || ' ' || saga_state FROM saga WHERE saga_state IN ('running', 'unwinding')`)
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return err.Error()
		}
		b.WriteString("  " + s + "\n")
	}
	for _, st := range d.driver.Statuses() {
		fmt.Fprintf(&b, "  task %s: %s\n", st.Name, st.LastStatus)
	}
	return b.String()
}
