package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// DialContext opens a connection from inside the host's namespace, as a
// process on the host would: to what only the host reaches, such as a
// port bound to its loopback (a process's metrics). The socket is made on
// a thread switched into the namespace and back; the connection then
// works from anywhere.
func (h *Host) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	target, err := os.Open("/run/netns/" + h.Netns)
	if err != nil {
		return nil, fmt.Errorf("netlab: host %s: %w", h.Netns, err)
	}
	defer target.Close()
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		// The thread stays locked (and so is thrown away with this
		// goroutine) unless it is back in its own namespace.
		runtime.LockOSThread()
		self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			done <- result{err: err}
			return
		}
		defer self.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("netlab: enter %s: %w", h.Netns, err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		done <- result{c, err}
	}()
	r := <-done
	return r.conn, r.err
}
