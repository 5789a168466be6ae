package stack

// Hosts mode (Config.Hosts): a rack's network instead of one loopback.
//
// Every process runs on a host of its own, a network namespace on a bridge
// (platform/netlab): each service, each orchestrator, the simulated agents,
// each sim-upstairs, and the database (each data node under HA, on the
// formation's own bridge). Processes listen on their host's address, on the
// default ports (7101 …), as they would on separate machines.
//
// No process reaches another directly. Every link, one per (client,
// server) pair, is a TCP proxy of its own (Shopify's toxiproxy, run in the
// launcher's process) listening on the bridge's address: the orchestrator
// is given the volume-service's address as the proxy of the link
// "replacement-orchestrator>volume-service", and so on, and a service's
// database connection string names the proxy of "volume-service>postgres".
// A test then breaks exactly one link (latency, a blackhole, a lost
// answer) with Link, or a whole host with Host(…).Cut. The launcher and
// the tests talk to every process directly, from the bridge's side: they
// play the operator and the user, whose links are not under test.
//
//	                        bridge 10.202.K.1: launcher, tests, link proxies
//	  ┌──────────────┬──────────────┬───────────┴──┬───────────────┐
//	volume .10   allocator .11   notifier .12   orchestrator .20, .21 …
//	postgres .2  sim-agent .13   sim-upstairs .40 …
//
// The gRPC traffic on the links is mutual TLS end to end: a proxy carries
// bytes, and identities are SPIFFE IDs, not addresses, so no certificate
// names a proxy.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/rs/zerolog"

	"storagecp.dev/platform/netlab"
)

// Postgres is the database's host name in hosts mode (a single cluster);
// under HA the data nodes are "postgres-node1", "postgres-node2" and the
// monitor "postgres-monitor".
const Postgres = "postgres"

// hostsSubnet is the first two octets of hosts mode's bridges.
const hostsSubnet = "10.202"

// hostNumbers places each process on the bridge.
func hostNumber(proc string) int {
	kind, n := KindOf(proc)
	base := map[string]int{Postgres: 2, Volume: 10, Allocator: 11, Notifier: 12, SimAgent: 13, Orchestrator: 20, SimUpstairs: 40}[kind]
	if base == 0 {
		return 0
	}
	return base + n
}

// hostsNet is a hosts-mode deployment's network.
type hostsNet struct {
	nw    *netlab.Network
	tox   *toxiproxy.ApiServer
	toxLo *os.File

	mu       sync.Mutex
	hosts    map[string]*netlab.Host
	links    map[string]*Link
	nextPort int
}

func newHostsNet(ctx context.Context, logDir string) (*hostsNet, error) {
	nw, err := netlab.New(ctx, hostsSubnet, "scph")
	if err != nil {
		return nil, fmt.Errorf("hosts mode: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(logDir, "toxiproxy.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		nw.Close()
		return nil, err
	}
	logger := zerolog.New(logf).With().Timestamp().Logger().Level(zerolog.InfoLevel)
	return &hostsNet{
		nw:       nw,
		tox:      toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), logger),
		toxLo:    logf,
		hosts:    map[string]*netlab.Host{},
		links:    map[string]*Link{},
		nextPort: 20000,
	}, nil
}

// host returns (creating on first use) a process's host.
func (hn *hostsNet) host(ctx context.Context, proc string) (*netlab.Host, error) {
	hn.mu.Lock()
	defer hn.mu.Unlock()
	if h := hn.hosts[proc]; h != nil {
		return h, nil
	}
	n := hostNumber(proc)
	if n == 0 {
		return nil, fmt.Errorf("hosts mode: no place for %s", proc)
	}
	h, err := hn.nw.AddHost(ctx, n, strconv.Itoa(n))
	if err != nil {
		return nil, err
	}
	hn.hosts[proc] = h
	return h, nil
}

// link returns (creating on first use) the proxy carrying client's
// connections to server at upstream.
func (hn *hostsNet) link(client, server, upstream string) (*Link, error) {
	hn.mu.Lock()
	defer hn.mu.Unlock()
	name := client + ">" + server
	if l := hn.links[name]; l != nil {
		if l.Upstream != upstream {
			return nil, fmt.Errorf("hosts mode: link %s already leads to %s, not %s", name, l.Upstream, upstream)
		}
		return l, nil
	}
	listen := net.JoinHostPort(hn.nw.Gateway(), strconv.Itoa(hn.nextPort))
	hn.nextPort++
	p := toxiproxy.NewProxy(hn.tox, name, listen, upstream)
	if err := hn.tox.Collection.Add(p, true); err != nil {
		return nil, fmt.Errorf("hosts mode: link %s: %w", name, err)
	}
	l := &Link{Client: client, Server: server, Listen: listen, Upstream: upstream, proxy: p}
	hn.links[name] = l
	return l, nil
}

// dsn rewrites a postgres:// URL so that client reaches every server it
// names through a link of its own (the host and port parameters, a
// multi-host authority, or a single one). server names the far end of
// each link by its address.
func (hn *hostsNet) dsn(client, dsn string, server func(addr string) string) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("hosts mode: %s's connection string: %w", client, err)
	}
	var upstreams []string
	if u.Host != "" {
		upstreams = strings.Split(u.Host, ",")
	} else {
		q := u.Query()
		hs, ports := strings.Split(q.Get("host"), ","), strings.Split(q.Get("port"), ",")
		for i, h := range hs {
			if strings.HasPrefix(h, "/") || h == "" {
				return "", fmt.Errorf("hosts mode: %s's database is not on the network (%s)", client, u.Redacted())
			}
			upstreams = append(upstreams, net.JoinHostPort(h, ports[min(i, len(ports)-1)]))
		}
	}
	var listens []string
	for _, up := range upstreams {
		l, err := hn.link(client, server(up), up)
		if err != nil {
			return "", err
		}
		listens = append(listens, l.Listen)
	}
	q := u.Query()
	q.Del("host")
	q.Del("port")
	u.RawQuery = q.Encode()
	u.Host = strings.Join(listens, ",")
	return u.String(), nil
}

