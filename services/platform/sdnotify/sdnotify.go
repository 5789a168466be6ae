// Package sdnotify tells systemd how a service is doing (sd_notify(3)):
// one datagram of NAME=VALUE lines to the socket named by $NOTIFY_SOCKET,
// which systemd sets for a unit of Type=notify. Without it every call is
// a no-op, so a process started any other way is unaffected.
package sdnotify

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// Socket is the environment variable naming systemd's notification socket.
const Socket = "NOTIFY_SOCKET"

// Notify sends the given NAME=VALUE assignments in one datagram. It
// returns nil without sending anything when $NOTIFY_SOCKET is unset.
func Notify(assignments ...string) error {
	path := os.Getenv(Socket)
	if path == "" {
		return nil
	}
	// "@name" is a socket in the abstract namespace: Go spells it "@name"
	// too, and turns the "@" into the leading NUL.
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(assignments, "\n") + "\n")); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}

// Ready says start-up is complete (READY=1) with a status line.
func Ready(status string) error { return Notify("READY=1", "STATUS="+status) }

// Stopping says the service is shutting down (STOPPING=1) with a status line.
func Stopping(status string) error { return Notify("STOPPING=1", "STATUS="+status) }

// Status updates the status line systemctl status shows.
func Status(status string) error { return Notify("STATUS=" + status) }
