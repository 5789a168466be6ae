// Package stack starts a whole storagecp deployment as real processes on
// loopback: a private PostgreSQL cluster with one database per service, the
// four services, the simulated hardware's processes (sim-agent, the
// Crucible agents the region-allocator calls, and a number of
// sim-upstairs). The local launcher behind
// `make run` and the integration tests both use it, so what the tests
// exercise is what an operator runs.
package stack

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"storagecp.dev/platform/config"
	"storagecp.dev/platform/mtls"
	"storagecp.dev/platform/netlab"
	"storagecp.dev/platform/pgcluster"
	"storagecp.dev/platform/pgformation"
	"storagecp.dev/platform/pki"
)

// Service names, also the process names and log file names.
const (
	Volume       = "volume-service"
	Allocator    = "region-allocator"
	Notifier     = "upstairs-notifier"
	Orchestrator = "replacement-orchestrator"
	SimUpstairs  = "sim-upstairs"
	// SimAgent simulates the Crucible agents; it runs wherever the
	// region-allocator does, on the allocator's database.
	SimAgent = "sim-agent"
)

// Binaries every deployment needs, with their package paths.
var binaries = map[string]string{
	Volume:       "./services/volume/cmd/volume-service",
	Allocator:    "./services/allocator/cmd/region-allocator",
	Notifier:     "./services/notifier/cmd/upstairs-notifier",
	Orchestrator: "./services/orchestrator/cmd/replacement-orchestrator",
	SimUpstairs:  "./services/notifier/sim/cmd/sim-upstairs",
	SimAgent:     "./services/allocator/sim/cmd/sim-agent",
}

// databases maps a service to its database name.
var databases = map[string]string{
	Volume:       "volume",
	Allocator:    "allocator",
	Notifier:     "notifier",
	Orchestrator: "orchestrator",
}

// DatabaseOf returns the database name of a service ("" for none).
func DatabaseOf(service string) string { return databases[service] }

// FindRepoRoot walks up from the working directory to the directory holding
// go.work.
func FindRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("go.work not found above the working directory")
		}
		dir = parent
	}
}

