package rwreplacement

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/deploy/stack"
)

// rrTemplates are the rw replacement sagas, in the order a request meets
// them.
var rrTemplates = []string{"rr-start", "rr-drive", "rr-finish"}

// actionNodes returns the action nodes of the first saga of each rw
// replacement template the orchestrator ran.
func (r rwRack) actionNodes(t *testing.T) map[string][]string {
	t.Helper()
	ctx := context.Background()
	out := map[string][]string{}
	resp, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.Sagas {
		if _, done := out[s.Name]; done {
			continue
		}
		switch s.Name {
		case "rr-start", "rr-drive", "rr-finish":
		default:
			continue
		}
		g, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, n := range g.Nodes {
			if n.Kind == "action" {
				names = append(names, n.Name)
			}
		}
		out[s.Name] = names
	}
	return out
}

// waitComplete waits for a request to complete, activating the rw tasks
// at most every second as it polls: after a crash nothing else kicks them.
func (r rwRack) waitComplete(t *testing.T, region string, timeout time.Duration) *orchestratorv1.Replacement {
	t.Helper()
	last := time.Time{}
	return r.waitRW(t, region, rwComplete, timeout, func() {
		if time.Since(last) < time.Second {
			return
		}
		last = time.Now()
		for _, task := range []string{"rw_replacement_detector", "rw_replacement_drive", "rw_replacement_finish"} {
			_, _ = r.Admin.ActivateBackgroundTask(context.Background(), &orchestratorv1.ActivateBackgroundTaskRequest{Name: task})
		}
	})
}

// A crash of the orchestrator right after `started` is committed and
// right after the action's effect, at every action node of rr-start,
// rr-drive and rr-finish (no consumer: the Pantry path): the restarted
// orchestrator recovers the saga and the request still completes with the
// world consistent. Outside soak runs (STORAGECP_SOAK=1) every third point
// is run, as the lifecycle crash test does.
func TestCrashAtEveryRRNode(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts the orchestrator twice per crash point")
	}
	r := startRack(t, 4, 12)
	// A reference run names the nodes.
	disk := r.CreateDisk(t)
	old, _ := r.expungeRegion(t, disk)
	r.waitComplete(t, old.TargetId, 60*time.Second)
	nodes := r.actionNodes(t)
	n := 0
	for _, tmpl := range rrTemplates {
		if len(nodes[tmpl]) == 0 {
			t.Fatalf("reference run has no %s saga", tmpl)
		}
		for _, node := range nodes[tmpl] {
			for _, at := range []string{"after_started", "after_action"} {
				n++
				if os.Getenv("STORAGECP_SOAK") != "1" && n%3 != 0 {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/%s", tmpl, node, at), func(t *testing.T) {
					disk := r.CreateDisk(t)
					regions, gen := r.regionSet(t, disk)
					r.RestartOrchestrator(t, fmt.Sprintf("STORAGECP_CRASH_AT=%s/%s/%s", tmpl, node, at))
					r.Expunge(t, r.DiskOf(t, regions[0].DatasetId))
					proc := r.Stack.Proc(stack.Orchestrator)
					crashed := proc.Wait(60 * time.Second)
					if !crashed {
						t.Errorf("orchestrator did not crash at %s/%s/%s", tmpl, node, at)
						proc.Stop(10 * time.Second)
					}
					if err := proc.RestartWithEnv(); err != nil {
						t.Fatal(err)
					}
					r.WaitLeader(t, r.Admin)
					req := r.waitComplete(t, regions[0].TargetId, 90*time.Second)
					r.checkReplaced(t, disk, regions[0], req, gen+1)
				})
			}
		}
	}
}
