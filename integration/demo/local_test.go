package demo

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"storagecp.dev/integration/harness"
	"storagecp.dev/testsupport/stack"
)

// TestStoragecpLocalNonInteractive runs the real `make run` command
// (storagecp-local --non-interactive, free ports so it cannot collide with
// a parallel test package or a running make run) four times over one run
// directory, as `make run DEMO=exit` repeated without `make clean-run`:
// PostgreSQL's data is kept and the sim-upstairs restart empty. The second
// run is interrupted (Ctrl-C) once its clones exist, leaving volumes half
// attached; every other run must still end with its replacement Complete
// and exit 0.
func TestStoragecpLocalNonInteractive(t *testing.T) {
	t.Parallel()
	root, runDir, launcher := buildLauncher(t)
	elapsed := regexp.MustCompile(`demo finished: expunge → Complete in ([0-9.]+s)`)
	for i := 1; i <= 4; i++ {
		interrupt := i == 2
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		cmd := exec.CommandContext(ctx, launcher, "--run-dir", runDir, "--build=false",
			"--free-ports", "--pg-port", "0", "--non-interactive")
		cmd.Dir = root
		// On timeout, SIGTERM: the launcher then stops PostgreSQL too,
		// which a SIGKILL would leave running.
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
		cmd.WaitDelay = time.Minute
		start := time.Now()
		var out []byte
		var err error
		if interrupt {
			out, err = interrupted(cmd, "  clones ")
		} else {
			out, err = cmd.CombinedOutput()
		}
		cancel()
		t.Logf("run %d (%s):\n%s", i, time.Since(start).Round(100*time.Millisecond), out)
		if err != nil {
			t.Fatalf("run %d: storagecp-local --non-interactive: %v", i, err)
		}
		text := string(out)
		if interrupt {
			for _, want := range []string{"demo interrupted", "stopped: every process and PostgreSQL"} {
				if !strings.Contains(text, want) {
					t.Errorf("interrupted run %d: no %q", i, want)
				}
			}
			continue
		}
		wantKeyLines(t, text)
		// TLS by default, and every printed command carries it.
		for _, want := range []string{"Security: mutual TLS", "operator/local", "viewer/local", "Console (live, in a browser; reads as viewer/console, acts as operator/console): http://127.0.0.1:", "-cacert " + filepath.Join(runDir, "pki", "bundle.pem")} {
			if !strings.Contains(text, want) {
				t.Errorf("run %d: no %q", i, want)
			}
		}
		if strings.Contains(text, "-plaintext") {
			t.Errorf("run %d printed a plaintext grpcurl command", i)
		}
		m := elapsed.FindStringSubmatch(text)
		if m == nil {
			t.Fatalf("run %d: no 'demo finished' line", i)
		}
		t.Logf("run %d: expunge → Complete %s", i, m[1])
		if i > 1 && !strings.Contains(text, "(reused") {
			t.Errorf("run %d did not reuse the seeded rack", i)
		}
		if !strings.Contains(text, "stopped: every process and PostgreSQL") {
			t.Errorf("run %d did not stop cleanly", i)
		}
	}
}

// buildLauncher builds storagecp-local beside the harness's binaries in a
// fresh run directory, and returns the repository root, the run directory
// and the launcher.
func buildLauncher(t *testing.T) (root, runDir, launcher string) {
	t.Helper()
	root, err := stack.FindRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	// Under /tmp and world-traversable: as root the cluster runs as the
	// postgres user, which must reach the data directory.
	dir, err := os.MkdirTemp("/tmp", "scdemo")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	runDir = filepath.Join(dir, "run")
	binDir := filepath.Join(runDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The harness built the services once for this test binary; the
	// launcher finds them in <run-dir>/bin.
	built, err := os.ReadDir(harness.BinDir(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range built {
		if err := os.Symlink(filepath.Join(harness.BinDir(t), e.Name()), filepath.Join(binDir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	launcher = filepath.Join(binDir, "storagecp-local")
	build := exec.Command("go", "build", "-o", launcher, "./deploy/cmd/storagecp-local")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build storagecp-local: %v\n%s", err, out)
	}
	return root, runDir, launcher
}

// TestStoragecpLocalHosts runs `make run HOSTS=1 DEMO=exit`: every process
// on a host of its own, deployed through its configuration file, links
// through proxies; the demo's replacement must complete as on loopback.
func TestStoragecpLocalHosts(t *testing.T) {
	t.Parallel()
	root, runDir, launcher := buildLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, launcher, "--run-dir", runDir, "--build=false",
		"--hosts", "--links-api", "", "--pg-port", "0", "--non-interactive")
	cmd.Dir = root
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = time.Minute
	out, err := cmd.CombinedOutput()
	t.Logf("%s", out)
	if err != nil {
		t.Fatalf("storagecp-local --hosts --non-interactive: %v", err)
	}
	text := string(out)
	wantKeyLines(t, text)
	for _, want := range []string{"Hosts (each a network namespace", "replacement-orchestrator>volume-service", "demo finished: expunge → Complete", "stopped: every process and PostgreSQL"} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q", want)
		}
	}
	// Every process deployed through its configuration file, and on its
	// own host's address.
	host := regexp.MustCompile(`(?m)^  (\S+) +(10\.202\.\d+\.\d+) +netns \S+ +config (\S+)$`)
	hosts := host.FindAllStringSubmatch(text, -1)
	if len(hosts) < 7 {
		t.Fatalf("%d hosts printed, want every process's", len(hosts))
	}
	seen := map[string]bool{}
	for _, h := range hosts {
		if seen[h[2]] {
			t.Errorf("two processes on %s", h[2])
		}
		seen[h[2]] = true
		if _, err := os.Stat(filepath.Join(root, h[3])); err != nil {
			if _, err2 := os.Stat(h[3]); err2 != nil {
				t.Errorf("%s's configuration file %s: %v", h[1], h[3], err)
			}
		}
	}
}

// interrupted runs cmd and sends it SIGINT (Ctrl-C) once a line of its
// output contains mark; it returns the whole output and how cmd exited.
func interrupted(cmd *exec.Cmd, mark string) ([]byte, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		r.Close()
		w.Close()
		return nil, err
	}
	w.Close()
	var out bytes.Buffer
	sc := bufio.NewScanner(r)
	sent := false
	for sc.Scan() {
		out.WriteString(sc.Text() + "\n")
		if !sent && strings.Contains(sc.Text(), mark) {
			sent = true
			_ = cmd.Process.Signal(os.Interrupt)
		}
	}
	r.Close()
	err = cmd.Wait()
	if !sent {
		return out.Bytes(), fmt.Errorf("never printed %q (exit: %v)", mark, err)
	}
	return out.Bytes(), err
}
