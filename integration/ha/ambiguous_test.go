package ha

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/pgproxy"
	"storagecp.dev/testsupport/stack"
)

// lossCategory is a kind of transaction whose COMMIT answer the test loses
// on purpose at least once: what a retry after an ambiguous commit must
// find already done.
type lossCategory struct {
	name    string
	process string
	// statement is text one of the transaction's statements contains.
	statement string
}

var lossCategories = []lossCategory{
	{"repair lock taken", stack.Orchestrator, "INSERT INTO volume_repair"},
	{"request transition", stack.Orchestrator, "SET state = $3"},
	{"saga log append", stack.Orchestrator, "saga_node_event"},
	{"volume swap", stack.Volume, "UPDATE volume SET data"},
	{"region allocation", stack.Allocator, "INSERT INTO region "},
}

// lossPlan is every proxy's policy while it is on: the first few
// transactions of each category lose their answer, and then every ninth
// transaction that wrote, up to a bound per process. Reads are spared, and
// the bound lets retries win in the end: a failover breaks connections
// once, not forever.
type lossPlan struct {
	mu      sync.Mutex
	on      bool
	hits    map[string]int // by category
	writes  map[string]int // by process
	other   map[string]int // by process
	proxies map[string][]*pgproxy.Proxy
}

const (
	hitsPerCategory = 3
	otherPerProcess = 20
)

func (lp *lossPlan) policy(process string) pgproxy.Policy {
	return func(c pgproxy.Commit) bool {
		lp.mu.Lock()
		defer lp.mu.Unlock()
		if !lp.on {
			return false
		}
		if !c.Writes() {
			return false
		}
		for _, cat := range lossCategories {
			if cat.process == process && lp.hits[cat.name] < hitsPerCategory && c.Touches(cat.statement) {
				lp.hits[cat.name]++
				return true
			}
		}
		lp.writes[process]++
		if lp.writes[process]%9 == 0 && lp.other[process] < otherPerProcess {
			lp.other[process]++
			return true
		}
		return false
	}
}

func (lp *lossPlan) set(on bool) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	lp.on = on
}

// A COMMIT whose answer is lost after PostgreSQL applied it — what a
// failover, a reset link or a dead proxy does at the worst moment — looks
// to the service like any broken connection: it answers Unavailable, or
// retries in place, and the retry must find its own effect. A proxy before
// each service's database loses the answer to some COMMITs of every kind
// that matters (a repair lock taken, a request's transition, a saga log
// append, the volume-service's swap, the allocator's allocation), and every
// seventh COMMIT besides, while a disk holding running rw regions and a
// snapshot with clones is replaced. Every request completes, nothing is
// taken twice or lost, and nothing is left behind.
func TestAmbiguousCommits(t *testing.T) {
	lp := &lossPlan{hits: map[string]int{}, writes: map[string]int{}, other: map[string]int{}, proxies: map[string][]*pgproxy.Proxy{}}
	var proxyMu sync.Mutex
	wrap := func(process, dsn string) (string, error) {
		switch process {
		case stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator:
		default:
			return dsn, nil // the simulated hardware keeps its own
		}
		d, ps, err := pgproxy.WrapDSN(dsn)
		if err != nil {
			return "", err
		}
		for _, p := range ps {
			p.SetPolicy(lp.policy(process))
			t.Cleanup(p.Close)
		}
		proxyMu.Lock()
		lp.proxies[process] = append(lp.proxies[process], ps...)
		proxyMu.Unlock()
		return d, nil
	}
	r := rack.Start(t, 4, 3, stack.Config{SimUpstairs: 2, WrapDSN: wrap})
	ctx := context.Background()

	// A disk running on an Upstairs, its snapshot, and clones of it: some
	// running, most not.
	disk := r.CreateDisk(t)
	atts := []*notifierv1.Attachment{r.Construct(t, disk, 0)}
	snap := r.Snapshot(t, disk)
	volumes := []string{disk, snap}
	for i := range 24 {
		c := r.Clone(t, snap)
		volumes = append(volumes, c)
		if i < 3 {
			atts = append(atts, r.Construct(t, c, 1))
		}
	}
	region := r.Targets(t, disk, commonv1.TargetKind_TARGET_KIND_RW_REGION)[0]

	lp.set(true)
	// The operator's expunge is a write too: retried like any other.
	expunged := r.DiskOf(t, region.DatasetId)
	if err := rack.RetryUnavailable(ctx, func() error {
		_, err := r.Allocator.ExpungePhysicalDisk(ctx, &allocatorv1.ExpungePhysicalDiskRequest{DiskId: expunged})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	for _, task := range []string{"ro_replacement_detector", "rw_replacement_detector"} {
		if _, err := r.Admin.ActivateBackgroundTask(ctx, &orchestratorv1.ActivateBackgroundTaskRequest{Name: task}); err != nil {
			t.Fatal(err)
		}
	}
	// Users go on meanwhile, retrying what answers Unavailable with the
	// same volume id, as a client of an idempotent API does.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := range 6 {
			id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i+1)
			volumes = append(volumes, id)
			if err := rack.RetryUnavailable(ctx, func() error {
				resp, err := r.Lifecycle.CloneVolume(ctx, &orchestratorv1.CloneVolumeRequest{SnapshotId: snap, VolumeId: id, Wait: true})
				return rack.SagaOutcome(t, "clone "+id, resp.GetSaga(), err)
			}); err != nil {
				t.Errorf("clone %s: %v", id, err)
			}
		}
	}()
	wg.Wait()
	reqs := r.WaitRequests(t, 3*time.Minute)

	for _, q := range reqs {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE &&
			q.RegionState != orchestratorv1.RegionReplacementState_REGION_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("%v request %s ended %v%v", q.Kind, q.ReplacementId, q.ReadOnlyState, q.RegionState)
		}
	}
	kinds := map[orchestratorv1.ReplacementKind]int{}
	for _, q := range reqs {
		kinds[q.Kind]++
	}
	t.Logf("requests by kind: %v", kinds)

	// What was lost, where.
	for _, process := range []string{stack.Volume, stack.Allocator, stack.Notifier, stack.Orchestrator} {
		var n, commits int64
		for _, p := range lp.proxies[process] {
			n += int64(len(p.Dropped()))
			commits += p.Commits()
		}
		t.Logf("%s: %d of %d COMMIT answers lost", process, n, commits)
		if n == 0 {
			t.Errorf("%s: no COMMIT answer lost; the test proves nothing there", process)
		}
	}
	for _, cat := range lossCategories {
		if lp.hits[cat.name] == 0 {
			t.Errorf("no %s lost its COMMIT answer; the test proves nothing for it", cat.name)
		} else {
			t.Logf("%s: %d answers lost", cat.name, lp.hits[cat.name])
		}
	}

	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.UpstairsCurrent(t)
	r.NoStuckSagas(t)

	// The users delete everything, answers still being lost; nothing may
	// be left.
	r.Drain(t, atts, volumes)
	lp.set(false)
	r.ExpectEmpty(t)
	r.NoStuckSagas(t)
}

