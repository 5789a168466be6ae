package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/migrations"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "allocator", Migrations: migrations.FS})
}

const (
	gib      = int64(1) << 30
	reserved = gib + gib/4 // a 1 GiB region reserves 1.25 GiB
)

// process is one running allocator binary.
type process struct {
	addr string
	conn *grpc.ClientConn
	api  allocatorv1.RegionAllocatorServiceClient
	dev  allocatorv1.AgentFaultServiceClient
	// stop sends SIGTERM and waits (idempotent).
	stop func()
}

// binaries are the two programs a deployment of the allocator runs.
type binaries struct {
	allocator string
	// agent is sim-agent, the simulated Crucible agents the allocator
	// reaches at --agent-addr.
	agent string
}

// buildBinaries compiles this command and sim-agent once per test into a
// temp dir.
func buildBinaries(t *testing.T) binaries {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+string(os.PathSeparator), ".", "storagecp.dev/allocator/sim/cmd/sim-agent")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return binaries{allocator: filepath.Join(dir, "region-allocator"), agent: filepath.Join(dir, "sim-agent")}
}

// start runs an allocator over dsn whose agents are at agentAddr.
func start(t *testing.T, bins binaries, dsn, agentAddr string) *process {
	t.Helper()
	addr, stop := run(t, bins.allocator, "--listen", "127.0.0.1:0", "--db", dsn, "--agent-addr", agentAddr, "--dev")
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &process{
		addr: addr, conn: conn,
		api:  allocatorv1.NewRegionAllocatorServiceClient(conn),
		dev:  allocatorv1.NewAgentFaultServiceClient(conn),
		stop: stop,
	}
}

// startAgent runs sim-agent over dsn and returns its address.
func startAgent(t *testing.T, bins binaries, dsn string) string {
	t.Helper()
	addr, _ := run(t, bins.agent, "--listen", "127.0.0.1:0", "--db", dsn)
	return addr
}

// run starts a service binary on an ephemeral port (read back from its
// "serving" log line) and stops it with SIGTERM at the end of the test.
func run(t *testing.T, bin string, args ...string) (addr string, stop func()) {
	t.Helper()
	name := filepath.Base(bin)
	// Plaintext: these tests are about the allocator's behaviour; the
	// processes' mutual TLS is the integration stack's to test.
	cmd := exec.Command(bin, append([]string{"--insecure"}, args...)...)
	cmd.Env = append(os.Environ(), "OTEL_SDK_DISABLED=true", "OTEL_TRACES_EXPORTER=none")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start: %v", err)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
		})
	}
	t.Cleanup(stop)
	addrCh := make(chan string, 1)
	var logMu sync.Mutex
	var logs strings.Builder
	t.Cleanup(func() {
		if t.Failed() {
			logMu.Lock()
			defer logMu.Unlock()
			t.Logf("%s log:\n%s", name, logs.String())
		}
	})
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			logMu.Lock()
			logs.WriteString(line + "\n")
			logMu.Unlock()
			var rec struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == "serving" && rec.Addr != "" {
				select {
				case addrCh <- rec.Addr:
				default:
				}
			}
		}
	}()
	select {
	case addr = <-addrCh:
	case <-time.After(60 * time.Second):
		logMu.Lock()
		defer logMu.Unlock()
		t.Fatalf("%s did not start; log:\n%s", name, logs.String())
	}
	return addr, stop
}

func allocReq(volumeID string) *allocatorv1.AllocateRegionsRequest {
	return &allocatorv1.AllocateRegionsRequest{
		VolumeId:        volumeID,
		BlockSize:       512,
		BlocksPerExtent: 131072,
		ExtentCount:     16,
		Strategy:        allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
		Redundancy:      3,
		NewRegionIds:    []string{uuid.NewString(), uuid.NewString(), uuid.NewString()},
	}
}

