package console

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

// The services here answer over real gRPC (in memory) with fixed data: a
// real volume-service redacts keys itself unless asked, so only a service
// that returns a key can show that the console removes it again.

const secret = "S3CRET-KEY-MATERIAL"

func str(s string) *string { return &s }

type volumeSrv struct {
	volumev1.UnimplementedVolumeServiceServer
}

func (volumeSrv) GetVolume(context.Context, *volumev1.GetVolumeRequest) (*volumev1.GetVolumeResponse, error) {
	region := &commonv1.VolumeConstructionRequest{Kind: &commonv1.VolumeConstructionRequest_Region{Region: &commonv1.VcrRegion{
		Gen: 3, Opts: &commonv1.CrucibleOpts{Target: []string{"[fd00::1]:19000"}, Key: str(secret), KeyPem: str(secret), CertPem: str(secret), RootCertPem: str(secret)},
	}}}
	return &volumev1.GetVolumeResponse{Volume: &volumev1.Volume{VolumeId: "vol-1", Vcr: &commonv1.VolumeConstructionRequest{
		Kind: &commonv1.VolumeConstructionRequest_Volume{Volume: &commonv1.VcrVolume{Id: "vol-1", SubVolumes: []*commonv1.VolumeConstructionRequest{region},
			ReadOnlyParent: region}},
	}}}, nil
}

type allocatorSrv struct {
	allocatorv1.UnimplementedRegionAllocatorServiceServer
	calls atomic.Int64
}

// ListPhysicalDisks reports one more region on each call, so each poll
// sees new data.
func (a *allocatorSrv) ListPhysicalDisks(context.Context, *allocatorv1.ListPhysicalDisksRequest) (*allocatorv1.ListPhysicalDisksResponse, error) {
	n := a.calls.Add(1)
	return &allocatorv1.ListPhysicalDisksResponse{Disks: []*allocatorv1.PhysicalDisk{{DiskId: "disk-1", SledId: "sled-1", RegionCount: n}}}, nil
}

type replacementSrv struct {
	orchestratorv1.UnimplementedReplacementServiceServer
}

func (replacementSrv) ListReplacements(context.Context, *orchestratorv1.ListReplacementsRequest) (*orchestratorv1.ListReplacementsResponse, error) {
	return &orchestratorv1.ListReplacementsResponse{}, nil
}

func (replacementSrv) PauseReplacement(context.Context, *orchestratorv1.PauseReplacementRequest) (*orchestratorv1.PauseReplacementResponse, error) {
	return nil, status.Error(codes.PermissionDenied, "spiffe://storagecp.local/viewer/console may not call /storage.orchestrator.v1.ReplacementService/PauseReplacement")
}

type adminSrv struct {
	orchestratorv1.UnimplementedAdminServiceServer
}

func (adminSrv) GetSaga(context.Context, *orchestratorv1.GetSagaRequest) (*orchestratorv1.GetSagaResponse, error) {
	return &orchestratorv1.GetSagaResponse{
		Saga:       &orchestratorv1.Saga{SagaId: "saga-1", Name: "rsr-start"},
		ParamsJson: `{"vcr":{"volume":{"sub_volumes":[{"region":{"opts":{"key":"` + secret + `"}}}]}}}`,
		Nodes:      []*orchestratorv1.SagaNode{{Name: "get_vcr", Status: "succeeded", DataJson: `{"opts":{"key_pem":"` + secret + `","target":["a"]}}`}},
		Events:     []*orchestratorv1.SagaEvent{{NodeName: "get_vcr", EventType: "succeeded", DataJson: `"{\"root_cert_pem\":\"` + secret + `\"}"`}},
	}, nil
}

// newConsole serves the stub services over in-memory gRPC and returns the
// console's HTTP server.
func newConsole(t *testing.T) (*httptest.Server, *allocatorSrv) {
	t.Helper()
	lis := bufconn.Listen(1 << 20)
	gs := grpc.NewServer()
	alloc := &allocatorSrv{}
	volumev1.RegisterVolumeServiceServer(gs, volumeSrv{})
	allocatorv1.RegisterRegionAllocatorServiceServer(gs, alloc)
	orchestratorv1.RegisterReplacementServiceServer(gs, replacementSrv{})
	orchestratorv1.RegisterAdminServiceServer(gs, adminSrv{})
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := NewClients(conn, conn, conn)
	srv := New(Options{Reads: c, Actions: c, Identity: "viewer", ActionsIdentity: "viewer", Poll: 20 * time.Millisecond})
	hs := httptest.NewServer(srv)
	t.Cleanup(hs.Close)
	return hs, alloc
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// firstEvents reads n "snapshot" events from a view's stream.
func firstEvents(t *testing.T, url string, n int) []envelopeIn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("Content-Type %q, want text/event-stream", ct)
	}
	var out []envelopeIn
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	event := ""
	for sc.Scan() && len(out) < n {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if event != "snapshot" {
				t.Fatalf("data of event %q", event)
			}
			raw := strings.TrimPrefix(line, "data: ")
			var e envelopeIn
			if err := json.Unmarshal([]byte(raw), &e); err != nil {
				t.Fatalf("event data %q: %v", raw, err)
			}
			e.raw = raw
			out = append(out, e)
		}
	}
	if len(out) < n {
		t.Fatalf("stream ended after %d events (%v)", len(out), sc.Err())
	}
	return out
}

