// Package testenv runs tests against real processes: it builds the binaries
// once per test binary and starts deployments through testsupport/stack,
// dumping every process's log tail when a test fails. The integration
// harness and the orchestrator's saga tests (its internal/testenv) both
// start their processes here; it lives in its own module so that no
// service module needs the launcher's module to build its binaries.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"storagecp.dev/testsupport/stack"
)

// binDir is where Main built the binaries for this test binary. Set once by
// Main before any test runs; TestMain offers no other way to pass it.
var binDir string

// Main builds the binaries, runs the tests, removes the binaries.
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
	if err := stack.Build(ctx, root, dir); err != nil {
		fmt.Fprintln(os.Stderr, "testenv:", err)
		return 1
	}
	binDir = dir
	return m.Run()
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
	for attempt := 1; attempt <= 3; attempt++ {
		if st, err = stack.Start(ctx, cfg); err == nil {
			break
		}
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
	})
	return st
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
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