// TestTwoProcessesNeverOvercommit sends 32 concurrent allocations for
// different volumes, split across two allocator processes on one database,
// at an inventory with room for at most 10 of them. An in-process lock
// would prove nothing here: only the database's serialisation can keep the
// datasets from being over-committed.
func TestTwoProcessesNeverOvercommit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bins := buildBinaries(t)
	dsn := pgtest.NewDSN(t, "allocator")
	agent := startAgent(t, bins, dsn)
	a, b := start(t, bins, dsn, agent), start(t, bins, dsn, agent)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// 8 sleds × 1 disk, 4 region slots each: 32 slots, 10 volumes at most.
	for i := range 8 {
		sled, err := a.api.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprintf("sled-%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.api.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
			SledId: sled.GetSled().GetSledId(), CapacityBytes: 4*reserved + 1000,
			DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::1", i+1),
		}); err != nil {
			t.Fatal(err)
		}
	}

	const n = 32
	vols := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	startGun := make(chan struct{})
	for i := range n {
		vols[i] = uuid.NewString()
		p := a
		if i%2 == 1 {
			p = b
		}
		wg.Go(func() {
			<-startGun
			_, errs[i] = p.api.AllocateRegions(ctx, allocReq(vols[i]))
		})
	}
	close(startGun)
	wg.Wait()

	winners := 0
	for i, err := range errs {
		regions, lerr := a.api.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: vols[i]})
		if lerr != nil {
			t.Fatal(lerr)
		}
		switch {
		case err == nil:
			winners++
			if len(regions.GetRegions()) != 3 {
				t.Errorf("winner %d has %d regions", i, len(regions.GetRegions()))
			}
		case status.Code(err) == codes.ResourceExhausted:
			if len(regions.GetRegions()) != 0 {
				t.Errorf("loser %d inserted %d regions", i, len(regions.GetRegions()))
			}
		default:
			t.Errorf("allocation %d: unexpected error %v", i, err)
		}
	}
	disks, err := b.api.ListPhysicalDisks(ctx, &allocatorv1.ListPhysicalDisksRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var regionsTotal int64
	for _, d := range disks.GetDisks() {
		if d.GetSizeUsedBytes() > d.GetCapacityBytes() {
			t.Errorf("disk %s over-committed: %d > %d", d.GetDiskId(), d.GetSizeUsedBytes(), d.GetCapacityBytes())
		}
		if d.GetSizeUsedBytes() != d.GetRegionCount()*reserved {
			t.Errorf("disk %s: size_used %d for %d regions", d.GetDiskId(), d.GetSizeUsedBytes(), d.GetRegionCount())
		}
		regionsTotal += d.GetRegionCount()
	}
	if winners == 0 || winners > 10 || regionsTotal != int64(3*winners) {
		t.Fatalf("%d winners, %d regions", winners, regionsTotal)
	}
	t.Logf("%d of %d allocations won, %d regions", winners, n, regionsTotal)

	// The agents are shared through the database: a region ensured through
	// one process is served as seen from the other. Faults are per process.
	var winner string
	for i, err := range errs {
		if err == nil {
			winner = vols[i]
			break
		}
	}
	regions, err := a.api.ListRegions(ctx, &allocatorv1.ListRegionsRequest{AllocatedFor: winner})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.dev.InjectAgentFault(ctx, &allocatorv1.InjectAgentFaultRequest{
		Operation: allocatorv1.AgentOperation_AGENT_OPERATION_ENSURE_REGION, Count: 1, Fail: true,
	}); err != nil {
		t.Fatal(err)
	}
	ensure := &allocatorv1.EnsureRegionsRequest{}
	for _, r := range regions.GetRegions() {
		ensure.Regions = append(ensure.Regions, &allocatorv1.RegionEnsure{RegionId: r.GetRegionId()})
	}
	if _, err := a.api.EnsureRegions(ctx, ensure); status.Code(err) != codes.Unavailable {
		t.Fatalf("ensure with an injected fault: %v", err)
	}
	ensured, err := b.api.EnsureRegions(ctx, ensure)
	if err != nil {
		t.Fatalf("ensure on the other process: %v", err)
	}
	probe := &allocatorv1.ProbeTargetsRequest{}
	for _, r := range ensured.GetRegions() {
		probe.Addresses = append(probe.Addresses, r.GetAddress())
	}
	probes, err := a.api.ProbeTargets(ctx, probe)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes.GetProbes() {
		if p.GetResult() != allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
			t.Fatalf("%s probes %v from the other process", p.GetAddress(), p.GetResult())
		}
	}

	// The agents survive a restart of every allocator process.
	a.stop()
	b.stop()
	c := start(t, bins, dsn, agent)
	probes, err = c.api.ProbeTargets(ctx, probe)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range probes.GetProbes() {
		if p.GetResult() != allocatorv1.ProbeResult_PROBE_RESULT_SERVED {
			t.Fatalf("%s probes %v after a restart", p.GetAddress(), p.GetResult())
		}
	}
	again, err := c.api.EnsureRegions(ctx, ensure)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range again.GetRegions() {
		if r.GetAddress() != ensured.GetRegions()[i].GetAddress() {
			t.Fatalf("ensure after restart moved %s", r.GetRegionId())
		}
	}
}

// Without agents the allocator cannot create a region, so it does not
// start: it says which flag is missing and exits non-zero.
func TestRefusesToStartWithoutAgents(t *testing.T) {
	bins := buildBinaries(t)
	cmd := exec.Command(bins.allocator, "--insecure", "--listen", "127.0.0.1:0", "--db", pgtest.NewDSN(t, "allocator"))
	cmd.Env = append(os.Environ(), "STORAGECP_ALLOCATOR_AGENT_ADDR=", "OTEL_SDK_DISABLED=true")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--agent-addr") {
		t.Fatalf("started without agents: %v\n%s", err, out)
	}
}
