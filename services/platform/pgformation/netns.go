package pgformation

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// network puts each data node in a network namespace of its own, joined to
// a bridge in this namespace, where the monitor and every client stay:
//
//	this namespace: bridge 10.201.K.1 ── monitor, services, tests
//	      │                    │
//	 veth scpK-n1          veth scpK-n2
//	      │                    │
//	netns node1 10.201.K.11   netns node2 10.201.K.12
//
// Nothing else changes: the nodes listen on their own address and
// register it with the monitor, which hands it to the standby for
// replication. Links can then fail the way a rack's do, with nothing but
// iproute2: Cut takes a node's link down (it reaches nobody, nobody
// reaches it). It needs root.
type network struct {
	bridge string
	subnet int // K above
}

// nodeNet is one node's place on the network.
type nodeNet struct {
	netns string // its namespace
	veth  string // its link's end on the bridge
}

const subnetPrefix = "10.201"

// newNetwork creates the bridge on the first free 10.201.K.0/24.
func newNetwork(ctx context.Context) (*network, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("an isolated formation needs root (network namespaces)")
	}
	used, err := usedSubnets()
	if err != nil {
		return nil, err
	}
	for k := os.Getpid() % 250; ; k = (k + 1) % 250 {
		if used[k] {
			continue
		}
		nw := &network{bridge: fmt.Sprintf("scpbr%d", k), subnet: k}
		if err := ip(ctx, "link", "add", nw.bridge, "type", "bridge"); err != nil {
			if strings.Contains(err.Error(), "File exists") {
				used[k] = true
				continue
			}
			return nil, err
		}
		if err := ip(ctx, "addr", "add", nw.gateway()+"/24", "dev", nw.bridge); err != nil {
			nw.close()
			return nil, err
		}
		if err := ip(ctx, "link", "set", nw.bridge, "up"); err != nil {
			nw.close()
			return nil, err
		}
		return nw, nil
	}
}

// usedSubnets lists the K of every 10.201.K.x address on this machine.
func usedSubnets() (map[int]bool, error) {
	ifaces, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	used := map[int]bool{}
	for _, a := range ifaces {
		var k int
		if n, _ := fmt.Sscanf(a.String(), subnetPrefix+".%d.", &k); n == 1 {
			used[k] = true
		}
	}
	return used, nil
}

// gateway is the bridge's address: the monitor's and every client's.
func (nw *network) gateway() string { return fmt.Sprintf("%s.%d.1", subnetPrefix, nw.subnet) }

// address is data node i's (from 1).
func (nw *network) address(i int) string {
	return fmt.Sprintf("%s.%d.%d", subnetPrefix, nw.subnet, 10+i)
}

// addNode creates node i's namespace and its link to the bridge.
func (nw *network) addNode(ctx context.Context, i int) (*nodeNet, error) {
	nn := &nodeNet{netns: fmt.Sprintf("scp%d-node%d", nw.subnet, i), veth: fmt.Sprintf("scp%d-n%d", nw.subnet, i)}
	peer := nn.veth + "p"
	_ = ip(ctx, "netns", "del", nn.netns) // left by a crashed run
	steps := [][]string{
		{"netns", "add", nn.netns},
		{"link", "add", nn.veth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", nn.netns},
		{"link", "set", nn.veth, "master", nw.bridge},
		{"link", "set", nn.veth, "up"},
		{"-n", nn.netns, "addr", "add", nw.address(i) + "/24", "dev", peer},
		{"-n", nn.netns, "link", "set", peer, "up"},
		{"-n", nn.netns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := ip(ctx, s...); err != nil {
			return nil, err
		}
	}
	return nn, nil
}

// close removes the namespaces' links with the bridge; the namespaces go
// with their nodes (removeNode).
func (nw *network) close() {
	_ = ip(context.Background(), "link", "del", nw.bridge)
}

func (nn *nodeNet) remove() {
	ctx := context.Background()
	_ = ip(ctx, "link", "del", nn.veth)
	_ = ip(ctx, "netns", "del", nn.netns)
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Cut takes a node's link down: it reaches neither the monitor, nor the
// other node, nor any client, and none of them reaches it. Its processes
// run on. Only for a formation started with Isolated.
func (f *Formation) Cut(ctx context.Context, n *Node) error {
	if n.net == nil {
		return fmt.Errorf("node %s is not isolated (Options.Isolated)", n.Name)
	}
	return ip(ctx, "link", "set", n.net.veth, "down")
}

// Heal brings a cut node's link back.
func (f *Formation) Heal(ctx context.Context, n *Node) error {
	if n.net == nil {
		return fmt.Errorf("node %s is not isolated (Options.Isolated)", n.Name)
	}
	return ip(ctx, "link", "set", n.net.veth, "up")
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
		name, args = "ip", append([]string{"netns", "exec", n.net.netns, name}, args...)
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
