// Package pgformation runs a replicated, automatically failing-over
// PostgreSQL on this machine with pg_auto_failover: a monitor and two data
// nodes (a primary and a synchronous standby), each supervised by its own
// `pg_autoctl run`. The failover logic is pg_auto_failover's (docs/database.md
// says why this engine); this package only starts, inspects and stops the
// formation, for `make run HA=1` and the tests.
//
// Clients reach it through one multi-host DSN with
// target_session_attrs=read-write: libpq and pgx try the nodes in turn and
// keep the one that accepts writes, so a failover needs no reconfiguration.
//
// Like pgcluster, when the effective uid is 0 every command runs as the
// postgres user (PostgreSQL refuses root), in directories chowned to it.
package pgformation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/netlab"
	"storagecp.dev/platform/pgcluster"
)

// ErrNotInstalled means pg_autoctl was not found (make ha-deps installs it).
var ErrNotInstalled = errors.New("pg_auto_failover is not installed (make ha-deps: apt-get install postgresql-15-auto-failover pg-auto-failover-cli)")

// Options configure a formation.
type Options struct {
	// Dir holds the monitor's and the nodes' data, their pg_autoctl
	// configuration and logs. Empty: a fresh directory under /tmp, removed
	// by Close.
	Dir string
	// Ports: the monitor's, then one per node. Empty: free ones.
	Ports []int
	// Fsync keeps durability on (make run, benchmarks). Tests turn it off.
	Fsync bool
	// Isolated runs each data node in a network namespace of its own on a
	// bridge (netns.go), so that tests can cut its links. Needs root.
	Isolated bool
}

// Node is one data node.
type Node struct {
	Name string
	// Host is the address the node listens on and registers: 127.0.0.1,
	// or its own on the bridge when the formation is Isolated.
	Host   string
	Port   int
	PGData string
	run    *exec.Cmd
	done   chan struct{}
	net    *netlab.Host // nil unless Isolated
}

// Formation is a running monitor and its data nodes.
type Formation struct {
	Dir         string
	MonitorPort int
	Nodes       []*Node

	binDir  string
	asUser  string
	owned   bool
	monitor *Node
	net     *netlab.Network // nil unless Isolated
	mu      sync.Mutex
}

// Installed reports whether pg_autoctl is on this machine.
func Installed() bool {
	_, err := exec.LookPath("pg_autoctl")
	return err == nil
}

// Start creates the formation if Dir holds none yet, starts every
// pg_autoctl, and waits until a primary and a synchronous standby are up.
func Start(ctx context.Context, opts Options) (_ *Formation, err error) {
	if !Installed() {
		return nil, ErrNotInstalled
	}
	binDir, err := pgcluster.FindBinDir()
	if err != nil {
		return nil, err
	}
	f := &Formation{Dir: opts.Dir, binDir: binDir}
	if os.Geteuid() == 0 {
		f.asUser = "postgres"
		if _, err := user.Lookup(f.asUser); err != nil {
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
	}
	if f.Dir == "" {
		if f.Dir, err = os.MkdirTemp("/tmp", "scha"); err != nil {
			return nil, err
		}
		f.owned = true
	} else if err := os.MkdirAll(f.Dir, 0o755); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
		}
	}()
	if err := f.chown(f.Dir); err != nil {
		return nil, err
	}
	ports := append([]int(nil), opts.Ports...)
	for len(ports) < 3 {
		p, err := pgcluster.FreePort()
		if err != nil {
			return nil, err
		}
		ports = append(ports, p)
	}
	f.MonitorPort = ports[0]
	f.monitor = &Node{Name: "monitor", Host: "127.0.0.1", Port: ports[0], PGData: filepath.Join(f.Dir, "monitor")}
	if opts.Isolated {
		if f.net, err = newNetwork(ctx); err != nil {
			return nil, err
		}
		f.monitor.Host = f.net.Gateway()
	}
	for i := 1; i <= 2; i++ {
		n := &Node{Name: fmt.Sprintf("node%d", i), Host: "127.0.0.1", Port: ports[i], PGData: filepath.Join(f.Dir, fmt.Sprintf("node%d", i))}
		if f.net != nil {
			if n.net, err = addNode(ctx, f.net, i); err != nil {
				return nil, err
			}
			n.Host = n.net.Addr
		}
		f.Nodes = append(f.Nodes, n)
	}

	if !exists(filepath.Join(f.monitor.PGData, "PG_VERSION")) {
		if err := f.autoctl(ctx, "create", "monitor", "--pgdata", f.monitor.PGData, "--pgport", strconv.Itoa(f.MonitorPort),
			"--hostname", f.monitor.Host, "--auth", "trust", "--no-ssl"); err != nil {
			return nil, err
		}
		if err := f.trustBridge(f.monitor); err != nil {
			return nil, err
		}
	}
	if err := f.startRun(f.monitor); err != nil {
		return nil, err
	}
	if err := f.waitConnect(ctx, f.monitor, "pg_auto_failover"); err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	// One node at a time: the first becomes the primary, the second is
	// cloned from it as its standby.
	for _, n := range f.Nodes {
		if !exists(filepath.Join(n.PGData, "PG_VERSION")) {
			if _, err := f.run(f.commandIn(ctx, n, "create", "postgres", "--pgdata", n.PGData, "--pgport", strconv.Itoa(n.Port),
				"--hostname", n.Host, "--name", n.Name, "--auth", "trust", "--no-ssl",
				"--monitor", f.MonitorURI())); err != nil {
				return nil, err
			}
			if err := f.tune(n, opts); err != nil {
				return nil, err
			}
			if err := f.trustBridge(n); err != nil {
				return nil, err
			}
		}
		if err := f.startRun(n); err != nil {
			return nil, err
		}
		if err := f.waitConnect(ctx, n, "postgres"); err != nil {
			return nil, fmt.Errorf("%s: %w", n.Name, err)
		}
	}
	if err := f.WaitHealthy(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	return f, nil
}

