package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"time"

	"google.golang.org/grpc"

	"storagecp.dev/storctl/internal/console"
)

// consoleCommands is `storctl console`: the live web console
// (package console) on storctl's clients, credentials and redaction.
func consoleCommands() []command {
	return []command{{
		path: "console", summary: "serve the live web console over HTTP (127.0.0.1:7180 by default) and print its URL",
		max: 0, unbounded: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			listen := fs.String("listen", "127.0.0.1:7180", "HTTP address to serve on (loopback by default: the console has no login of its own; whoever reaches it acts with its identity)")
			actCert := fs.String("actions-cert", "", "a second X509-SVID for the actions (e.g. an operator's), PEM, while --cert reads (e.g. a viewer's); default: --cert does both")
			actKey := fs.String("actions-key", "", "its private key")
			jaeger := fs.String("jaeger-url", "", "Jaeger UI base URL: each request links to its trace (env STORAGECP_JAEGER_URL)")
			alerts := fs.String("alerts-url", "", "Prometheus base URL whose alerts (deploy/monitoring/alerts.yml) the health page lists (env STORAGECP_ALERTS_URL)")
			poll := fs.Duration("poll", time.Second, "how often a page's data is re-read without news from WatchReplacement")
			return func(ctx context.Context, e *env, _ []string) error {
				if (*actCert == "") != (*actKey == "") {
					return usagef("console: --actions-cert and --actions-key go together")
				}
				if *jaeger == "" {
					*jaeger = e.getenv("STORAGECP_JAEGER_URL")
				}
				if *alerts == "" {
					*alerts = e.getenv("STORAGECP_ALERTS_URL")
				}
				return e.serveConsole(ctx, consoleConfig{listen: *listen, actCert: *actCert, actKey: *actKey, jaegerURL: *jaeger, alertsURL: *alerts, poll: *poll})
			}
		},
	}}
}

// consoleConfig is `storctl console`'s flags.
type consoleConfig struct {
	listen, actCert, actKey, jaegerURL, alertsURL string
	poll                                          time.Duration
}

func (e *env) serveConsole(ctx context.Context, cfg consoleConfig) error {
	listen, actCert, actKey, jaegerURL, poll := cfg.listen, cfg.actCert, cfg.actKey, cfg.jaegerURL, cfg.poll
	// Every connection is dialled before the first request: the HTTP
	// handlers then only read e.conns, from many goroutines at once.
	for _, ep := range endpoints {
		if _, err := e.conn(ep.service); err != nil {
			return err
		}
	}
	actions := e
	if actCert != "" {
		o := *e.opts
		o.files.Cert, o.files.Key = actCert, actKey
		actions = &env{opts: &o, stdout: e.stdout, stderr: e.stderr, conns: map[string]*grpc.ClientConn{}, getenv: e.getenv}
		defer actions.close()
		for _, ep := range endpoints {
			if _, err := actions.conn(ep.service); err != nil {
				return fmt.Errorf("actions identity: %w", err)
			}
		}
	}
	clients := func(x *env) console.Clients {
		return console.NewClients(x.conns[svcVolume], x.conns[svcAllocator], x.conns[svcOrchestrator])
	}
	who := func(x *env) string {
		if id := x.transport.ID(); id != "" {
			return id
		}
		return "nobody (insecure)"
	}
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("console: %w", err)
	}
	var allowedHost func(string) bool
	if a, ok := l.Addr().(*net.TCPAddr); ok && a.IP.IsLoopback() {
		allowedHost = console.LoopbackHost(strconv.Itoa(a.Port))
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := console.New(console.Options{
		Reads: clients(e), Actions: clients(actions),
		Identity: who(e), ActionsIdentity: who(actions),
		Health: func(ctx context.Context) ([]byte, error) {
			h, err := e.health(ctx)
			if err != nil {
				return nil, err
			}
			var b bytes.Buffer
			if err := h.printJSON(&b); err != nil {
				return nil, err
			}
			return b.Bytes(), nil
		},
		Detectors:   detectors,
		JaegerURL:   jaegerURL,
		AlertsURL:   cfg.alertsURL,
		AllowedHost: allowedHost,
		Poll:        poll,
		Logger:      logger,
	})
	if a, ok := l.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
		fmt.Fprintf(e.stderr, "storctl: WARNING: the console listens on %s, beyond this machine: it has no login of its own, so whoever reaches it reads as %s and acts as %s\n", l.Addr(), who(e), who(actions))
	}
	// The first line is the URL: the launcher and the tests read it.
	fmt.Fprintf(e.stdout, "console: http://%s/ (reads as %s, acts as %s)\n", l.Addr(), who(e), who(actions))
	return console.Serve(ctx, l, srv)
}