type envelopeIn struct {
	View  string          `json:"view"`
	At    int64           `json:"at"`
	Data  json.RawMessage `json:"data"`
	Error *errorEnvelope  `json:"error"`
	raw   string
}

// No key of a VCR reaches the browser, through the stream or the one-shot
// JSON, wherever the region set sits in the tree; the tree itself does.
func TestVolumeKeysNeverServed(t *testing.T) {
	hs, _ := newConsole(t)
	code, body := get(t, hs.URL+"/api/snapshot?view=volume&id=vol-1")
	if code != http.StatusOK {
		t.Fatalf("snapshot: %d %s", code, body)
	}
	ev := firstEvents(t, hs.URL+"/api/events?view=volume&id=vol-1", 1)[0]
	for name, served := range map[string]string{"snapshot": body, "event": ev.raw} {
		if strings.Contains(served, secret) {
			t.Fatalf("%s serves key material: %s", name, served)
		}
		if !strings.Contains(served, "[fd00::1]:19000") {
			t.Fatalf("%s lost the VCR's targets: %s", name, served)
		}
	}
}

// Saga parameters, node outputs and log events (JSON, and JSON inside a
// JSON string) are served without key material.
func TestSagaSecretsRedacted(t *testing.T) {
	hs, _ := newConsole(t)
	_, body := get(t, hs.URL+"/api/snapshot?view=saga&id=saga-1")
	if strings.Contains(body, secret) {
		t.Fatalf("saga view serves key material: %s", body)
	}
	if !strings.Contains(body, "get_vcr") || !strings.Contains(body, "rsr-start") {
		t.Fatalf("saga view lost the saga: %s", body)
	}
}

// The stream sends the view at once and again when its data changes,
// each event stamped with the server's time.
func TestEventsStreamChanges(t *testing.T) {
	hs, alloc := newConsole(t)
	evs := firstEvents(t, hs.URL+"/api/events?view=rack", 2)
	if evs[0].View != "rack" || evs[0].Error != nil || evs[0].At == 0 {
		t.Fatalf("first event: %s", evs[0].raw)
	}
	if string(evs[0].Data) == string(evs[1].Data) {
		t.Fatalf("second event repeats the first: %s", evs[1].raw)
	}
	if alloc.calls.Load() < 2 {
		t.Fatalf("%d ListPhysicalDisks calls, want a poll per event", alloc.calls.Load())
	}
	if code, _ := get(t, hs.URL+"/api/events?view=nope"); code != http.StatusBadRequest {
		t.Fatalf("unknown view: %d, want 400", code)
	}
}

func post(t *testing.T, url string, header bool) (int, actionResponse) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"id":"r-1","reason":"test"}`))
	req.Header.Set("Content-Type", "application/json")
	if header {
		req.Header.Set(actionHeader, "1")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ar actionResponse
	if err := json.NewDecoder(resp.Body).Decode(&ar); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, ar
}

// A service's refusal reaches the page as it came: 403 with the gRPC code
// and the service's message naming the caller; an action without the
// console's header is refused before any call.
func TestActionRefusalShown(t *testing.T) {
	hs, _ := newConsole(t)
	code, ar := post(t, hs.URL+"/api/actions/pause", true)
	if code != http.StatusForbidden || ar.Error == nil || ar.Error.Code != "PermissionDenied" || !strings.Contains(ar.Error.Message, "viewer/console may not call") {
		t.Fatalf("pause as a viewer: %d %+v", code, ar.Error)
	}
	code, ar = post(t, hs.URL+"/api/actions/pause", false)
	if code != http.StatusForbidden || ar.Error == nil || !strings.Contains(ar.Error.Message, actionHeader) {
		t.Fatalf("pause without the header: %d %+v", code, ar.Error)
	}
	code, ar = post(t, hs.URL+"/api/actions/explode", true)
	if code != http.StatusNotFound || ar.Error == nil {
		t.Fatalf("unknown action: %d %+v", code, ar.Error)
	}
}

// The page and its modules are served from the binary, and the page
// loads nothing from another origin.
func TestStaticEmbedded(t *testing.T) {
	hs, _ := newConsole(t)
	for _, p := range []string{"/", "/static/app.js", "/static/style.css"} {
		code, body := get(t, hs.URL+p)
		if code != http.StatusOK || body == "" {
			t.Fatalf("%s: %d", p, code)
		}
		if strings.Contains(body, "http://") && p != "/static/app.js" || strings.Contains(body, "https://") {
			t.Fatalf("%s refers to another origin", p)
		}
	}
}
