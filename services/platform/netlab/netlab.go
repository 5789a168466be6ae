// Package netlab builds a rack's network on one machine with nothing but
// iproute2: a bridge in this network namespace, and hosts, each a network
// namespace of its own joined to the bridge by a veth pair.
//
//	this namespace: bridge P.K.1 ── launcher, tests, fault proxies
//	      │                  │
//	 veth (host 1)      veth (host 2)   …
//	      │                  │
//	netns P.K.11         netns P.K.12
//
// A host reaches the bridge's address and every other host; processes in
// it are started through Host.Wrap. Links fail the way a rack's do:
// Cut takes a host's link down (it reaches nobody, nobody reaches it) and
// Heal brings it back, while the host's processes run on. Finer faults
// (latency, a one-way blackhole, lost answers) belong to a proxy on the
// link, which the bridge's address is there to carry.
//
// Test and launcher support only (the platform/pgformation and
// testsupport/stack deployments); it needs root.
package netlab

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
)

// Network is a bridge on prefix.K.0/24, K the first subnet free on this
// machine, so that deployments side by side (tests of several packages at
// once) each get their own.
type Network struct {
	// Prefix is the first two octets, e.g. "10.201".
	Prefix string
	// K is the third octet.
	K      int
	bridge string
}

// New creates the bridge. name is a short tag (at most 6 characters) for
// the bridge and the links, distinct per kind of deployment: the bridge is
// name+K, so two kinds never contend for one name.
func New(ctx context.Context, prefix, name string) (*Network, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("netlab: network namespaces need root")
	}
	used, err := usedSubnets(prefix)
	if err != nil {
		return nil, err
	}
	for tries, k := 0, os.Getpid()%250; tries < 250; tries, k = tries+1, (k+1)%250 {
		if used[k] || k == 0 {
			continue
		}
		nw := &Network{Prefix: prefix, K: k, bridge: fmt.Sprintf("%s%d", name, k)}
		if err := IP(ctx, "link", "add", nw.bridge, "type", "bridge"); err != nil {
			if strings.Contains(err.Error(), "File exists") {
				continue
			}
			return nil, err
		}
		if err := IP(ctx, "addr", "add", nw.Gateway()+"/24", "dev", nw.bridge); err != nil {
			nw.Close()
			if strings.Contains(err.Error(), "File exists") {
				continue
			}
			return nil, err
		}
		if err := IP(ctx, "link", "set", nw.bridge, "up"); err != nil {
			nw.Close()
			return nil, err
		}
		return nw, nil
	}
	return nil, fmt.Errorf("netlab: no free subnet %s.K.0/24", prefix)
}

// usedSubnets lists the K of every prefix.K.x address on this machine.
func usedSubnets(prefix string) (map[int]bool, error) {
	ifaces, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	used := map[int]bool{}
	for _, a := range ifaces {
		var k int
		if n, _ := fmt.Sscanf(a.String(), prefix+".%d.", &k); n == 1 {
			used[k] = true
		}
	}
	return used, nil
}

// Gateway is the bridge's own address: this namespace's on the network.
func (nw *Network) Gateway() string { return fmt.Sprintf("%s.%d.1", nw.Prefix, nw.K) }

// Address is host number i's address (i from 2 to 254).
func (nw *Network) Address(i int) string { return fmt.Sprintf("%s.%d.%d", nw.Prefix, nw.K, i) }

// CIDR is the network's subnet.
func (nw *Network) CIDR() string { return fmt.Sprintf("%s.%d.0/24", nw.Prefix, nw.K) }

// Host is one network namespace on the bridge.
type Host struct {
	// Netns is the namespace's name (ip netns).
	Netns string
	// Addr is its address on the bridge.
	Addr string
	// veth is its link's end on the bridge side.
	veth string
}

// AddHost creates host number i (2–254): namespace <bridge>-<label>, with
// address Address(i). A namespace of that name left by a crashed run is
// replaced.
func (nw *Network) AddHost(ctx context.Context, i int, label string) (*Host, error) {
	if i < 2 || i > 254 {
		return nil, fmt.Errorf("netlab: host number %d out of 2–254", i)
	}
	h := &Host{Netns: nw.bridge + "-" + label, Addr: nw.Address(i), veth: fmt.Sprintf("%s-%d", nw.bridge, i)}
	if len(h.veth)+1 > 15 {
		return nil, fmt.Errorf("netlab: link name %sp longer than 15 bytes", h.veth)
	}
	peer := h.veth + "p"
	_ = IP(ctx, "netns", "del", h.Netns)
	_ = IP(ctx, "link", "del", h.veth)
	steps := [][]string{
		{"netns", "add", h.Netns},
		{"link", "add", h.veth, "type", "veth", "peer", "name", peer},
		{"link", "set", peer, "netns", h.Netns},
		{"link", "set", h.veth, "master", nw.bridge},
		{"link", "set", h.veth, "up"},
		{"-n", h.Netns, "addr", "add", h.Addr + "/24", "dev", peer},
		{"-n", h.Netns, "link", "set", peer, "up"},
		{"-n", h.Netns, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if err := IP(ctx, s...); err != nil {
			h.Remove()
			return nil, err
		}
	}
	return h, nil
}

// Wrap turns a command line into the one that runs it inside the host.
// ip netns exec replaces itself with the program, so the process started
// is the program's.
func (h *Host) Wrap(name string, args []string) (string, []string) {
	return "ip", append([]string{"netns", "exec", h.Netns, name}, args...)
}

// Cut takes the host's link down: it reaches nobody and nobody reaches it.
func (h *Host) Cut(ctx context.Context) error { return IP(ctx, "link", "set", h.veth, "down") }

// Heal brings a cut link back.
func (h *Host) Heal(ctx context.Context) error { return IP(ctx, "link", "set", h.veth, "up") }

// Remove deletes the host's link and namespace (its processes should be
// gone first).
func (h *Host) Remove() {
	ctx := context.Background()
	_ = IP(ctx, "link", "del", h.veth)
	_ = IP(ctx, "netns", "del", h.Netns)
}

// Close deletes the bridge.
func (nw *Network) Close() { _ = IP(context.Background(), "link", "del", nw.bridge) }

// IP runs ip(8) with args.
func IP(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