// tune appends the settings storagecp's deployment uses to a new node's
// configuration (pg_auto_failover keeps its own in postgresql-auto-failover.conf).
func (f *Formation) tune(n *Node, opts Options) error {
	lines := []string{"max_connections = 400", "shared_buffers = 256MB"}
	if !opts.Fsync {
		lines = append(lines, "fsync = off", "full_page_writes = off")
	}
	path := filepath.Join(n.PGData, "postgresql.conf")
	fh, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	_, err = fmt.Fprintf(fh, "\n# storagecp (platform/pgformation)\n%s\n", strings.Join(lines, "\n"))
	return err
}

// MonitorURI is the monitor's connection string, for pg_autoctl.
func (f *Formation) MonitorURI() string {
	return fmt.Sprintf("postgres://autoctl_node@%s:%d/pg_auto_failover?sslmode=disable", f.monitor.Host, f.MonitorPort)
}

// DSN is the multi-host connection string of a database: every node, the
// one accepting writes chosen at connect time.
func (f *Formation) DSN(database string) string {
	hosts := make([]string, len(f.Nodes))
	for i, n := range f.Nodes {
		hosts[i] = net.JoinHostPort(n.Host, strconv.Itoa(n.Port))
	}
	return fmt.Sprintf("postgres://postgres@%s/%s?target_session_attrs=read-write&sslmode=disable&connect_timeout=2", strings.Join(hosts, ","), database)
}

// CreateDatabase creates a database on the primary (the standby replays
// it), optionally from a template; a no-op when it exists.
func (f *Formation) CreateDatabase(ctx context.Context, name, template string) error {
	return pgcluster.CreateDatabaseAt(ctx, f.DSN("postgres"), name, template)
}

// NodeState is one node as the monitor sees it.
type NodeState struct {
	Name     string `json:"nodename"`
	Port     int    `json:"nodeport"`
	Health   int    `json:"health"`
	Current  string `json:"current_group_state"`
	Assigned string `json:"assigned_group_state"`
	LSN      string `json:"reported_lsn"`
	TLI      int    `json:"reported_tli"`
}

// State asks the monitor for every node's state.
func (f *Formation) State(ctx context.Context) ([]NodeState, error) {
	out, err := f.autoctlOutput(ctx, "show", "state", "--pgdata", f.monitor.PGData, "--json")
	if err != nil {
		return nil, err
	}
	var st []NodeState
	if err := json.Unmarshal(out, &st); err != nil {
		return nil, fmt.Errorf("pg_autoctl show state: %w: %s", err, out)
	}
	return st, nil
}

