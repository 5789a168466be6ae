package orchestrator

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

// pair is a rack with two orchestrators and clients for both.
type pair struct {
	r     *rack.Rack
	names [2]string
	admin [2]orchestratorv1.AdminServiceClient
	life  [2]orchestratorv1.LifecycleServiceClient
}

func startPair(t *testing.T) *pair {
	r := rack.Start(t, 4, 1, stack.Config{Orchestrators: 2})
	p := &pair{r: r, names: [2]string{stack.Orchestrator, stack.Orchestrator + "-1"}}
	for i, n := range p.names {
		conn := harness.Dial(t, r.Stack, r.Stack.Addr(n))
		p.admin[i] = orchestratorv1.NewAdminServiceClient(conn)
		p.life[i] = orchestratorv1.NewLifecycleServiceClient(conn)
	}
	return p
}

// leader returns the index of the leading orchestrator and its epoch.
func (p *pair) leader(t *testing.T) (int, int64) {
	t.Helper()
	idx, epoch := -1, int64(0)
	harness.Eventually(t, 30*time.Second, "one orchestrator leads", func() error {
		for i, a := range p.admin {
			l, err := a.GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
			if err == nil && l.IsLeader {
				idx, epoch = i, l.Epoch
				return nil
			}
		}
		return fmt.Errorf("no leader yet")
	})
	return idx, epoch
}

// self is orchestrator i's SEC id.
func (p *pair) self(t *testing.T, i int) string {
	t.Helper()
	l, err := p.admin[i].GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return l.Self
}

// slowEnsures delays the agent's next region ensures so a saga is in flight
// long enough to lose its orchestrator mid-node.
func (p *pair) slowEnsures(t *testing.T, d time.Duration) {
	t.Helper()
	faults := allocatorv1.NewAgentFaultServiceClient(harness.Dial(t, p.r.Stack, p.r.Stack.Addr(stack.Allocator)))
	if _, err := faults.InjectAgentFault(context.Background(), &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 3, Delay: durationpb.New(d),
	}); err != nil {
		t.Fatal(err)
	}
}

