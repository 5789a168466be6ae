package authz_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/platform/authz"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/pki"
)

const td = mtls.DefaultTrustDomain

// volumes is a volume-service that records what reached it.
type volumes struct {
	volumev1.UnimplementedVolumeServiceServer
	reached []string
}

func (v *volumes) ListVolumes(context.Context, *volumev1.ListVolumesRequest) (*volumev1.ListVolumesResponse, error) {
	v.reached = append(v.reached, "ListVolumes")
	return &volumev1.ListVolumesResponse{}, nil
}

func (v *volumes) CreateVolume(_ context.Context, req *volumev1.CreateVolumeRequest) (*volumev1.CreateVolumeResponse, error) {
	v.reached = append(v.reached, "CreateVolume")
	return &volumev1.CreateVolumeResponse{}, nil
}

const policy = `{
  "name": "test",
  "allow_rules": [
    {"name": "health", "source": {"principals": ["spiffe://storagecp.local/*"]}, "request": {"paths": ["/grpc.health.v1.Health/*"]}},
    {"name": "orchestrator", "source": {"principals": ["spiffe://storagecp.local/replacement-orchestrator"]},
     "request": {"paths": ["/storage.volume.v1.VolumeService/CreateVolume", "/storage.volume.v1.VolumeService/ListVolumes"]}},
    {"name": "viewers", "source": {"principals": ["spiffe://storagecp.local/viewer/*"]},
     "request": {"paths": ["/storage.volume.v1.VolumeService/ListVolumes"]}}
  ]
}`

type fixture struct {
	ca     *pki.CA
	vols   *volumes
	addr   string
	log    *bytes.Buffer
	policy string
}

func start(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.NewCA(filepath.Join(dir, "pki"), td)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{ca: ca, vols: &volumes{}, log: &bytes.Buffer{}, policy: filepath.Join(dir, "policy.json")}
	if err := os.WriteFile(f.policy, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewJSONHandler(f.log, nil))
	g, err := authz.New(f.policy, logger)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	server := f.transport(t, mtls.VolumeService)
	gs := grpc.NewServer(server.ServerOption(), grpc.UnaryInterceptor(g.Unary()), grpc.StreamInterceptor(g.Stream()))
	volumev1.RegisterVolumeServiceServer(gs, f.vols)
	healthpb.RegisterHealthServer(gs, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	f.addr = lis.Addr().String()
	return f
}

func (f *fixture) transport(t *testing.T, path string) *mtls.Transport {
	t.Helper()
	id, err := f.ca.Ensure(path, mtls.ServiceID(td, path))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := mtls.Load(td, mtls.Files{CA: f.ca.BundlePath(), Cert: id.Cert, Key: id.Key}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func (f *fixture) client(t *testing.T, path string) volumev1.VolumeServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(f.addr, f.transport(t, path).DialOption())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return volumev1.NewVolumeServiceClient(conn)
}

func (f *fixture) audit(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(f.log.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["msg"] == "audit" {
			out = append(out, m)
		}
	}
	return out
}

func TestRefusalNamesCallerAndMethodAndReachesNothing(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	viewer := f.client(t, "viewer/bob")
	if _, err := viewer.ListVolumes(ctx, &volumev1.ListVolumesRequest{}); err != nil {
		t.Fatalf("viewer read: %v", err)
	}
	_, err := viewer.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: "v1"})
	want := "spiffe://storagecp.local/viewer/bob may not call /storage.volume.v1.VolumeService/CreateVolume"
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != want {
		t.Fatalf("viewer create: %v, want PermissionDenied %q", err, want)
	}
	// Not in the policy at all: refused to everyone, the orchestrator too.
	orch := f.client(t, mtls.ReplacementOrchestrator)
	if _, err := orch.GetVolume(ctx, &volumev1.GetVolumeRequest{VolumeId: "v1"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("method missing from the policy: %v", err)
	}
	if _, err := orch.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: "v2"}); err != nil {
		t.Fatalf("orchestrator create: %v", err)
	}
	if got := strings.Join(f.vols.reached, ","); got != "ListVolumes,CreateVolume" {
		t.Fatalf("handlers reached: %s", got)
	}

	lines := f.audit(t)
	// The refused create, the refused GetVolume, the allowed create; the
	// allowed read is not audited.
	if len(lines) != 3 {
		t.Fatalf("%d audit lines, want 3: %v", len(lines), lines)
	}
	for i, want := range []struct{ caller, method, outcome string }{
		{"spiffe://storagecp.local/viewer/bob", "/storage.volume.v1.VolumeService/CreateVolume", "denied"},
		{"spiffe://storagecp.local/replacement-orchestrator", "/storage.volume.v1.VolumeService/GetVolume", "denied"},
		{"spiffe://storagecp.local/replacement-orchestrator", "/storage.volume.v1.VolumeService/CreateVolume", "allowed"},
	} {
		l := lines[i]
		if l["caller"] != want.caller || l["method"] != want.method || l["outcome"] != want.outcome {
			t.Errorf("audit line %d: %v, want %+v", i, l, want)
		}
	}
	if ids, _ := lines[2]["ids"].(map[string]any); ids["volume_id"] != "v2" {
		t.Errorf("audit line lacks the request's ids: %v", lines[2])
	}
}