// Primary is the node the monitor reports as the writable one (nil when
// none): primary, or wait_primary, a primary taking writes without a
// synchronous standby (the standby is gone or catching up).
func (f *Formation) Primary(ctx context.Context) (*Node, error) {
	st, err := f.State(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range st {
		if s.Current == s.Assigned && (s.Current == "primary" || s.Current == "wait_primary") {
			return f.node(s.Name), nil
		}
	}
	return nil, nil
}

func (f *Formation) node(name string) *Node {
	for _, n := range f.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// WaitHealthy waits until one node is primary and the other secondary, both
// as assigned: replication is synchronous again.
func (f *Formation) WaitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last []NodeState
	for {
		st, err := f.State(ctx)
		if err == nil {
			last = st
			roles := map[string]int{}
			for _, s := range st {
				if s.Current == s.Assigned {
					roles[s.Current]++
				}
			}
			if roles["primary"] == 1 && roles["secondary"] == len(f.Nodes)-1 {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("formation not healthy after %s: %+v (%v)", timeout, last, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// WaitFailover waits until a node other than from is the primary, as
// assigned and as reported. A killed primary's keeper may restart its
// PostgreSQL within a second, and that node may take writes again before
// the monitor (which saw it fail) promotes the standby: the failover is
// done only when the monitor says so.
func (f *Formation) WaitFailover(ctx context.Context, from string, timeout time.Duration) (*Node, error) {
	deadline := time.Now().Add(timeout)
	for {
		n, err := f.Primary(ctx)
		if err == nil && n != nil && n.Name != from {
			return n, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("no failover from %s after %s (primary %v, %v)", from, timeout, n, err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Switchover asks the monitor for a planned switchover: the primary is
// demoted once the standby has caught up, and the standby promoted. It
// returns once the monitor has taken the request (it refuses one while the
// formation is not healthy); WaitFailover tells when the standby is the
// primary.
//
// It calls the monitor's perform_failover itself rather than run
// `pg_autoctl perform switchover`: that command then waits for the
// monitor's notifications, and pg_autoctl 2.0 run against the monitor may
// give up waiting (exit 12, "Failed to receive monitor's notifications")
// while the switchover goes on and completes. The monitor's state is the
// answer, and WaitFailover polls it.
func (f *Formation) Switchover(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, f.superuserDSN(f.monitor, "pg_auto_failover"))
	if err != nil {
		return fmt.Errorf("switchover: monitor: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, `SELECT pgautofailover.perform_failover('default', 0)`); err != nil {
		return fmt.Errorf("switchover: %w", err)
	}
	return nil
}

// StopNode stops a node's keeper and its PostgreSQL (a fast shutdown), as
// when its machine goes away, and waits until the keeper has exited.
func (f *Formation) StopNode(ctx context.Context, n *Node) error {
	if n.run == nil {
		return fmt.Errorf("node %s is not running", n.Name)
	}
	if err := f.autoctl(ctx, "stop", "--pgdata", n.PGData, "--fast"); err != nil {
		return err
	}
	select {
	case <-n.done:
		n.run = nil
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StartNode starts a stopped node's keeper again; it rejoins the formation
// (a former primary as a standby, if another was promoted meanwhile).
func (f *Formation) StartNode(n *Node) error {
	if n.run != nil {
		return fmt.Errorf("node %s is running", n.Name)
	}
	return f.startRun(n)
}

// WaitStates waits until every node named in want reports the given state
// (current and assigned alike), e.g. {"node1": "wait_primary"}.
func (f *Formation) WaitStates(ctx context.Context, want map[string]string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last []NodeState
	for {
		st, err := f.State(ctx)
		if err == nil {
			last = st
			ok := 0
			for _, s := range st {
				if w, named := want[s.Name]; named && s.Current == w && s.Assigned == w {
					ok++
				}
			}
			if ok == len(want) {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("formation not in %v after %s: %+v (%v)", want, timeout, last, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// Standby is the node the monitor reports as secondary (nil when none).
func (f *Formation) Standby(ctx context.Context) (*Node, error) {
	st, err := f.State(ctx)
	if err != nil {
		return nil, err
	}
	for _, s := range st {
		if s.Current == "secondary" && s.Assigned == "secondary" {
			return f.node(s.Name), nil
		}
	}
	return nil, nil
}

// Postmaster is the pid of a node's PostgreSQL server (0 when it is not
// running), for tests that kill it.
func (n *Node) Postmaster() int {
	raw, err := os.ReadFile(filepath.Join(n.PGData, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(raw), "\n", 2)[0]))
	return pid
}

// LogTail is the last n lines of a node's (or "monitor"'s) pg_autoctl
// log, which holds its keeper's decisions and its PostgreSQL's messages:
// what a test prints when a failover did not go as expected.
func (f *Formation) LogTail(name string, n int) string {
	raw, err := os.ReadFile(filepath.Join(f.Dir, name+".log"))
	if err != nil {
		return err.Error()
	}
	return lastLines(string(raw), n)
}

// Close stops every pg_autoctl (nodes first, then the monitor) and, if
// Start created the directory, removes it.
func (f *Formation) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, n := range append(append([]*Node(nil), f.Nodes...), f.monitor) {
		if n == nil || n.run == nil {
			continue // never started, or stopped by StopNode
		}
		_ = f.autoctl(ctx, "stop", "--pgdata", n.PGData, "--fast")
		select {
		case <-n.done:
		case <-time.After(30 * time.Second):
			_ = syscall.Kill(-n.run.Process.Pid, syscall.SIGKILL)
			<-n.done
		}
	}
	for _, n := range f.Nodes {
		if n.net != nil {
			n.net.Remove()
		}
	}
	if f.net != nil {
		f.net.Close()
	}
	if f.owned {
		os.RemoveAll(f.Dir)
	}
}

// trustBridge lets every address on an isolated formation's bridge in, as
// --auth trust lets in 127.0.0.1: clients and the monitor reach a node, and
// the nodes the monitor and each other (replication too), from there.
func (f *Formation) trustBridge(n *Node) error {
	if f.net == nil {
		return nil
	}
	cidr := f.net.CIDR()
	fh, err := os.OpenFile(filepath.Join(n.PGData, "pg_hba.conf"), os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer fh.Close()
	_, err = fmt.Fprintf(fh, "\n# storagecp (platform/pgformation): the formation's bridge\nhost all all %s trust\nhost replication all %s trust\n", cidr, cidr)
	return err
}

// startRun starts the node's supervisor, `pg_autoctl run`, in its own
// process group, logging beside its data.
func (f *Formation) startRun(n *Node) error {
	logf, err := os.OpenFile(filepath.Join(f.Dir, n.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := f.commandIn(context.Background(), n, "run", "--pgdata", n.PGData)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("pg_autoctl run %s: %w", n.Name, err)
	}
	n.run, n.done = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(n.done)
	}()
	return nil
}

func (f *Formation) waitConnect(ctx context.Context, n *Node, db string) error {
	port := n.Port
	dsn := f.superuserDSN(n, db)
	deadline := time.Now().Add(90 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, dsn)
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("port %d not accepting connections: %w", port, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// superuserDSN reaches database db on node n (or the monitor) as the
// postgres superuser, whom the formation trusts from this machine.
func (f *Formation) superuserDSN(n *Node, db string) string {
	return fmt.Sprintf("postgres://postgres@%s/%s?sslmode=disable&connect_timeout=2", net.JoinHostPort(n.Host, strconv.Itoa(n.Port)), db)
}

func (f *Formation) autoctl(ctx context.Context, args ...string) error {
	_, err := f.autoctlOutput(ctx, args...)
	return err
}

func (f *Formation) autoctlOutput(ctx context.Context, args ...string) ([]byte, error) {
	return f.run(f.command(ctx, args...))
}

// run runs a pg_autoctl command to its end and returns its output.
func (f *Formation) run(cmd *exec.Cmd) ([]byte, error) {
	args := cmd.Args
	for i, a := range args {
		if a == "pg_autoctl" {
			args = args[i+1:]
			break
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("pg_autoctl %s: %w: %s", strings.Join(args, " "), err, lastLines(stderr.String(), 5))
	}
	return []byte(stdout.String()), nil
}

// commandIn is command in a node's network namespace (when it has one).
func (f *Formation) commandIn(ctx context.Context, n *Node, args ...string) *exec.Cmd {
	return f.commandOn(ctx, n.net, args...)
}

// command is pg_autoctl as the postgres user, its configuration and state
// under Dir, the server binaries on its PATH.
func (f *Formation) command(ctx context.Context, args ...string) *exec.Cmd {
	return f.commandOn(ctx, nil, args...)
}

// commandOn is command inside host (nil: here).
func (f *Formation) commandOn(ctx context.Context, host *netlab.Host, args ...string) *exec.Cmd {
	env := []string{
		"PATH=" + f.binDir + ":/usr/bin:/bin",
		"XDG_CONFIG_HOME=" + filepath.Join(f.Dir, "config"),
		"XDG_DATA_HOME=" + filepath.Join(f.Dir, "state"),
	}
	name, argv := "env", append(env, append([]string{"pg_autoctl"}, args...)...)
	if f.asUser != "" {
		name, argv = "runuser", append([]string{"-u", f.asUser, "--", name}, argv...)
	}
	if host != nil {
		name, argv = host.Wrap(name, argv)
	}
	cmd := exec.CommandContext(ctx, name, argv...)
	cmd.Dir = f.Dir
	return cmd
}

func (f *Formation) chown(path string) error { return pgcluster.Chown(path, f.asUser) }

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
