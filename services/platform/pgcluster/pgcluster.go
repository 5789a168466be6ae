// Package pgcluster runs a private PostgreSQL cluster from the Debian server
// binaries: for tests (one per test binary), for the integration harness and
// for the local launcher behind `make run`.
//
// PostgreSQL refuses to run as root, and development machines and CI run as
// root, so when the effective uid is 0 every server command runs as the
// `postgres` user through runuser, in a directory chowned to it.
package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"storagecp.dev/platform/netlab"
)

// Options configure a cluster.
type Options struct {
	// Dir holds data/, the socket and the log. Empty: a fresh short
	// directory under /tmp (unix socket paths are limited to 107 bytes),
	// removed by Stop.
	Dir string
	// Port on 127.0.0.1; 0 picks a free one.
	Port int
	// Fsync keeps durability on (benchmarks, make run). Tests turn it off.
	Fsync bool
	// BinDir overrides the PostgreSQL binary directory.
	BinDir string
	// ExtraConfig are additional "-c name=value" settings.
	ExtraConfig map[string]string
	// Host runs the server inside a network namespace (platform/netlab),
	// listening on the host's address as well as its loopback; TrustCIDR
	// then names the subnet whose clients it lets in (pg_hba trust, as for
	// 127.0.0.1). The Unix-domain socket stays reachable from here.
	Host      *netlab.Host
	TrustCIDR string
}

// Cluster is a running private PostgreSQL.
type Cluster struct {
	Dir     string
	Port    int
	binDir  string
	owned   bool // Dir was created by Start and is removed by Stop
	asUser  string
	options Options
}

// ErrNoBinaries means no PostgreSQL server binaries were found.
var ErrNoBinaries = errors.New("PostgreSQL server binaries not found (apt-get install postgresql, or set STORAGECP_PG_BIN)")

// FindBinDir locates the PostgreSQL server binaries: $STORAGECP_PG_BIN, else
// the newest /usr/lib/postgresql/*/bin holding initdb.
func FindBinDir() (string, error) {
	if d := os.Getenv("STORAGECP_PG_BIN"); d != "" {
		return d, nil
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(matches) == 0 {
		return "", ErrNoBinaries
	}
	sort.Slice(matches, func(i, j int) bool {
		return versionOf(matches[i]) > versionOf(matches[j])
	})
	return filepath.Dir(matches[0]), nil
}

func versionOf(initdbPath string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdbPath))))
	return v
}

// FreePort asks the kernel for a free 127.0.0.1 TCP port.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Start initialises the cluster if Dir holds none yet, then starts it.
func Start(ctx context.Context, opts Options) (*Cluster, error) {
	binDir := opts.BinDir
	if binDir == "" {
		var err error
		if binDir, err = FindBinDir(); err != nil {
			return nil, err
		}
	}
	c := &Cluster{Dir: opts.Dir, Port: opts.Port, binDir: binDir, options: opts}
	if os.Geteuid() == 0 {
		c.asUser = "postgres"
		if _, err := user.Lookup(c.asUser); err != nil {
			return nil, fmt.Errorf("running as root needs the postgres user: %w", err)
		}
	}
	if c.Dir == "" {
		d, err := os.MkdirTemp("/tmp", "scpg")
		if err != nil {
			return nil, err
		}
		c.Dir, c.owned = d, true
	} else if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	if c.Port == 0 {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		c.Port = p
	}
	if err := c.chown(c.Dir); err != nil {
		c.cleanup()
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(c.dataDir(), "PG_VERSION")); err != nil {
		if err := c.run(ctx, "initdb", "-D", c.dataDir(), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
			c.cleanup()
			return nil, err
		}
	}
	if err := c.Restart(ctx); err != nil {
		c.cleanup()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) dataDir() string { return filepath.Join(c.Dir, "data") }

// LogPath is the server log.
func (c *Cluster) LogPath() string { return filepath.Join(c.Dir, "postgres.log") }

// DSN for a database on this cluster, over its Unix-domain socket: the
// services run beside the cluster, and a socket round trip costs both sides
// markedly less CPU than TCP loopback (about 12% more replacements per
// second in the fan-out bench). The server also listens on 127.0.0.1:Port.
func (c *Cluster) DSN(database string) string {
	return fmt.Sprintf("postgres://postgres@/%s?host=%s&port=%d&sslmode=disable", database, c.SocketDir(), c.Port)
}

// SocketDir holds the server's Unix-domain socket: a short path of its own
// under the temp dir (named by the port, unique among running clusters),
// since a socket path may not exceed about 100 bytes and Dir can be long.
func (c *Cluster) SocketDir() string {
	return filepath.Join(os.TempDir(), fmt.Sprintf("storagecp-pg.%d", c.Port))
}

// Restart starts the server (again) after Stop without removing anything.
func (c *Cluster) Restart(ctx context.Context) error {
	fsync := "off"
	if c.options.Fsync {
		fsync = "on"
	}
	if err := os.MkdirAll(c.SocketDir(), 0o755); err != nil {
		return err
	}
	if err := c.chown(c.SocketDir()); err != nil {
		return err
	}
	conf := []string{
		"-k " + c.SocketDir(),
		"-p " + strconv.Itoa(c.Port),
		"-c listen_addresses=" + c.listenAddresses(),
		"-c fsync=" + fsync,
		"-c max_connections=400",
		"-c shared_buffers=512MB",
	}
	if !c.options.Fsync {
		conf = append(conf, "-c synchronous_commit=off", "-c full_page_writes=off")
	}
	keys := make([]string, 0, len(c.options.ExtraConfig))
	for k := range c.options.ExtraConfig {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		conf = append(conf, fmt.Sprintf("-c %s=%s", k, c.options.ExtraConfig[k]))
	}
	if err := c.trustSubnet(); err != nil {
		return err
	}
	if err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-o", strings.Join(conf, " "), "-l", c.LogPath(), "-w", "-t", "60", "start"); err != nil {
		return err
	}
	return c.waitReady(ctx)
}

