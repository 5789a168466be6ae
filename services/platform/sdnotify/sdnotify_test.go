package sdnotify

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// Listen makes a notification socket as systemd does and points
// $NOTIFY_SOCKET at it; the returned func reads the next datagram.
func Listen(t *testing.T) (next func() string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv(Socket, path)
	return func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
}

func TestNotify(t *testing.T) {
	next := Listen(t)
	if err := Ready("serving on 127.0.0.1:7101"); err != nil {
		t.Fatal(err)
	}
	if got, want := next(), "READY=1\nSTATUS=serving on 127.0.0.1:7101\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if err := Stopping("draining"); err != nil {
		t.Fatal(err)
	}
	if got, want := next(), "STOPPING=1\nSTATUS=draining\n"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestAbstractSocket(t *testing.T) {
	name := "@storagecp-sdnotify-test-" + time.Now().Format("150405.000000000")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Setenv(Socket, name)
	if err := Status("migrating"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || string(buf[:n]) != "STATUS=migrating\n" {
		t.Fatalf("read %q, %v", buf[:n], err)
	}
}

func TestNoSocketIsNoOp(t *testing.T) {
	t.Setenv(Socket, "")
	if err := Ready("x"); err != nil {
		t.Fatal(err)
	}
}

func TestMissingSocketIsAnError(t *testing.T) {
	t.Setenv(Socket, filepath.Join(t.TempDir(), "gone.sock"))
	if err := Ready("x"); err == nil {
		t.Fatal("no error for a socket that does not exist")
	}
}