// waitNodeStarted waits until a saga has started a node.
func (p *pair) waitNodeStarted(t *testing.T, admin orchestratorv1.AdminServiceClient, saga, node string) {
	t.Helper()
	harness.Eventually(t, 30*time.Second, "node "+node+" started", func() error {
		resp, err := admin.GetSaga(context.Background(), &orchestratorv1.GetSagaRequest{SagaId: saga})
		if err != nil {
			return err
		}
		for _, n := range resp.Nodes {
			if n.Name == node && n.Status == "started" {
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
}

func (p *pair) waitSucceeded(t *testing.T, admin orchestratorv1.AdminServiceClient, saga string) *orchestratorv1.GetSagaResponse {
	t.Helper()
	var out *orchestratorv1.GetSagaResponse
	harness.Eventually(t, 60*time.Second, "saga done", func() error {
		resp, err := admin.GetSaga(context.Background(), &orchestratorv1.GetSagaRequest{SagaId: saga})
		if err != nil {
			return err
		}
		if resp.Saga.State != orchestratorv1.SagaState_SAGA_STATE_DONE {
			return fmt.Errorf("saga %v", resp.Saga.State)
		}
		out = resp
		return nil
	})
	if out.Saga.Outcome != "succeeded" {
		t.Fatalf("saga ended %s", out.Saga.Outcome)
	}
	return out
}

// Killing the leader mid-saga: the standby takes the lease, adopts the saga
// and finishes it.
func TestStandbyAdoptsSagasOfAKilledLeader(t *testing.T) {
	p := startPair(t)
	lead, _ := p.leader(t)
	standby := 1 - lead
	p.slowEnsures(t, 3*time.Second)
	resp, err := p.life[lead].CreateVolume(context.Background(), &orchestratorv1.CreateVolumeRequest{SizeBytes: rack.GiB})
	if err != nil {
		t.Fatal(err)
	}
	p.waitNodeStarted(t, p.admin[lead], resp.Saga.SagaId, "ensure_regions")
	p.r.Stack.Proc(p.names[lead]).Kill()

	if got, _ := p.leader(t); got != standby {
		t.Fatalf("leader is %d, want the standby %d", got, standby)
	}
	saga := p.waitSucceeded(t, p.admin[standby], resp.Saga.SagaId)
	if self := p.self(t, standby); saga.Saga.CurrentSec != self || saga.Saga.AdoptGeneration < 2 {
		t.Fatalf("saga owned by %s generation %d; want adopted by %s", saga.Saga.CurrentSec, saga.Saga.AdoptGeneration, self)
	}
	if _, err := p.r.Volumes.GetVolume(context.Background(), &volumev1.GetVolumeRequest{VolumeId: resp.VolumeId}); err != nil {
		t.Fatalf("volume not created: %v", err)
	}
	p.r.Admin = p.admin[standby]
	p.r.Invariants(t)
	p.r.Validate(t)
}

// A leader paused (SIGSTOP) mid-saga until the standby takes over: once it
// resumes (SIGCONT) nothing it does lands — its saga log writes are refused
// (adopted) and every service refuses a mutation carrying its epoch.
func TestPausedLeaderIsFenced(t *testing.T) {
	p := startPair(t)
	lead, oldEpoch := p.leader(t)
	standby := 1 - lead
	p.slowEnsures(t, 4*time.Second)
	resp, err := p.life[lead].CreateVolume(context.Background(), &orchestratorv1.CreateVolumeRequest{SizeBytes: rack.GiB})
	if err != nil {
		t.Fatal(err)
	}
	p.waitNodeStarted(t, p.admin[lead], resp.Saga.SagaId, "ensure_regions")
	paused := p.r.Stack.Proc(p.names[lead])
	if err := paused.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = paused.Signal(syscall.SIGCONT)
		}
	}()
	// The standby's lease-taking must not depend on the paused one.
	harness.Eventually(t, 30*time.Second, "standby leads", func() error {
		l, err := p.admin[standby].GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
		if err != nil || !l.IsLeader {
			return fmt.Errorf("not yet: %v %v", l, err)
		}
		if l.Epoch <= oldEpoch {
			return fmt.Errorf("epoch %d did not rise above %d", l.Epoch, oldEpoch)
		}
		return nil
	})
	saga := p.waitSucceeded(t, p.admin[standby], resp.Saga.SagaId)
	generation := saga.Saga.AdoptGeneration

	if err := paused.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumed = true
	// The old leader notices it lost the lease.
	harness.Eventually(t, 30*time.Second, "old leader steps down", func() error {
		l, err := p.admin[lead].GetLeadership(context.Background(), &orchestratorv1.GetLeadershipRequest{})
		if err != nil || l.IsLeader {
			return fmt.Errorf("still leading: %v %v", l, err)
		}
		return nil
	})
	// Its late writes changed nothing: the saga is as the standby left it.
	after, err := p.admin[standby].GetSaga(context.Background(), &orchestratorv1.GetSagaRequest{SagaId: resp.Saga.SagaId})
	if err != nil {
		t.Fatal(err)
	}
	if after.Saga.Outcome != "succeeded" || after.Saga.AdoptGeneration != generation || after.Saga.CurrentSec != p.self(t, standby) {
		t.Fatalf("the resumed leader changed the saga: %+v", after.Saga)
	}
	// Every service refuses a mutation carrying the old epoch.
	stale := metadata.AppendToOutgoingContext(context.Background(), "storagecp-epoch", fmt.Sprint(oldEpoch))
	checks := map[string]error{}
	_, checks["volume-service"] = p.r.Volumes.RegisterTargets(stale, &volumev1.RegisterTargetsRequest{Targets: []*volumev1.TargetRegistration{{
		TargetId: "6f1c2f7e-0000-4000-8000-000000000001", Kind: commonv1.TargetKind_TARGET_KIND_RW_REGION,
		RegionId: "6f1c2f7e-0000-4000-8000-000000000001", OwnerVolumeId: "6f1c2f7e-0000-4000-8000-000000000002",
	}}})
	_, checks["region-allocator"] = p.r.Allocator.AddSled(stale, &allocatorv1.AddSledRequest{Serial: "stale"})
	_, checks["upstairs-notifier"] = p.r.Notifier.ConstructVolume(stale, &notifierv1.ConstructVolumeRequest{
		VolumeId: resp.VolumeId, Kind: notifierv1.UpstairsKind_UPSTAIRS_KIND_PROPOLIS, Endpoint: p.r.Stack.SimUpstairsAddrs()[0],
	})
	for svc, err := range checks {
		if status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s accepted (or failed otherwise on) a mutation with the stale epoch %d: %v", svc, oldEpoch, err)
		}
	}
	p.r.Admin = p.admin[standby]
	p.r.Invariants(t)
	p.r.Validate(t)
}