// Addr is the server's TCP address, for clients that do not share its
// file system: 127.0.0.1:Port, or its host's address under Options.Host.
func (c *Cluster) Addr() string {
	h := "127.0.0.1"
	if c.options.Host != nil {
		h = c.options.Host.Addr
	}
	return net.JoinHostPort(h, strconv.Itoa(c.Port))
}

func (c *Cluster) listenAddresses() string {
	if c.options.Host != nil {
		return "127.0.0.1," + c.options.Host.Addr
	}
	return "127.0.0.1"
}

// trustSubnet lets Options.TrustCIDR in (once: a kept cluster has it).
func (c *Cluster) trustSubnet() error {
	if c.options.TrustCIDR == "" {
		return nil
	}
	path := filepath.Join(c.dataDir(), "pg_hba.conf")
	hba, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	line := fmt.Sprintf("host all all %s trust", c.options.TrustCIDR)
	if strings.Contains(string(hba), line) {
		return nil
	}
	return os.WriteFile(path, append(hba, []byte("\n# storagecp (platform/pgcluster): the deployment's network\n"+line+"\n")...), 0o600)
}

func (c *Cluster) waitReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.DSN("postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("postgres on port %d not ready: %w", c.Port, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop stops the server (fast shutdown) and keeps its files.
func (c *Cluster) Stop(ctx context.Context) error {
	return c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-m", "fast", "-w", "stop")
}

// Close stops the server and, if Start created the directory, removes it.
func (c *Cluster) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := c.Stop(ctx)
	c.cleanup()
	return err
}

func (c *Cluster) cleanup() {
	if c.owned {
		os.RemoveAll(c.Dir)
	}
	// Empty once the server has stopped (it removes its socket); a kept
	// cluster recreates it at its next start.
	os.Remove(c.SocketDir())
}

// CreateDatabase creates a database, optionally from a template. It is a
// no-op when the database exists.
func (c *Cluster) CreateDatabase(ctx context.Context, name, template string) error {
	return CreateDatabaseAt(ctx, c.DSN("postgres"), name, template)
}

// CreateDatabaseAt creates a database through the server dsn reaches
// (a cluster's, or a formation's primary), optionally from a template; a
// no-op when it exists.
func CreateDatabaseAt(ctx context.Context, dsn, name, template string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	stmt := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize()
	if template != "" {
		stmt += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	_, err = conn.Exec(ctx, stmt)
	return err
}

// DropDatabase drops a database, disconnecting its sessions.
func (c *Cluster) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, c.DSN("postgres"))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

func (c *Cluster) chown(path string) error { return Chown(path, c.asUser) }

// Chown gives path to the named user (the postgres user the servers run
// as when we are root); a no-op for "".
func Chown(path, owner string) error {
	if owner == "" {
		return nil
	}
	u, err := user.Lookup(owner)
	if err != nil {
		return err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return os.Chown(path, uid, gid)
}

func (c *Cluster) run(ctx context.Context, bin string, args ...string) error {
	name := filepath.Join(c.binDir, bin)
	if c.asUser != "" {
		name, args = "runuser", append([]string{"-u", c.asUser, "--", name}, args...)
	}
	if c.options.Host != nil {
		// The server pg_ctl starts inherits the namespace.
		name, args = c.options.Host.Wrap(name, args)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// pg_ctl's server must not die with our process group on Ctrl-C: the
	// launcher stops it explicitly.
	cmd.SysProcAttr = detached()
	cmd.Dir = c.Dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", bin, err, strings.TrimSpace(string(out)))
	}
	return nil
}
