package rwreplacement

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/testsupport/stack"
)

// rrTemplates are the rw replacement sagas, in the order a request meets
// them.
var rrTemplates = []string{"rw-replacement-start", "rw-replacement-drive", "rw-replacement-finish"}

// rrFailNode is the node every rw replacement saga ends with: failing it
// (STORAGECP_FAIL_AT) unwinds through every undo the saga has.
const rrFailNode = "update_request"

// sagaNode is one action node of a saga as GetSaga shows it.
type sagaNode struct {
	name    string
	hasUndo bool
}

// actionNodes returns the action nodes of the first saga of each rw
// replacement template the orchestrator ran.
func (r rwRack) actionNodes(t *testing.T) map[string][]sagaNode {
	t.Helper()
	ctx := context.Background()
	out := map[string][]sagaNode{}
	resp, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.Sagas {
		if _, done := out[s.Name]; done {
			continue
		}
		switch s.Name {
		case "rw-replacement-start", "rw-replacement-drive", "rw-replacement-finish":
		default:
			continue
		}
		g, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
		if err != nil {
			t.Fatal(err)
		}
		var nodes []sagaNode
		for _, n := range g.Nodes {
			if n.Kind == "action" {
				nodes = append(nodes, sagaNode{n.Name, n.HasUndo})
			}
		}
		out[s.Name] = nodes
	}
	return out
}

// poker returns a function that activates the rw tasks at most every
// second: after a crash nothing else kicks them.
func (r rwRack) poker() func() {
	last := time.Time{}
	return func() {
		if time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		for _, task := range []string{"rw_replacement_detector", "rw_replacement_drive", "rw_replacement_finish"} {
			_, _ = r.Admin.ActivateBackgroundTask(context.Background(), &orchestratorv1.ActivateBackgroundTaskRequest{Name: task})
		}
	}
}

// waitComplete waits for a request to complete, poking the rw tasks.
func (r rwRack) waitComplete(t *testing.T, region string, timeout time.Duration) *orchestratorv1.Replacement {
	t.Helper()
	return r.waitRW(t, region, rwComplete, timeout, r.poker())
}

// waitAllComplete waits until every rw request is Complete, poking the rw
// tasks.
func (r rwRack) waitAllComplete(t *testing.T, timeout time.Duration) {
	t.Helper()
	poke := r.poker()
	harness.Eventually(t, timeout, "every rw request Complete", func() error {
		poke()
		for _, q := range r.rwRequests(t) {
			if q.RegionState != rwComplete {
				return fmt.Errorf("request %s is %v", q.ReplacementId, q.RegionState)
			}
		}
		return nil
	})
}

// crashPoint is one process-level crash case.
type crashPoint struct{ template, node, at string }

func (p crashPoint) String() string { return p.template + "/" + p.node + "/" + p.at }

// env is the orchestrator environment that makes it crash there: an
// after_undo point also fails the saga's last node, so it unwinds through
// the undo.
func (p crashPoint) env() []string {
	env := []string{"STORAGECP_CRASH_AT=" + p.String()}
	if p.at == "after_undo" {
		env = append(env, "STORAGECP_FAIL_AT="+p.template+"/"+rrFailNode)
	}
	return env
}

// rrCrashPoints lists the crash points of the rw sagas: after `started` and
// after the action at every action node, after the undo at every node with
// one (reached by failing the saga's last node).
func rrCrashPoints(t *testing.T, nodes map[string][]sagaNode) []crashPoint {
	var out []crashPoint
	for _, tmpl := range rrTemplates {
		if len(nodes[tmpl]) == 0 {
			t.Fatalf("reference run has no %s saga", tmpl)
		}
		for _, n := range nodes[tmpl] {
			out = append(out, crashPoint{tmpl, n.name, "after_started"}, crashPoint{tmpl, n.name, "after_action"})
		}
		for _, n := range nodes[tmpl] {
			if n.hasUndo && n.name != rrFailNode {
				out = append(out, crashPoint{tmpl, n.name, "after_undo"})
			}
		}
	}
	return out
}

// A crash of the orchestrator right after `started` is committed, right
// after the action's effect, and right after an undo's effect, at every
// node of rw-replacement-start, rw-replacement-drive and rw-replacement-finish (no consumer: the Pantry path):
// the restarted orchestrator recovers the saga — finishing it, or finishing
// its unwind and retrying — and the request still completes with the world
// consistent. Outside soak runs (STORAGECP_SOAK=1) every third point runs.
//
// Every case expunges a disk, and every expunge also starts replacements of
// earlier cases' volumes with a region there: a fresh rack every few cases
// keeps room for 3+1 placement on distinct sleds.
func TestCrashAtEveryRRNode(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts the orchestrator twice per crash point")
	}
	const casesPerRack = 8
	every := 3
	if os.Getenv("STORAGECP_SOAK") == "1" {
		every = 1
	}
	var points []crashPoint
	var r rwRack
	ran := 0
	t.Run("rack-0", func(t *testing.T) {
		r = startRack(t, 6, 4)
		// A reference run names the nodes.
		disk := r.CreateDisk(t)
		old, _ := r.expungeRegion(t, disk)
		r.waitComplete(t, old.TargetId, 60*time.Second)
		points = rrCrashPoints(t, r.actionNodes(t))
	})
	if t.Failed() {
		return
	}
	var sample []crashPoint
	for i, p := range points {
		if (i+1)%every == 0 {
			sample = append(sample, p)
		}
	}
	for batch := 0; batch*casesPerRack < len(sample); batch++ {
		cases := sample[batch*casesPerRack : min(len(sample), (batch+1)*casesPerRack)]
		t.Run(fmt.Sprintf("rack-%d", batch+1), func(t *testing.T) {
			r := startRack(t, 6, 4)
			for _, p := range cases {
				ran++
				t.Run(p.String(), func(t *testing.T) { r.crashCase(t, p) })
			}
		})
	}
	t.Logf("%d of %d crash points run (%s)", ran, len(points), map[bool]string{true: "all", false: "every third; make soak runs all"}[every == 1])
}

func (r rwRack) crashCase(t *testing.T, p crashPoint) {
	disk := r.CreateDisk(t)
	regions, gen := r.regionSet(t, disk)
	r.RestartOrchestrator(t, p.env()...)
	defer func() {
		if t.Failed() {
			r.RestartOrchestrator(t)
		}
	}()
	r.Expunge(t, r.DiskOf(t, regions[0].DatasetId))
	proc := r.Stack.Proc(stack.Orchestrator)
	if !proc.Wait(60 * time.Second) {
		t.Fatalf("orchestrator did not crash at %s", p)
	}
	if err := proc.RestartWithEnv(); err != nil {
		t.Fatal(err)
	}
	r.WaitLeader(t, r.Admin)
	req := r.waitComplete(t, regions[0].TargetId, 90*time.Second)
	// The expunge also started replacements of earlier cases' volumes with
	// a region on that disk; they must finish too (and release their locks).
	r.waitAllComplete(t, 90*time.Second)
	r.checkReplaced(t, disk, regions[0], req, gen+1)
	r.Validate(t)
}
