package pgformation

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"storagecp.dev/platform/netlab"
)

// With Options.Isolated each data node runs in a network namespace of its
// own on a bridge (platform/netlab) in this namespace, where the monitor
// and every client stay:
//
//	this namespace: bridge 10.201.K.1 ── monitor, services, tests
//	      │                    │
//	netns node1 10.201.K.11   netns node2 10.201.K.12
//
// Nothing else changes: the nodes listen on their own address and
// register it with the monitor, which hands it to the standby for
// replication. Links can then fail the way a rack's do: Cut takes a node's
// link down (it reaches nobody, nobody reaches it). It needs root.
const subnetPrefix = "10.201"

// newNetwork creates the formation's bridge.
func newNetwork(ctx context.Context) (*netlab.Network, error) {
	return netlab.New(ctx, subnetPrefix, "scpbr")
}

// addNode creates data node i's host (from 1).
func addNode(ctx context.Context, nw *netlab.Network, i int) (*netlab.Host, error) {
	return nw.AddHost(ctx, 10+i, fmt.Sprintf("node%d", i))
}

// Cut takes a node's link down: it reaches neither the monitor, nor the
// other node, nor any client, and none of them reaches it. Its processes
// run on. Only for a formation started with Isolated.
func (f *Formation) Cut(ctx context.Context, n *Node) error {
	if n.net == nil {
		return fmt.Errorf("node %s is not isolated (Options.Isolated)", n.Name)
	}
	return n.net.Cut(ctx)
}

// Heal brings a cut node's link back.
func (f *Formation) Heal(ctx context.Context, n *Node) error {
	if n.net == nil {
		return fmt.Errorf("node %s is not isolated (Options.Isolated)", n.Name)
	}
	return n.net.Heal(ctx)
}

// WriteFromInside runs one SQL statement on node n through psql from inside
// n's network namespace, as a client on its side of a cut would, and gives
// up (killing psql, which sends no cancel) after timeout. It returns
// psql's output and whether the statement was answered at all: for tests
// that show a cut-off primary acknowledges no write.
func (f *Formation) WriteFromInside(ctx context.Context, n *Node, database, sql string, timeout time.Duration) (out string, answered bool) {
	name, args := "timeout", []string{"-s", "KILL", strconv.Itoa(max(1, int(timeout.Seconds()))), filepath.Join(f.binDir, "psql"), "-X",
		"-h", n.Host, "-p", strconv.Itoa(n.Port), "-U", "postgres", "-d", database, "-c", sql}
	if n.net != nil {
		name, args = n.net.Wrap(name, args)
	}
	raw, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	// timeout(1) with -s KILL kills itself the same way after psql; older
	// ones exit 124 or 137.
	var exit *exec.ExitError
	killed := false
	if errors.As(err, &exit) {
		switch exit.ExitCode() {
		case -1, 124, 137:
			killed = true
		}
	}
	return strings.TrimSpace(string(raw)), !killed
}
