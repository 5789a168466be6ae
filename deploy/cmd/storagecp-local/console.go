package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/storctl/demo"
	"storagecp.dev/testsupport/stack"
)

// The console's own identities: it reads as a viewer and acts as an
// operator, each a name of its own so that the services' audit lines say
// that an action came from the console rather than from someone's storctl.
const (
	ConsoleViewerID   = mtls.Viewers + "/console"
	ConsoleOperatorID = mtls.Operators + "/console"
)

// consoleAddr is where `make run` serves the console; with free ports the
// console picks one.
const consoleAddr = "127.0.0.1:7180"

// startConsole runs `storctl console` against the stack and returns its
// URL and a stop function (which waits for it to exit); the process also
// ends with ctx. Its log (warnings, refused calls) goes to
// console.log beside the services' logs.
func startConsole(ctx context.Context, st *stack.Stack, binDir string, freePorts bool) (url string, stop func(), err error) {
	listen := consoleAddr
	if freePorts {
		listen = "127.0.0.1:0"
	}
	args := []string{"console", "--listen", listen,
		"--volume", st.Addr(stack.Volume), "--allocator", st.Addr(stack.Allocator),
		"--notifier", st.Addr(stack.Notifier), "--orchestrator", st.Addr(stack.Orchestrator)}
	if st.Secure() {
		viewer, err := st.Identity(ConsoleViewerID)
		if err != nil {
			return "", nil, fmt.Errorf("console viewer identity: %w", err)
		}
		operator, err := st.Identity(ConsoleOperatorID)
		if err != nil {
			return "", nil, fmt.Errorf("console operator identity: %w", err)
		}
		args = append(args, "--ca", st.CA().BundlePath(), "--cert", viewer.Cert, "--key", viewer.Key,
			"--actions-cert", operator.Cert, "--actions-key", operator.Key)
	} else {
		args = append(args, "--insecure")
	}
	if u := st.JaegerURL(); u != "" {
		args = append(args, "--jaeger-url", u)
	}
	logPath := filepath.Join(st.LogDir, "console.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return "", nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "storctl"), args...)
	cmd.Stderr = logf
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 3 * time.Second
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		logf.Close()
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		cancel()
		logf.Close()
		return "", nil, fmt.Errorf("console: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	stop = func() { cancel(); <-exited }
	// The first line names the URL ("console: http://ADDR/ (…)").
	r := bufio.NewReader(out)
	line, err := r.ReadString('\n')
	go func() { _, _ = r.WriteTo(logf) }()
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("console did not start (log %s): %w", demo.ShortPath(logPath), err)
	}
	f := strings.Fields(line)
	if len(f) < 2 || !strings.HasPrefix(f[1], "http://") {
		stop()
		return "", nil, errors.New("console: unexpected first line: " + line)
	}
	return f[1], stop, nil
}