// An operator's RequestReplacement whose COMMIT answer is lost answers
// Unavailable, and the request exists all the same. The retry finds it and
// must wake the start task as the first call would have: tasks here run
// hourly, so a request nobody wakes stays Requested.
func TestRequestReplacementRetriedAfterALostAnswer(t *testing.T) {
	var lost atomic.Int32
	wrap := func(process, dsn string) (string, error) {
		if process != stack.Orchestrator {
			return dsn, nil
		}
		d, ps, err := pgproxy.WrapDSN(dsn)
		if err != nil {
			return "", err
		}
		for _, p := range ps {
			p.SetPolicy(func(c pgproxy.Commit) bool { return c.Touches("INSERT INTO ro_replacement ") && lost.Add(1) == 1 })
			t.Cleanup(p.Close)
		}
		return d, nil
	}
	r := rack.Start(t, 4, 1, stack.Config{WrapDSN: wrap})
	ctx := context.Background()
	disk := r.CreateDisk(t)
	snap := r.Snapshot(t, disk)
	clone := r.Clone(t, snap)
	target := r.Targets(t, snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]

	_, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("the call whose answer was lost: %v, want Unavailable", err)
	}
	resp, err := r.Replacement.RequestReplacement(ctx, &orchestratorv1.RequestReplacementRequest{TargetId: target.TargetId})
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if lost.Load() != 1 {
		t.Fatalf("%d COMMIT answers lost, want 1", lost.Load())
	}
	t.Logf("the retry found request %s (created=%v)", resp.Replacement.ReplacementId, resp.Created)
	for _, q := range r.WaitRequests(t, time.Minute) {
		if q.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
			t.Errorf("request %s ended %v", q.ReplacementId, q.ReadOnlyState)
		}
	}
	if _, err := r.Admin.WaitIdle(ctx, &orchestratorv1.WaitIdleRequest{}); err != nil {
		t.Fatal(err)
	}
	r.Invariants(t)
	r.Validate(t)
	r.NoDataLoss(t)
	r.NoStuckSagas(t)
	r.Drain(t, nil, []string{disk, snap, clone})
	r.ExpectEmpty(t)
}
