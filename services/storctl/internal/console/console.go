// Package console is `storctl console`: a live console served over HTTP by
// one process. It holds no state of its own and reads nothing but the
// services' public gRPC APIs, through the clients storctl dials with its
// own identity, so what the page shows is what storctl would print and
// what it may do is what the authorization policy lets that identity do.
//
// Contract:
//   - Every page is live: GET /api/events?view=V[&id=ID] is a stream of
//     server-sent events, one "snapshot" event each time the view's data
//     changes. The data is built from the list/get RPCs on a short poll and
//     at once whenever WatchReplacement reports progress. Each event carries
//     the server's time ("at", Unix milliseconds) so a page can measure how
//     late it shows what happened.
//   - Key material never leaves the process: VCRs go through
//     redact.VCR and free-form JSON (saga parameters, outputs, events)
//     through redact.JSON before it is encoded for the browser.
//   - Actions (POST /api/actions/NAME) call the same RPCs storctl's
//     commands do, with the actions identity; a refusal from a service
//     (PermissionDenied) is returned to the page as it came, so a viewer
//     console shows the service's refusal rather than only hiding buttons.
//     Actions need a JSON body and the X-Storagecp-Console header, which a
//     cross-site form cannot send without a preflight this server refuses.
//   - The front end is plain HTML, CSS and JavaScript modules embedded in
//     the binary from web/: no build step, no CDN, works offline.
package console

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
)

//go:embed web
var webFS embed.FS

// Clients are the services' APIs as one identity calls them.
type Clients struct {
	Volume      volumev1.VolumeServiceClient
	Allocator   allocatorv1.RegionAllocatorServiceClient
	Replacement orchestratorv1.ReplacementServiceClient
	Admin       orchestratorv1.AdminServiceClient
}

// NewClients makes Clients from one connection per service.
func NewClients(volume, allocator, orchestrator grpc.ClientConnInterface) Clients {
	return Clients{
		Volume:      volumev1.NewVolumeServiceClient(volume),
		Allocator:   allocatorv1.NewRegionAllocatorServiceClient(allocator),
		Replacement: orchestratorv1.NewReplacementServiceClient(orchestrator),
		Admin:       orchestratorv1.NewAdminServiceClient(orchestrator),
	}
}

// Options configure a console.
type Options struct {
	// Reads serve every page; Actions the operator actions (the same
	// clients when the console runs with one identity).
	Reads, Actions Clients
	// Identity and ActionsIdentity are shown on the page (SPIFFE IDs, or
	// "insecure").
	Identity, ActionsIdentity string
	// Health is what `storctl health -o json` prints.
	Health func(ctx context.Context) ([]byte, error)
	// Detectors are the background tasks an expunge activates, as
	// `storctl disks expunge` does.
	Detectors []string
	// JaegerURL, when set, links each request to its trace.
	JaegerURL string
	// AlertsURL, when set, is a Prometheus whose alerts (from
	// deploy/monitoring/alerts.yml) the health page lists; HTTPClient asks
	// it (default http.DefaultClient).
	AlertsURL  string
	HTTPClient *http.Client
	// AllowedHost, when set, is the check every request's Host header must
	// pass (see LoopbackHost); others are refused with 421.
	AllowedHost func(host string) bool
	// Poll is how often a view is rebuilt without news from
	// WatchReplacement (default 1 s).
	Poll time.Duration
	// CallTimeout bounds each RPC (default 10 s).
	CallTimeout time.Duration
	Logger      *slog.Logger
}

// Server is the console's HTTP handler.
type Server struct {
	o   Options
	mux *http.ServeMux
	// regionDatasets caches GetRegion's dataset by region id (regions
	// never move).
	regionDatasets sync.Map
}

// New returns the console's handler.
func New(o Options) *Server {
	if o.Poll <= 0 {
		o.Poll = time.Second
	}
	if o.CallTimeout <= 0 {
		o.CallTimeout = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{o: o, mux: http.NewServeMux()}
	static, _ := fs.Sub(webFS, "web")
	files := http.FileServerFS(static)
	s.mux.Handle("GET /static/", http.StripPrefix("/static/", noCache(files)))
	s.mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, static, "index.html")
	})
	s.mux.HandleFunc("GET /api/events", s.events)
	s.mux.HandleFunc("GET /api/snapshot", s.snapshotOnce)
	s.mux.HandleFunc("POST /api/actions/{name}", s.action)
	return s
}

func noCache(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		h.ServeHTTP(w, r)
	})
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// The page loads nothing from elsewhere, and nothing elsewhere may
	// frame it.
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if s.o.AllowedHost != nil && !s.o.AllowedHost(r.Host) {
		// A page elsewhere that rebinds its own name to 127.0.0.1 is
		// same-origin with the console as far as the browser knows, and
		// could read it and send actions with the console's header; only
		// the Host it sends gives it away.
		http.Error(w, fmt.Sprintf("host %q: the console answers only to the loopback names it listens on", r.Host), http.StatusMisdirectedRequest)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// LoopbackHost is the Host check of a console listening on loopback:
// localhost or a loopback address, with the port it listens on.
func LoopbackHost(port string) func(string) bool {
	return func(host string) bool {
		h, p, err := net.SplitHostPort(host)
		if err != nil || p != port {
			return false
		}
		if strings.EqualFold(h, "localhost") {
			return true
		}
		ip := net.ParseIP(h)
		return ip != nil && ip.IsLoopback()
	}
}

// Serve serves the console on l until ctx ends.
func Serve(ctx context.Context, l net.Listener, s *Server) error {
	hs := &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	done := make(chan error, 1)
	go func() { done <- hs.Serve(l) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = hs.Shutdown(sctx)
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("console: %w", err)
		}
		return nil
	}
}
