// Package harness runs integration tests against real processes. Building
// the binaries and starting deployments is testsupport/testenv's (shared
// with the orchestrator's saga tests); this package keeps the names the
// integration tests use, and the OTLP receiver only they need.
package harness

import (
	"testing"
	"time"

	"google.golang.org/grpc"

	"storagecp.dev/testsupport/stack"
	"storagecp.dev/testsupport/testenv"
)

// Main builds the binaries, runs the tests, removes the binaries.
func Main(m *testing.M) { testenv.Main(m) }

// BinDir is the directory holding the built binaries.
func BinDir(t testing.TB) string {
	t.Helper()
	return testenv.BinDir(t)
}

// Start brings a deployment up for one test and tears it down at the end.
// Unset fields of cfg get test defaults: built binaries, a throwaway
// cluster, free ports, dev RPCs on, two sim-upstairs.
func Start(t testing.TB, cfg stack.Config) *stack.Stack {
	t.Helper()
	return testenv.Start(t, cfg)
}

// Dial connects to a process of st as the test harness, closing the
// connection at the end of the test.
func Dial(t testing.TB, st *stack.Stack, addr string, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	return testenv.Dial(t, st, addr, opts...)
}

// Eventually polls cond until it returns nil or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	testenv.Eventually(t, timeout, what, cond)
}

// EventuallyEvery is Eventually polling every `every`.
func EventuallyEvery(t testing.TB, timeout, every time.Duration, what string, cond func() error) {
	t.Helper()
	testenv.EventuallyEvery(t, timeout, every, what, cond)
}
