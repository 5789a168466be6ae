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
	runDir := filepath.Join(dir, "run")
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
	launcher := filepath.Join(binDir, "storagecp-local")
	build := exec.Command("go", "build", "-o", launcher, "./deploy/cmd/storagecp-local")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build storagecp-local: %v\n%s", err, out)
	}

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
		for _, want := range []string{"Security: mutual TLS", "operator/local", "viewer/local", "-cacert " + filepath.Join(runDir, "pki", "bundle.pem")} {
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