// The policy file is re-read: a grant added is honoured without a restart,
// and a broken edit keeps the last good policy.
func TestPolicyReload(t *testing.T) {
	f := start(t)
	ctx := context.Background()
	viewer := f.client(t, "viewer/bob")
	granted := strings.Replace(policy, `"request": {"paths": ["/storage.volume.v1.VolumeService/ListVolumes"]}}`,
		`"request": {"paths": ["/storage.volume.v1.VolumeService/ListVolumes", "/storage.volume.v1.VolumeService/CreateVolume"]}}`, 1)
	if granted == policy {
		t.Fatal("the edit did not apply")
	}
	if err := os.WriteFile(f.policy, []byte(granted), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, err := viewer.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: "v"})
		return err == nil
	})
	if err := os.WriteFile(f.policy, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2*authz.RefreshInterval + 500*time.Millisecond)
	if _, err := viewer.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: "v"}); err != nil {
		t.Fatalf("a broken policy file replaced the last good one: %v", err)
	}
	if err := os.WriteFile(f.policy, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		_, err := viewer.CreateVolume(ctx, &volumev1.CreateVolumeRequest{VolumeId: "v"})
		return status.Code(err) == codes.PermissionDenied
	})
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(4 * authz.RefreshInterval)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("the policy change was not picked up")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Only identifier fields reach an audit line: a VCR, with its key, never.
func TestIDsCopiesIdentifiersOnly(t *testing.T) {
	req := &volumev1.CreateVolumeRequest{
		VolumeId: "vol-1",
		Vcr: &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Volume{
			Volume: &commonv1.VcrVolume{Id: "vol-1", BlockSize: 512},
		}},
		ReadOnlyParentFromVolumeId: "snap-1",
	}
	got := authz.IDs(req)
	b, _ := json.Marshal(got)
	if got["volume_id"] != "vol-1" || got["read_only_parent_from_volume_id"] != "snap-1" || len(got) != 2 {
		t.Fatalf("ids %s", b)
	}
}

func TestReadOnly(t *testing.T) {
	for m, want := range map[string]bool{
		"/storage.volume.v1.VolumeService/GetVolume":                   true,
		"/storage.volume.v1.VolumeService/GetVolumeWithKeys":           true,
		"/storage.orchestrator.v1.ReplacementService/WatchReplacement": true,
		"/storage.orchestrator.v1.ReplacementService/PreviewExpunge":   true,
		"/storage.orchestrator.v1.AdminService/GetDatabaseFormation":   true,
		"/grpc.health.v1.Health/Check":                                 true,
		"/storage.volume.v1.VolumeService/CreateVolume":                false,
		"/storage.orchestrator.v1.AdminService/AbandonSaga":            false,
		"/storage.volume.v1.VolumeService/CheckoutVolume":              false,
		"/storage.allocator.v1.RegionAllocatorService/ExpungeSled":     false,
	} {
		if authz.ReadOnly(m) != want {
			t.Errorf("ReadOnly(%s) = %v, want %v", m, !want, want)
		}
	}
}
