// Package testenv runs tests against real processes: it builds the binaries
// once per test binary (linking them once per checkout, see Main) and
// starts deployments through testsupport/stack, dumping every process's
// log tail when a test fails. The integration
// harness and the orchestrator's saga tests (its internal/testenv) both
// start their processes here; it lives in its own module so that no
// service module needs the launcher's module to build its binaries.
package testenv

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"

	"storagecp.dev/platform/pgcluster"
	"storagecp.dev/testsupport/stack"
)

// binDir is where Main built the binaries for this test binary, and
// pgTemplate an initialised PostgreSQL cluster directory (stopped) that
// Start copies for each deployment ("" to let each run initdb). Set once
// by Main before any test runs; TestMain offers no other way to pass them.
var binDir, pgTemplate string

// Main builds the binaries, runs the tests, removes the binaries.
//
// The binaries are linked into one directory per checkout, .run/testbin,
// under a file lock, and hard-linked from there into a directory of the
// test binary's own. `go test` runs many test binaries that all need the
// same seven binaries, and linking them costs some 20 s of CPU each time;
// `go build -o` relinks only what changed since the last build, so every
// test binary after the first pays about a second. Each still gets
// exactly what its sources build now, and its own links keep its files
// even if a later build (after an edit) replaces the shared ones.
func Main(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := stack.FindRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	dir, err := os.MkdirTemp("", "storagecp-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The template cluster is made while the binaries build.
	var tmpl string
	var tmplErr error
	made := make(chan struct{})
	go func() {
		defer close(made)
		tmpl, tmplErr = makePGTemplate(ctx)
	}()
	buildErr := buildShared(ctx, root, dir)
	<-made
	if tmpl != "" {
		defer os.RemoveAll(tmpl)
	}
	if buildErr != nil {
		fmt.Fprintln(os.Stderr, "testenv:", buildErr)
		return 1
	}
	if tmplErr != nil {
		// Each deployment then runs initdb itself, and says why it fails.
		fmt.Fprintln(os.Stderr, "testenv: no template cluster, every deployment runs initdb:", tmplErr)
	}
	binDir, pgTemplate = dir, tmpl
	return m.Run()
}

// makePGTemplate initialises a cluster (platform/pgcluster, as a
// deployment's own would be) and stops it, for Start to copy: a copy of
// its 40 MB costs a fraction of initdb's second of CPU, and every test
// starts a deployment or several.
func makePGTemplate(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp("/tmp", "scpg-tmpl")
	if err != nil {
		return "", err
	}
	c, err := pgcluster.Start(ctx, pgcluster.Options{Dir: dir})
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	err = c.Stop(ctx)
	os.Remove(c.SocketDir())
	if err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// copyPGTemplate makes a cluster directory for one deployment from
// pgTemplate: under /tmp, as pgcluster's own (the postgres user reaches
// it, and the path stays short), with the data directory copied as it is
// (cp -a keeps its owner and modes, which PostgreSQL checks).
func copyPGTemplate() (string, error) {
	dir, err := os.MkdirTemp("/tmp", "scpg")
	if err != nil {
		return "", err
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(pgTemplate, "data"), dir).CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("copy the template cluster: %w: %s", err, out)
	}
	return dir, nil
}

// buildShared builds the binaries into root/.run/testbin, holding its
// lock (other test binaries build there too), and links them into dir.
func buildShared(ctx context.Context, root, dir string) error {
	shared := filepath.Join(root, ".run", "testbin")
	if err := os.MkdirAll(shared, 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(filepath.Join(shared, ".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close() // closing releases the lock
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", shared, err)
	}
	if err := stack.Build(ctx, root, shared); err != nil {
		return err
	}
	entries, err := os.ReadDir(shared)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() || e.Name() == ".lock" {
			continue
		}
		if err := linkOrCopy(filepath.Join(shared, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// linkOrCopy hard-links src to dst, or copies it where a link cannot be
// made (another file system). go build replaces a binary by a new file,
// never rewriting it in place, so a link keeps the version it was made to.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// BinDir is the directory holding the built binaries.
func BinDir(t testing.TB) string {
	t.Helper()
	if binDir == "" {
		t.Fatal("testenv: call testenv.Main (or harness.Main) from TestMain")
	}
	return binDir
}

// Start brings a deployment up for one test and tears it down at the end.
// Unset fields of cfg get test defaults: built binaries, a throwaway
// cluster, free ports, dev RPCs on, two sim-upstairs (cfg.Only can leave
// them out).
func Start(t testing.TB, cfg stack.Config) *stack.Stack {
	t.Helper()
	if cfg.BinDir == "" {
		cfg.BinDir = BinDir(t)
	}
	if cfg.SimUpstairs == 0 {
		cfg.SimUpstairs = 2
	}
	cfg.Dev = true
	cfg.TestHarness = true
	if cfg.LogDir == "" {
		cfg.LogDir = filepath.Join(t.TempDir(), "logs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// Free ports are picked, released, then bound by the child process; an
	// outgoing connection can take one in between (both come from the
	// ephemeral range), and the child exits. Another set of ports is the
	// cure; three attempts make it vanishingly rare.
	var st *stack.Stack
	var err error
	// Unless the test asked for a cluster of its own kind, each attempt
	// gets a fresh copy of the template cluster (a failed one may have
	// created databases in its copy), removed once the stack has stopped.
	var pgDir string
	copyTemplate := pgTemplate != "" && !cfg.HA && cfg.PGDir == ""
	for attempt := 1; attempt <= 3; attempt++ {
		c := cfg
		if copyTemplate {
			if pgDir, err = copyPGTemplate(); err != nil {
				t.Fatalf("start stack: %v", err)
			}
			c.PGDir = pgDir
		}
		if st, err = stack.Start(ctx, c); err == nil {
			break
		}
		removePGDir(pgDir)
		t.Logf("start stack (attempt %d of 3): %v", attempt, err)
	}
	if err != nil {
		t.Fatalf("start stack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range st.Procs() {
				state := "running"
				if exited, err := p.Exited(); exited {
					state = fmt.Sprintf("EXITED (%v)", err)
				}
				t.Logf("---- %s, %s (last lines of %s)\n%s", p.Name, state, p.LogPath(), p.LogTail(30))
			}
		}
		st.Stop()
		if copyTemplate {
			os.Remove(st.Cluster.SocketDir())
			removePGDir(pgDir)
		}
	})
	return st
}

// removePGDir removes a copy of the template cluster ("" is none).
func removePGDir(dir string) {
	if dir != "" {
		os.RemoveAll(dir)
	}
}

// Dial connects to a process of the stack as the test harness (an identity
// the stack's policy lets call everything), closing the connection at the
// end of the test.
func Dial(t testing.TB, st *stack.Stack, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{st.DialOption()}, opts...)...)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Eventually polls cond until it returns nil or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	EventuallyEvery(t, timeout, 50*time.Millisecond, what, cond)
}

// EventuallyEvery is Eventually polling every `every`: for a condition
// whose check is itself load worth keeping down.
func EventuallyEvery(t testing.TB, timeout, every time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(every)
	}
}
