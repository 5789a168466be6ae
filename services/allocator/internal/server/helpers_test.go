package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/allocator/internal/agentclient"
	"storagecp.dev/allocator/internal/agentfault"
	"storagecp.dev/allocator/migrations"
	"storagecp.dev/allocator/sim/agentserver"
	"storagecp.dev/allocator/sim/simagent"
	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	"storagecp.dev/platform/fence"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "allocator", Migrations: migrations.FS})
}

const (
	gib = int64(1) << 30
	// testGeometry regions request 64 MiB × 16 = 1 GiB and reserve 1.25 GiB.
	testBlockSize       = 512
	testBlocksPerExtent = 131072
	testExtentCount     = 16
	testReserved        = gib + gib/4
)

func newServer(t testing.TB) (*Server, *pgxpool.Pool) {
	t.Helper()
	pool := pgtest.NewPool(t, "allocator")
	return newSimServer(t, pool), pool
}

// newSimServer is the service over pool as region-allocator --dev runs
// it: its agents are the simulated ones, served as sim-agent serves them
// (on a loopback port, behind the fence interceptor) and reached through
// the production client, so every test here crosses the agent wire.
func newSimServer(t testing.TB, pool *pgxpool.Pool) *Server {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	gs := grpc.NewServer(grpc.ChainUnaryInterceptor(fence.UnaryServerInterceptor(logger)))
	agentserver.Register(gs, simagent.NewSim(pool), logger)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := agentclient.Dial(lis.Addr().String(), mtls.Insecure())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return NewDev(pool, logger, agentclient.New(conn), Dev{
		Faults: &agentfault.Faults{},
		Data:   allocatorv1.NewAgentDataServiceClient(conn),
	})
}

// agentFaults is this server's fault registry.
func agentFaults(s *Server) *agentfault.Faults { return s.faults.faults }

// inventory is what addInventory built: sleds[i] has disks[i].
type inventory struct {
	sleds []string
	disks [][]*allocatorv1.PhysicalDisk
}

func (inv inventory) allDisks() []*allocatorv1.PhysicalDisk {
	var out []*allocatorv1.PhysicalDisk
	for _, ds := range inv.disks {
		out = append(out, ds...)
	}
	return out
}

// randomIP is a random address in fd00::/8, unique in practice.
func randomIP() string {
	b := [16]byte(uuid.New())
	b[0] = 0xfd
	return netip.AddrFrom16(b).String()
}

// addInventory adds nSleds sleds with disksPerSled disks of capacity each.
func addInventory(t testing.TB, s *Server, nSleds, disksPerSled int, capacity int64) inventory {
	t.Helper()
	ctx := context.Background()
	var inv inventory
	for i := range nSleds {
		sled, err := s.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprintf("sled-%d", i)})
		if err != nil {
			t.Fatalf("AddSled: %v", err)
		}
		inv.sleds = append(inv.sleds, sled.GetSled().GetSledId())
		var disks []*allocatorv1.PhysicalDisk
		for range disksPerSled {
			d, err := s.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
				SledId:         sled.GetSled().GetSledId(),
				CapacityBytes:  capacity,
				DatasetAddress: randomIP(),
			})
			if err != nil {
				t.Fatalf("AddPhysicalDisk: %v", err)
			}
			disks = append(disks, d.GetDisk())
		}
		inv.disks = append(inv.disks, disks)
	}
	return inv
}

func newIDs(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = uuid.NewString()
	}
	return out
}

func allocReq(volumeID string, redundancy int, newIDs []string) *allocatorv1.AllocateRegionsRequest {
	return &allocatorv1.AllocateRegionsRequest{
		VolumeId:        volumeID,
		BlockSize:       testBlockSize,
		BlocksPerExtent: testBlocksPerExtent,
		ExtentCount:     testExtentCount,
		Strategy:        allocatorv1.AllocationStrategy_ALLOCATION_STRATEGY_RANDOM_WITH_DISTINCT_SLEDS,
		Redundancy:      int32(redundancy),
		NewRegionIds:    newIDs,
		Seed:            "test",
	}
}

func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %v", err, code)
	}
}

// fataler is what both *testing.T and *rapid.T offer.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// ok turns a (value, error) result into a value, failing the test on an
// error: ok(s.Call(ctx, req))(t).
func ok[T any](v T, err error) func(fataler) T {
	return func(t fataler) T {
		t.Helper()
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return v
	}
}

// diskUsage returns size_used by dataset id.
func diskUsage(t fataler, s *Server) map[string]*allocatorv1.PhysicalDisk {
	t.Helper()
	out := map[string]*allocatorv1.PhysicalDisk{}
	token := ""
	for {
		resp := ok(s.ListPhysicalDisks(context.Background(), &allocatorv1.ListPhysicalDisksRequest{PageToken: token, PageSize: 1000}))(t)
		for _, d := range resp.GetDisks() {
			out[d.GetDatasetId()] = d
		}
		if token = resp.GetNextPageToken(); token == "" {
			return out
		}
	}
}

// snapshottedVolume is a volume's three regions, allocated and ensured,
// and a snapshot of every one of them.
type snapshottedVolume struct {
	volume, snapshot string
	allocated        *allocatorv1.AllocateRegionsResponse
	ensured          *allocatorv1.EnsureRegionsResponse
	snapshots        *allocatorv1.CreateRegionSnapshotsResponse
}

func newSnapshottedVolume(t testing.TB, s *Server) snapshottedVolume {
	t.Helper()
	ctx := context.Background()
	v := snapshottedVolume{volume: uuid.NewString(), snapshot: uuid.NewString()}
	v.allocated = ok(s.AllocateRegions(ctx, allocReq(v.volume, 3, newIDs(3))))(t)
	v.ensured = ok(s.EnsureRegions(ctx, ensureReq(v.allocated.GetRegions())))(t)
	req := &allocatorv1.CreateRegionSnapshotsRequest{SnapshotId: v.snapshot}
	for _, r := range v.ensured.GetRegions() {
		req.RegionIds = append(req.RegionIds, r.GetRegionId())
	}
	v.snapshots = ok(s.CreateRegionSnapshots(ctx, req))(t)
	return v
}