func (hn *hostsNet) close() {
	hn.tox.Collection.Clear()
	hn.mu.Lock()
	hosts := hn.hosts
	hn.hosts = nil
	hn.mu.Unlock()
	for _, h := range hosts {
		h.Remove()
	}
	hn.nw.Close()
	hn.toxLo.Close()
}

// Link is the proxy on one link of a hosts-mode deployment: every
// connection Client opens to Server goes through it, so a fault put on it
// affects that pair alone.
type Link struct {
	Client, Server string
	// Listen is the address Client is given for Server; Upstream is
	// Server's own.
	Listen, Upstream string
	proxy            *toxiproxy.Proxy
}

// Name is "client>server", the proxy's name in toxiproxy.log.
func (l *Link) Name() string { return l.Client + ">" + l.Server }

// Direction of a toxic on a link, as toxiproxy has it.
type Direction string

const (
	// Upstream is what the client sends: requests.
	Upstream Direction = "upstream"
	// Downstream is what the server sends back: answers.
	Downstream Direction = "downstream"
)

// Toxic is one of toxiproxy's faults on a link: Type is latency,
// bandwidth, slow_close, timeout, reset_peer, slicer or limit_data, with
// its Attributes (latency and jitter in ms; timeout in ms, 0 for forever),
// on one Direction, affecting a Toxicity share of connections (0 means
// all).
type Toxic struct {
	Name       string
	Type       string
	Stream     Direction
	Toxicity   float32
	Attributes map[string]any
}

// Add puts a toxic on the link; it applies to connections open now and
// to later ones until Remove.
func (l *Link) Add(t Toxic) error {
	if t.Toxicity == 0 {
		t.Toxicity = 1
	}
	body, err := json.Marshal(map[string]any{
		"name": t.Name, "type": t.Type, "stream": string(t.Stream), "toxicity": t.Toxicity, "attributes": t.Attributes,
	})
	if err != nil {
		return err
	}
	if _, err := l.proxy.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		return fmt.Errorf("link %s: toxic %s: %w", l.Name(), t.Name, err)
	}
	return nil
}

// Remove takes a toxic off the link.
func (l *Link) Remove(name string) error {
	if err := l.proxy.Toxics.RemoveToxic(context.Background(), name); err != nil {
		return fmt.Errorf("link %s: remove %s: %w", l.Name(), name, err)
	}
	return nil
}

// Clear takes every toxic off the link.
func (l *Link) Clear() { l.proxy.Toxics.ResetToxics(context.Background()) }

// Blackhole drops everything sent one way on the link (both ways: call it
// twice), holding connections open, as a partition does: new connections
// are accepted and then hear nothing. Clear or Remove("blackhole-<dir>")
// heals it.
func (l *Link) Blackhole(d Direction) error {
	return l.Add(Toxic{Name: "blackhole-" + string(d), Type: "timeout", Stream: d, Attributes: map[string]any{"timeout": 0}})
}

// Partition blackholes the link both ways: neither side hears the other
// until Clear.
func (l *Link) Partition() error {
	for _, d := range []Direction{Upstream, Downstream} {
		if err := l.Blackhole(d); err != nil {
			return err
		}
	}
	return nil
}

// Hosts reports whether the stack runs in hosts mode.
func (s *Stack) Hosts() bool { return s.net != nil }

// Host is a process's host in hosts mode (nil otherwise): Cut and Heal
// take its whole link to the bridge down and up.
func (s *Stack) Host(proc string) *netlab.Host {
	if s.net == nil {
		return nil
	}
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	return s.net.hosts[proc]
}

// Link is the link from client to server in hosts mode (nil otherwise, or
// when client never connects to server).
func (s *Stack) Link(client, server string) *Link {
	if s.net == nil {
		return nil
	}
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	return s.net.links[client+">"+server]
}

// Links lists every link, by name, optionally only those whose client or
// server is one of procs.
func (s *Stack) Links(procs ...string) []*Link {
	if s.net == nil {
		return nil
	}
	s.net.mu.Lock()
	defer s.net.mu.Unlock()
	var out []*Link
	for _, l := range s.net.links {
		keep := len(procs) == 0
		for _, p := range procs {
			if l.Client == p || l.Server == p {
				keep = true
			}
		}
		if keep {
			out = append(out, l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// ServeLinksAPI serves toxiproxy's own HTTP API for the links on addr
// (host:port), so that an operator at `make run HOSTS=1` can break links
// with curl or toxiproxy-cli. It serves until the process exits.
func (s *Stack) ServeLinksAPI(addr string) error {
	if s.net == nil {
		return fmt.Errorf("no links: not in hosts mode")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("links API address %q: %w", addr, err)
	}
	// Listen exits the process when it cannot bind: check first.
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("links API: %w", err)
	}
	l.Close()
	go s.net.tox.Listen(host, port)
	return nil
}
