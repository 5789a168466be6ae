package server

import (
	"context"
	"flag"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"storagecp.dev/platform/sdnotify"
)

// notifySocket stands in for systemd: a unixgram socket named by
// NOTIFY_SOCKET; next returns the next datagram.
func notifySocket(t *testing.T) (next func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv(sdnotify.Socket, path)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "test-service.toml")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// A service started from a config file, overridden by the environment and
// the command line, tells systemd when it serves and when it stops.
func TestRunConfigAndReadiness(t *testing.T) {
	t.Setenv("OTEL_SDK_DISABLED", "true")
	next := notifySocket(t)
	cfg := writeConfig(t, `
listen = "256.0.0.1:1"  # overridden by --listen
insecure = true
greeting = "from the file"
dev = false             # overridden by STORAGECP_TEST_DEV
`)
	t.Setenv("STORAGECP_TEST_CONFIG", cfg)
	t.Setenv("STORAGECP_TEST_DEV", "true")

	var greeting *string
	got := make(chan *Env, 1)
	svc := Service{
		Name:        "test-service",
		DefaultAddr: "127.0.0.1:0",
		EnvPrefix:   "STORAGECP_TEST",
		Flags:       func(fs *flag.FlagSet) { greeting = fs.String("greeting", "default", "") },
		Register: func(_ context.Context, env *Env) error {
			got <- env
			return nil
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	code := make(chan int, 1)
	go func() { code <- Run(ctx, svc, []string{"--listen", "127.0.0.1:0"}) }()

	ready := next()
	env := <-got
	if !strings.HasPrefix(ready, "READY=1\nSTATUS=serving on "+env.Addr) {
		t.Fatalf("first notification %q (serving on %s)", ready, env.Addr)
	}
	if !env.Dev || *greeting != "from the file" || !strings.HasPrefix(env.Addr, "127.0.0.1:") {
		t.Fatalf("dev %v greeting %q addr %s", env.Dev, *greeting, env.Addr)
	}
	// Serving means serving: the port accepts.
	c, err := net.Dial("tcp", env.Addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()

	cancel()
	if s := next(); !strings.HasPrefix(s, "STOPPING=1\n") {
		t.Fatalf("notification at shutdown %q", s)
	}
	if c := <-code; c != ExitOK {
		t.Fatalf("exit %d", c)
	}
}

// A file with a key no flag has stops the process before it does anything.
func TestRunRejectsUnknownKey(t *testing.T) {
	t.Setenv("OTEL_SDK_DISABLED", "true")
	cfg := writeConfig(t, "insecure = true\nlisen = \"127.0.0.1:0\"\n")
	svc := Service{
		Name: "test-service", DefaultAddr: "127.0.0.1:0", EnvPrefix: "STORAGECP_TEST",
		Register: func(context.Context, *Env) error {
			t.Error("registered despite a bad config file")
			return nil
		},
	}
	if code := Run(context.Background(), svc, []string{"--config", cfg}); code != ExitBadUsage {
		t.Fatalf("exit %d, want %d", code, ExitBadUsage)
	}
	if err := CheckConfig(svc, cfg); err == nil || !strings.Contains(err.Error(), cfg+":2: unknown key \"lisen\"") {
		t.Fatalf("CheckConfig: %v", err)
	}
}