// Build compiles every binary into binDir with one `go build`.
func Build(ctx context.Context, repoRoot, binDir string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	args := []string{"build", "-o", binDir + string(os.PathSeparator)}
	for _, name := range []string{Volume, Allocator, Notifier, Orchestrator, SimUpstairs, SimAgent} {
		args = append(args, binaries[name])
	}
	// The operator CLI is no deployment process, but building it here puts
	// .run/bin/storctl beside the services for `make run` and the tests.
	args = append(args, "./services/storctl/cmd/storctl")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = repoRoot
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// Config describes a deployment.
type Config struct {
	// BinDir holds the built binaries.
	BinDir string
	// PGDir keeps the cluster across runs; empty means a throwaway one.
	PGDir string
	// PGPort fixes the cluster's port; 0 picks a free one.
	PGPort int
	// Fsync keeps PostgreSQL durable (make run, benchmarks).
	Fsync bool
	// PGConfig adds server settings (e.g. shared_preload_libraries for a
	// benchmark's pg_stat_statements).
	PGConfig map[string]string
	// LogDir receives one log file per process; empty means a temp dir.
	LogDir string
	// FixedPorts uses the default ports (7101–7104, 7110+) instead of free
	// ones.
	FixedPorts bool
	// SimUpstairs is how many sim-upstairs to start.
	SimUpstairs int
	// Dev serves the fault-injection RPCs.
	Dev bool
	// Env is added to every process's environment (e.g. OTEL_*).
	Env []string
	// ExtraArgs are appended to a process's arguments, by process name
	// (sim-upstairs instances are "sim-upstairs-0", …).
	ExtraArgs map[string][]string
	// Only starts just these services (and the cluster); nil starts all.
	Only []string
	// Orchestrators is how many orchestrator processes share the database
	// (one leads, the others stand by); default 1. Extra ones are named
	// "replacement-orchestrator-1", …
	Orchestrators int
	// Tracing starts Jaeger (jaeger.go) on free loopback ports before the
	// services and points every process's OTLP exporter at it.
	Tracing bool
	// JaegerBin is the Jaeger binary; empty means .run/bin/jaeger under the
	// repository root (DefaultJaegerBin).
	JaegerBin string
	// HA runs the services on a replicated PostgreSQL (platform/pgformation:
	// pg_auto_failover, a monitor, a primary and a synchronous standby)
	// instead of the single private cluster; HADir keeps it across runs
	// (make run HA=1: .run/ha), else it is thrown away.
	HA    bool
	HADir string
	// HAIsolated puts each of the formation's data nodes in a network
	// namespace of its own, so that a test can cut its link
	// (pgformation.Options.Isolated; needs root).
	HAIsolated bool
	// Insecure runs every process in plaintext (--insecure), for a
	// comparison; by default they speak mutual TLS (security.go).
	Insecure bool
	// PKIDir holds the local CA and every identity; kept across runs when
	// set (make run: .run/pki), else under LogDir.
	PKIDir string
	// AuthzPolicy is the policy file; empty means deploy/authz/policy.json.
	AuthzPolicy string
	// WrapDSN, if set, rewrites the connection string each service process
	// is given (by process name, SimAgent included): how a test puts a
	// fault proxy (testsupport/pgproxy) between a service and PostgreSQL.
	// Extra orchestrators get their own call.
	WrapDSN func(process, dsn string) (string, error)
	// Hosts runs every process on a host of its own, a network namespace
	// on a bridge, and every link between two processes through a fault
	// proxy of its own (hosts.go). Needs root.
	Hosts bool
	// TestHarness issues the harness identity (test/harness) and lets it
	// call every method (DialOption), by a rule added to a copy of the
	// policy: tests play every role against processes that between
	// themselves run under the policy as deployed.
	TestHarness bool
}

// Proc is one running process.
type Proc struct {
	Name string
	Addr string
	// MetricsAddr serves the process's Prometheus /metrics ("" for none).
	MetricsAddr string
	bin         string
	args        []string
	health      *mtls.Transport
	env         []string
	host        *netlab.Host // hosts mode: where it runs
	overrides   []string     // Config.ExtraArgs: after everything else
	logPath     string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Stack is a running deployment.
type Stack struct {
	// Cluster is the single private PostgreSQL (nil under HA).
	Cluster *pgcluster.Cluster
	// Formation is the replicated PostgreSQL under HA (nil otherwise).
	Formation *pgformation.Formation
	LogDir    string
	cfg       Config
	procs     []*Proc
	byName    map[string]*Proc

	jaeger     *Proc
	jaegerURL  string
	tracingEnv []string
	jaegerOTLP string

	ca         *pki.CA
	policyPath string
	transport  *mtls.Transport // the launcher's: health checks
	harness    *mtls.Transport // TestHarness's, nil otherwise

	net               *hostsNet // hosts mode only
	upstairsEndpoints []string
}

var defaultPorts = map[string]int{Volume: 7101, Allocator: 7102, Notifier: 7103, Orchestrator: 7104, SimAgent: 7105, SimUpstairs: 7110}

// metricsPortOffset puts each process's fixed metrics port beside its gRPC
// port: 9101 for the volume-service's 7101, and so on.
const metricsPortOffset = 2000

// Start brings the deployment up and waits until every process is healthy.
// On error everything already started is stopped.
func Start(ctx context.Context, cfg Config) (_ *Stack, err error) {
	s := &Stack{cfg: cfg, byName: map[string]*Proc{}}
	defer func() {
		if err != nil {
			s.Stop()
		}
	}()
	s.LogDir = cfg.LogDir
	if s.LogDir == "" {
		if s.LogDir, err = os.MkdirTemp("", "storagecp-logs"); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(s.LogDir, 0o755); err != nil {
		return nil, err
	}
	if err := s.setupSecurity(); err != nil {
		return nil, err
	}
	if cfg.Hosts {
		if s.net, err = newHostsNet(ctx, s.LogDir); err != nil {
			return nil, err
		}
	}
	var store interface {
		CreateDatabase(ctx context.Context, name, template string) error
	}
	if cfg.HA {
		// In hosts mode the data nodes are hosts of their own too, on
		// the formation's bridge.
		s.Formation, err = pgformation.Start(ctx, pgformation.Options{Dir: cfg.HADir, Fsync: cfg.Fsync, Isolated: cfg.HAIsolated || cfg.Hosts})
		if err != nil {
			return nil, fmt.Errorf("postgres formation: %w", err)
		}
		store = s.Formation
	} else {
		opts := pgcluster.Options{Dir: cfg.PGDir, Port: cfg.PGPort, Fsync: cfg.Fsync, ExtraConfig: cfg.PGConfig}
		if s.net != nil {
			if opts.Host, err = s.net.host(ctx, Postgres); err != nil {
				return nil, err
			}
			opts.TrustCIDR = s.net.nw.CIDR()
		}
		s.Cluster, err = pgcluster.Start(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		store = s.Cluster
	}
	if cfg.Tracing {
		if err := s.startJaeger(ctx); err != nil {
			return nil, err
		}
	}
	for _, name := range []string{Volume, Allocator, Notifier, Orchestrator} {
		if err := store.CreateDatabase(ctx, databases[name], ""); err != nil {
			return nil, fmt.Errorf("create database %s: %w", databases[name], err)
		}
	}

	var ports portPicker
	defer ports.release()
	// listenAddr is where a process serves gRPC: its host's address and
	// its kind's default port in hosts mode, else loopback.
	listenAddr := func(proc string) (string, error) {
		kind, idx := portSlot(proc)
		if s.net != nil {
			h, err := s.net.host(ctx, proc)
			if err != nil {
				return "", err
			}
			return net.JoinHostPort(h.Addr, strconv.Itoa(defaultPorts[kind])), nil
		}
		if cfg.FixedPorts {
			return "127.0.0.1:" + strconv.Itoa(defaultPorts[kind]+idx), nil
		}
		p, err := ports.pick()
		return "127.0.0.1:" + strconv.Itoa(p), err
	}
	// metricsAddr is loopback: on the process's own host in hosts mode,
	// where only that host's agent would scrape it.
	metricsAddr := func(proc string) (string, error) {
		kind, idx := portSlot(proc)
		if cfg.FixedPorts || s.net != nil {
			return "127.0.0.1:" + strconv.Itoa(defaultPorts[kind]+idx+metricsPortOffset), nil
		}
		p, err := ports.pick()
		return "127.0.0.1:" + strconv.Itoa(p), err
	}
	want := func(name string) bool {
		if cfg.Only == nil {
			return true
		}
		if name == SimAgent {
			// The allocator's agents come with it.
			name = Allocator
		}
		for _, n := range cfg.Only {
			if n == name {
				return true
			}
		}
		return false
	}
	procs := []string{Volume, SimAgent, Allocator, Notifier, Orchestrator}
	for i := 1; i < cfg.Orchestrators; i++ {
		procs = append(procs, fmt.Sprintf("%s-%d", Orchestrator, i))
	}
	if want(SimUpstairs) {
		for i := 0; i < cfg.SimUpstairs; i++ {
			procs = append(procs, fmt.Sprintf("%s-%d", SimUpstairs, i))
		}
	}
	addrs := map[string]string{}
	for _, p := range procs {
		if addrs[p], err = listenAddr(p); err != nil {
			return nil, err
		}
	}
	// peer is the address client is given for server: server's own, or in
	// hosts mode the link between them.
	peer := func(client, server string) (string, error) {
		if s.net == nil {
			return addrs[server], nil
		}
		l, err := s.net.link(client, server, addrs[server])
		if err != nil {
			return "", err
		}
		return l.Listen, nil
	}
	peers := func(client string, servers ...string) ([]string, error) {
		var out []string
		for _, srv := range servers {
			a, err := peer(client, srv)
			if err != nil {
				return nil, err
			}
			out = append(out, a)
		}
		return out, nil
	}
	var sims []string
	for _, p := range procs {
		if k, _ := KindOf(p); k == SimUpstairs {
			sims = append(sims, p)
		}
	}
	// The endpoints the notifier is given for each sim-upstairs (the
	// attachments record them).
	if s.upstairsEndpoints, err = peers(Notifier, sims...); err != nil {
		return nil, err
	}
	// argsFor is a process's own arguments: its database, its peers.
	argsFor := func(proc string) ([]string, error) {
		kind, _ := KindOf(proc)
		var args []string
		if db := map[string]string{Volume: databases[Volume], Allocator: databases[Allocator], Notifier: databases[Notifier],
			Orchestrator: databases[Orchestrator],
			// The simulated agents keep their state in the allocator's database.
			SimAgent: databases[Allocator]}[kind]; db != "" {
			d, err := s.processDSN(proc, db)
			if err != nil {
				return nil, err
			}
			args = append(args, "--db", d)
		}
		switch kind {
		case Volume:
			// Disk states, for volumes' redundancy.
			a, err := peer(proc, Allocator)
			if err != nil {
				return nil, err
			}
			args = append(args, "--allocator-addr", a)
		case Allocator:
			a, err := peer(proc, SimAgent)
			if err != nil {
				return nil, err
			}
			args = append(args, "--agent-addr", a)
		case Notifier:
			a, err := peer(proc, Volume)
			if err != nil {
				return nil, err
			}
			args = append(args, "--volume-addr", a)
		case Orchestrator:
			a, err := peers(proc, Volume, Allocator, Notifier)
			if err != nil {
				return nil, err
			}
			// Every sim-upstairs can also act as a Pantry.
			pantries, err := peers(proc, sims...)
			if err != nil {
				return nil, err
			}
			args = append(args, "--volume-addr", a[0], "--allocator-addr", a[1], "--notifier-addr", a[2],
				"--pantry-addrs", strings.Join(pantries, ","))
			if s.Formation != nil {
				// Every orchestrator reads pg_auto_failover's monitor
				// too, for GetDatabaseFormation (storctl health).
				m := s.Formation.MonitorURI()
				if s.net != nil {
					if m, err = s.net.dsn(proc, m, func(string) string { return Postgres + "-monitor" }); err != nil {
						return nil, err
					}
				}
				args = append(args, "--db-monitor", m)
			}
		case SimUpstairs:
			a, err := peers(proc, Notifier, Allocator)
			if err != nil {
				return nil, err
			}
			args = append(args, "--notifier-addr", a[0], "--allocator-addr", a[1])
		}
		return args, nil
	}
	common := []string{}
	if cfg.Dev {
		common = append(common, "--dev")
	}
	for _, proc := range procs {
		kind, _ := KindOf(proc)
		if !want(kind) {
			continue
		}
		own, err := argsFor(proc)
		if err != nil {
			return nil, err
		}
		args := append([]string{"--listen", addrs[proc]}, own...)
		args = append(args, common...)
		if kind == Orchestrator {
			// A stable identity per orchestrator slot (as Nexus uses its
			// zone id): a restarted process takes its slot's lease back at
			// once, knowing its previous incarnation is dead.
			args = append(args, "--sec-id", orchestratorSlot(proc))
		}
		// A test's own arguments stay on the command line, where they
		// override the configuration file of hosts mode.
		overrides := append([]string(nil), cfg.ExtraArgs[kind]...)
		if proc != kind {
			overrides = append(overrides, cfg.ExtraArgs[proc]...)
		}
		m, err := metricsAddr(proc)
		if err != nil {
			return nil, err
		}
		p := &Proc{Name: proc, Addr: addrs[proc], MetricsAddr: m, bin: filepath.Join(cfg.BinDir, kind), args: args, overrides: overrides}
		if s.net != nil {
			if p.host, err = s.net.host(ctx, proc); err != nil {
				return nil, err
			}
		}
		s.add(p)
	}
	ports.release() // the processes bind them now
	for _, p := range s.procs {
		// The metrics flag goes first so a process's ExtraArgs can override
		// it (the flag package keeps the last value).
		sec, err := s.securityArgs(p.Name)
		if err != nil {
			return nil, err
		}
		p.args = append(append([]string{"--metrics-addr", p.MetricsAddr}, sec...), p.args...)
		if s.net != nil {
			// Hosts mode deploys as an operator does: every setting in
			// the process's configuration file (deploy/config).
			path := filepath.Join(s.LogDir, "config", p.Name+".toml")
			if err := writeConfig(path, p.args); err != nil {
				return nil, fmt.Errorf("%s: %w", p.Name, err)
			}
			p.args = []string{"--config", path}
		}
		p.args = append(p.args, p.overrides...)
		p.health = s.transport
		// cfg.Env last: a test's own OTEL_* wins over the launcher's Jaeger.
		tracing, err := s.tracingEnvOf(p.Name)
		if err != nil {
			return nil, err
		}
		p.env = append(append(os.Environ(), tracing...), cfg.Env...)
		p.logPath = filepath.Join(s.LogDir, p.Name+".log")
		if err := p.start(); err != nil {
			return nil, err
		}
	}
	if err := s.WaitHealthy(ctx, 60*time.Second); err != nil {
		return nil, err
	}
	return s, nil
}

// DSN is a database's connection string: the single cluster's, or under HA
// the formation's multi-host one.
func (s *Stack) DSN(database string) string {
	if s.Formation != nil {
		return s.Formation.DSN(database)
	}
	return s.Cluster.DSN(database)
}

// processDSN is the connection string a process is given: through
// Config.WrapDSN, and in hosts mode over TCP through the process's own
// links to each database server.
func (s *Stack) processDSN(proc, database string) (string, error) {
	d := s.DSN(database)
	if s.net != nil && s.Cluster != nil {
		d = fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable", s.Cluster.Addr(), database)
	}
	if s.cfg.WrapDSN != nil {
		w, err := s.cfg.WrapDSN(proc, d)
		if err != nil {
			return "", fmt.Errorf("wrap %s's DSN: %w", proc, err)
		}
		d = w
	}
	if s.net == nil {
		return d, nil
	}
	return s.net.dsn(proc, d, s.databaseHost)
}

// databaseHost names the database server at addr, as its links name it.
func (s *Stack) databaseHost(addr string) string {
	if s.Formation != nil {
		for i, n := range s.Formation.Nodes {
			if net.JoinHostPort(n.Host, strconv.Itoa(n.Port)) == addr {
				return fmt.Sprintf("%s-node%d", Postgres, i+1)
			}
		}
	}
	if s.Cluster != nil && s.Cluster.Addr() == addr {
		return Postgres
	}
	// Behind another proxy (Config.WrapDSN).
	return Postgres + "@" + addr
}

// writeConfig writes command-line flags ("--name value", or "--name"
// alone for a boolean) as a configuration file (platform/config).
func writeConfig(path string, args []string) error {
	settings := map[string]any{}
	for i := 0; i < len(args); i++ {
		name, ok := strings.CutPrefix(args[i], "--")
		if !ok {
			return fmt.Errorf("configuration file: %q is not a flag", args[i])
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "--") {
			settings[name] = args[i+1]
			i++
		} else {
			settings[name] = true
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return config.Write(path, settings)
}

// KindOf is a process's binary and its instance number: "sim-upstairs-3"
// is (sim-upstairs, 3), "replacement-orchestrator-1" (…, 1), a service
// (itself, 0).
func KindOf(proc string) (string, int) {
	for _, k := range []string{SimUpstairs, Orchestrator} {
		if rest, ok := strings.CutPrefix(proc, k+"-"); ok {
			n, err := strconv.Atoi(rest)
			if err == nil {
				return k, n
			}
		}
	}
	return proc, 0
}

// portSlot is a process's kind and its offset from the kind's default
// port: the instance number, but 10 more for the extra orchestrators
// (7115 …), which would otherwise collide with the sim-upstairs' 7110 ….
func portSlot(proc string) (string, int) {
	kind, idx := KindOf(proc)
	if kind == Orchestrator && idx > 0 {
		idx += 10
	}
	return kind, idx
}

// orchestratorSlot is an orchestrator process's --sec-id.
func orchestratorSlot(proc string) string {
	if proc == Orchestrator {
		return Orchestrator + "-0"
	}
	return proc
}

func (s *Stack) add(p *Proc) {
	s.procs = append(s.procs, p)
	s.byName[p.Name] = p
}

// Procs lists the processes in start order.
func (s *Stack) Procs() []*Proc { return s.procs }

// Proc returns a process by name, or nil.
func (s *Stack) Proc(name string) *Proc { return s.byName[name] }

// Addr returns a process's gRPC address ("" if not started).
func (s *Stack) Addr(name string) string {
	if p := s.byName[name]; p != nil {
		return p.Addr
	}
	return ""
}

// UpstairsEndpoints lists, for each sim-upstairs, the endpoint the
// notifier reaches it at: what an attachment names (ConstructVolume). The
// same as SimUpstairsAddrs but in hosts mode, where it is the link's.
func (s *Stack) UpstairsEndpoints() []string { return s.upstairsEndpoints }

// SimUpstairsAddrs lists the sim-upstairs addresses.
func (s *Stack) SimUpstairsAddrs() []string {
	var out []string
	for _, p := range s.procs {
		if strings.HasPrefix(p.Name, SimUpstairs+"-") {
			out = append(out, p.Addr)
		}
	}
	return out
}

// WaitHealthy polls every process's gRPC health until all are SERVING.
func (s *Stack) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for _, p := range s.procs {
		for {
			st, err := p.Health(ctx)
			if err == nil && st == healthpb.HealthCheckResponse_SERVING {
				break
			}
			if exited, perr := p.Exited(); exited {
				return fmt.Errorf("%s exited: %v\n%s", p.Name, perr, p.LogTail(20))
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not healthy after %s (status %v, err %v)\n%s", p.Name, timeout, st, err, p.LogTail(20))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	// A process that could not bind its port exits at once, while whoever
	// took the port may answer the checks above (another test's process of
	// the same kind does): every process must still be running.
	for _, p := range s.procs {
		if exited, perr := p.Exited(); exited {
			return fmt.Errorf("%s exited: %v\n%s", p.Name, perr, p.LogTail(20))
		}
	}
	return nil
}

// MetricsURL is a process's Prometheus scrape URL ("" if not started). In
// hosts mode it is on the process's own host's loopback: fetch it with
// HTTPClient.
func (s *Stack) MetricsURL(name string) string {
	if p := s.byName[name]; p != nil && p.MetricsAddr != "" {
		return "http://" + p.MetricsAddr + "/metrics"
	}
	return ""
}

// HTTPClient fetches what a process serves over HTTP (MetricsURL): from
// this namespace, or in hosts mode from inside the process's host, as an
// agent on that machine would.
func (s *Stack) HTTPClient(proc string) *http.Client {
	p := s.byName[proc]
	if p == nil || p.host == nil {
		return http.DefaultClient
	}
	return &http.Client{Transport: &http.Transport{DialContext: p.host.DialContext, DisableKeepAlives: true}}
}

// Stop terminates every process (SIGTERM, then SIGKILL), then Jaeger (last,
// so the spans the processes flush at shutdown still reach it), then the
// cluster.
func (s *Stack) Stop() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		s.procs[i].Stop(10 * time.Second)
	}
	if s.jaeger != nil {
		s.jaeger.Stop(10 * time.Second)
	}
	if s.Formation != nil {
		s.Formation.Close()
	}
	if s.Cluster != nil {
		if s.cfg.PGDir != "" {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = s.Cluster.Stop(ctx)
			cancel()
		} else {
			_ = s.Cluster.Close()
		}
	}
	if s.net != nil {
		s.net.close()
	}
}

func (p *Proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	name, args := p.bin, p.args
	if p.host != nil {
		name, args = p.host.Wrap(name, args)
	}
	cmd := exec.Command(name, args...)
	cmd.Env = p.env
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Children die with the launcher even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := startPinned(cmd); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	p.cmd = cmd
	p.done = make(chan struct{})
	p.err = nil
	go func(done chan struct{}) {
		err := cmd.Wait()
		logf.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}(p.done)
	return nil
}

// Restart starts a stopped or killed process again with the same arguments.
func (p *Proc) Restart() error {
	if exited, _ := p.Exited(); !exited {
		return fmt.Errorf("%s is still running", p.Name)
	}
	return p.start()
}

// RestartWithEnv starts a stopped or killed process again with extra
// environment entries (e.g. a crash point) for this run only.
func (p *Proc) RestartWithEnv(extra ...string) error {
	if exited, _ := p.Exited(); !exited {
		return fmt.Errorf("%s is still running", p.Name)
	}
	base := p.env
	p.env = append(append([]string(nil), base...), extra...)
	defer func() { p.env = base }()
	return p.start()
}

// Wait waits up to d for the process to exit and reports whether it did.
func (p *Proc) Wait(d time.Duration) bool { return p.wait(d) }

// Pid is the current process id (0 when not running).
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited reports whether the process has exited, and its error.
func (p *Proc) Exited() (bool, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true, nil
	}
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process.
func (p *Proc) Signal(sig os.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil || p.cmd.Process == nil {
		return errors.New("not started")
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL and waits for the exit (a crash).
func (p *Proc) Kill() {
	_ = p.Signal(syscall.SIGKILL)
	p.wait(30 * time.Second)
}

// Stop sends SIGTERM and waits up to grace, then SIGKILL.
func (p *Proc) Stop(grace time.Duration) {
	if exited, _ := p.Exited(); exited {
		return
	}
	_ = p.Signal(syscall.SIGTERM)
	if !p.wait(grace) {
		p.Kill()
	}
}

func (p *Proc) wait(d time.Duration) bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return true
	}
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

// portPicker hands out free loopback ports that are also distinct from
// each other: every picked port stays bound until release, so the kernel
// cannot return it twice (picking and releasing one at a time could, and a
// process given its own gRPC port as its metrics port exits at start).
type portPicker struct{ held []net.Listener }

func (pp *portPicker) pick() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	pp.held = append(pp.held, l)
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (pp *portPicker) release() {
	for _, l := range pp.held {
		l.Close()
	}
	pp.held = nil
}

// healthServices names, per binary, a gRPC service that only that binary
// serves: asking for its status tells our process from a different kind of
// process that took its port (which answers NOT_FOUND).
var healthServices = map[string]string{
	Volume:       "storage.volume.v1.VolumeService",
	Allocator:    "storage.allocator.v1.RegionAllocatorService",
	Notifier:     "storage.notifier.v1.UpstairsNotifierService",
	Orchestrator: "storage.orchestrator.v1.ReplacementService",
	SimUpstairs:  "storage.upstairs.v1.UpstairsService",
	SimAgent:     "storage.agent.v1.AgentService",
}

// Health asks the process's gRPC health service for the status of its own
// service (see healthServices).
func (p *Proc) Health(ctx context.Context) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient(p.Addr, p.health.DialOption())
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: healthServices[filepath.Base(p.bin)]})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return resp.Status, nil
}

// LogPath is the process's log file.
func (p *Proc) LogPath() string { return p.logPath }

// LogTail returns the last n lines of the process's log.
func (p *Proc) LogTail(n int) string {
	f, err := os.Open(p.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	return tail(f, n)
}

func tail(r io.Reader, n int) string {
	var lines []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}
