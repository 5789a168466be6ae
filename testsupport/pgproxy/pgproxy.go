// Package pgproxy is a PostgreSQL wire-protocol proxy for tests that loses
// the answer to a COMMIT after the server has applied it.
//
// That is the one failure a retrying client cannot tell apart from a
// transaction that never happened: the connection breaks between COMMIT and
// its answer (a failover, a reset link, a killed proxy), the client sees an
// error, and the transaction's effects are in the database all the same.
// A caller that retries must find its own effect and answer as the first
// try would have. The proxy makes that happen on demand, at exactly that
// point, so tests can prove it.
//
// The proxy forwards the client's messages unchanged and remembers the
// statements each round trip (up to a Sync or a simple Query) carries. It
// holds the server's answer to a round trip until its ReadyForQuery, which
// says whether a transaction is still open. A round trip that leaves the
// session idle without an error or a ROLLBACK committed a transaction:
// an explicit COMMIT, or the implicit transaction of a statement or a
// pipeline sent outside one. For each such commit the policy decides; a
// lost answer is thrown away whole and both connections are closed. An
// answer can also be held for a while instead (SetDelay). It
// does not speak TLS: point it at a server with sslmode=disable.
package pgproxy

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Commit is one COMMIT through the proxy: its number (from 1), and the
// statements its transaction ran (the SQL text, as the client sent it).
type Commit struct {
	N          int64
	Statements []string
}

// Touches reports whether any of the transaction's statements contains s
// (case-insensitive).
func (c Commit) Touches(s string) bool {
	s = strings.ToLower(s)
	for _, q := range c.Statements {
		if strings.Contains(strings.ToLower(q), s) {
			return true
		}
	}
	return false
}

// Writes reports whether the transaction looks like it wrote: a statement
// mentions INSERT, UPDATE or DELETE. A heuristic on the text, enough for a
// test to spare the reads (health checks, lists) it does not mean to hit.
func (c Commit) Writes() bool {
	return c.Touches("insert ") || c.Touches("update ") || c.Touches("delete ")
}

// Policy decides whether a COMMIT's answer is lost. The proxy calls it
// from many connections at once.
type Policy func(Commit) bool

// Delay decides how long a COMMIT's answer is held after the server
// applied it (0: not at all): long enough, and the client gives up on an
// answer that would have said yes.
type Delay func(Commit) time.Duration

// Every loses the answer to every k-th COMMIT, starting with the first-th.
func Every(k, first int64) Policy {
	return func(c Commit) bool { return c.N >= first && (c.N-first)%k == 0 }
}

// Proxy listens on a loopback port and forwards to one PostgreSQL server.
type Proxy struct {
	network, upstream string
	ln                net.Listener

	policy  atomic.Pointer[Policy]
	delay   atomic.Pointer[Delay]
	commits atomic.Int64

	mu      sync.Mutex
	dropped []Commit
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
}

// Start listens on 127.0.0.1 and forwards to upstream: host:port over
// TCP, or the path of a Unix-domain socket.
func Start(upstream string) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	network := "tcp"
	if strings.HasPrefix(upstream, "/") {
		network = "unix"
	}
	p := &Proxy{network: network, upstream: upstream, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// SetPolicy replaces the policy; nil loses nothing.
func (p *Proxy) SetPolicy(pol Policy) {
	if pol == nil {
		p.policy.Store(nil)
		return
	}
	p.policy.Store(&pol)
}

// SetDelay replaces the delay; nil holds nothing.
func (p *Proxy) SetDelay(d Delay) {
	if d == nil {
		p.delay.Store(nil)
		return
	}
	p.delay.Store(&d)
}

// Commits is how many COMMITs went through the proxy.
func (p *Proxy) Commits() int64 { return p.commits.Load() }

// Dropped lists the answers lost so far.
func (p *Proxy) Dropped() []Commit {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Commit(nil), p.dropped...)
}

// Close stops listening and breaks every connection.
func (p *Proxy) Close() {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	_ = p.ln.Close()
	p.wg.Wait()
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial(p.network, p.upstream)
		if err != nil {
			_ = c.Close()
			continue
		}
		if !p.track(c, s) {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.serve(c, s)
		}()
	}
}

// track registers a connection pair, or closes it if the proxy is closing.
func (p *Proxy) track(conns ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		if p.closed {
			_ = c.Close()
			continue
		}
		p.conns[c] = struct{}{}
	}
	return !p.closed
}

func (p *Proxy) untrack(conns ...net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
		delete(p.conns, c)
	}
}

// session is one client connection and its server connection.
type session struct {
	p              *Proxy
	client, server net.Conn

	mu sync.Mutex
	// group is the statements of the round trip the client is sending;
	// sent queues those of round trips awaiting their ReadyForQuery.
	group []string
	sent  [][]string

	// Read by the frontend only: named prepared statements' text.
	prepared map[string]string
	// Read by the backend only: the open transaction's statements.
	tx []string
}

func (p *Proxy) serve(c, s net.Conn) {
	defer p.untrack(c, s)
	ss := &session{p: p, client: c, server: s, prepared: map[string]string{}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		ss.backend()
		// The server side ended: so does the client's.
		_ = c.Close()
	}()
	ss.frontend()
	_ = s.Close()
	<-done
}

// frontend forwards the client's messages, noting each round trip's
// statements.
func (ss *session) frontend() {
	r := bufio.NewReader(ss.client)
	// The startup packet has no type byte; a cancel request is the whole
	// conversation. SSL and GSS encryption requests are not supported.
	first, err := readUntyped(r)
	if err != nil || ss.write(ss.server, first) != nil {
		return
	}
	for {
		typ, msg, err := readTyped(r)
		if err != nil {
			return
		}
		ss.watch(typ, msg)
		if ss.write(ss.server, msg) != nil {
			return
		}
	}
}

// watch notes the statements a message carries, and where a round trip
// ends.
func (ss *session) watch(typ byte, msg []byte) {
	body := msg[5:]
	ss.mu.Lock()
	defer ss.mu.Unlock()
	switch typ {
	case 'Q': // a simple query: a round trip of its own
		ss.statement(cstring(body))
		ss.sent = append(ss.sent, ss.group)
		ss.group = nil
	case 'S': // Sync ends an extended-protocol round trip
		ss.sent = append(ss.sent, ss.group)
		ss.group = nil
	case 'P': // Parse: name, query
		name := cstring(body)
		query := cstring(body[min(len(name)+1, len(body)):])
		ss.prepared[name] = query
		if name == "" {
			ss.statement(query)
		}
	case 'B': // Bind: portal, statement
		portal := cstring(body)
		if stmt := cstring(body[min(len(portal)+1, len(body)):]); stmt != "" {
			ss.statement(ss.prepared[stmt])
		}
	}
}

// maxStatements bounds what a session remembers of one transaction.
const maxStatements = 64

func (ss *session) statement(q string) {
	if len(ss.group) < maxStatements {
		ss.group = append(ss.group, q)
	}
}

// nextRoundTrip pops the statements of the oldest round trip awaiting its
// answer; ok is false when none is (the startup's ReadyForQuery, or a
// message the server sent on its own).
func (ss *session) nextRoundTrip() (stmts []string, ok bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.sent) == 0 {
		return nil, false
	}
	stmts = ss.sent[0]
	ss.sent = ss.sent[1:]
	return stmts, true
}

func (ss *session) awaiting() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return len(ss.sent) > 0
}

// backend forwards the server's answers, one round trip at a time, and
// loses those the policy picks.
func (ss *session) backend() {
	r := bufio.NewReader(ss.server)
	var held []byte
	var failed bool // an ErrorResponse or a ROLLBACK in this round trip
	for {
		typ, msg, err := readTyped(r)
		if err != nil {
			return
		}
		if typ != 'Z' {
			if !ss.awaiting() && len(held) == 0 {
				// Nothing asked: a notice or parameter status on an
				// idle session goes straight through.
				if ss.write(ss.client, msg) != nil {
					return
				}
				continue
			}
			held = append(held, msg...)
			switch typ {
			case 'E':
				failed = true
			case 'C':
				if strings.HasPrefix(cstring(msg[5:]), "ROLLBACK") {
					failed = true
				}
			}
			continue
		}
		held = append(held, msg...)
		stmts, ok := ss.nextRoundTrip()
		ss.tx = append(ss.tx, stmts...)
		idle := len(msg) > 5 && msg[5] == 'I'
		if ok && idle {
			committed := !failed && len(ss.tx) > 0
			c := Commit{Statements: ss.tx}
			ss.tx = nil
			if committed {
				c.N = ss.p.commits.Add(1)
				if pol := ss.p.policy.Load(); pol != nil && (*pol)(c) {
					ss.p.mu.Lock()
					ss.p.dropped = append(ss.p.dropped, c)
					ss.p.mu.Unlock()
					return
				}
				if d := ss.p.delay.Load(); d != nil {
					time.Sleep((*d)(c))
				}
			}
		}
		if ss.write(ss.client, held) != nil {
			return
		}
		held, failed = held[:0], false
	}
}

func (ss *session) write(c net.Conn, b []byte) error {
	_, err := c.Write(b)
	return err
}

const maxMessage = 1 << 30

func readUntyped(r *bufio.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n < 8 || n > maxMessage {
		return nil, fmt.Errorf("pgproxy: startup message of %d bytes", n)
	}
	msg := make([]byte, n)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[4:]); err != nil {
		return nil, err
	}
	switch binary.BigEndian.Uint32(msg[4:8]) {
	case 80877103, 80877104:
		return nil, errors.New("pgproxy: SSL and GSS encryption are not supported (sslmode=disable)")
	}
	return msg, nil
}

// readTyped reads one message: its type, and the whole message as sent.
func readTyped(r *bufio.Reader) (byte, []byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if n < 4 || n > maxMessage {
		return 0, nil, fmt.Errorf("pgproxy: message %q of %d bytes", hdr[0], n)
	}
	msg := make([]byte, 1+n)
	copy(msg, hdr[:])
	if _, err := io.ReadFull(r, msg[5:]); err != nil {
		return 0, nil, err
	}
	return hdr[0], msg, nil
}

func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		return string(b[:i])
	}
	return string(b)
}

// WrapDSN starts one proxy per host of a postgres:// URL (a multi-host URL
// gets one per host) and returns the URL with each host replaced by its
// proxy. The hosts may be in the authority (host:port,host:port) or in
// the host and port parameters, where a host that is a directory names a
// Unix-domain socket, as libpq has it. Keyword DSNs are not supported.
func WrapDSN(dsn string) (string, []*Proxy, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", nil, fmt.Errorf("pgproxy: %w", err)
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return "", nil, fmt.Errorf("pgproxy: want a postgres:// URL, got %q", dsn)
	}
	upstreams, err := hosts(u)
	if err != nil {
		return "", nil, err
	}
	var proxies []*Proxy
	var addrs []string
	for _, h := range upstreams {
		p, err := Start(h)
		if err != nil {
			for _, q := range proxies {
				q.Close()
			}
			return "", nil, err
		}
		proxies = append(proxies, p)
		addrs = append(addrs, p.Addr())
	}
	q := u.Query()
	q.Del("host")
	q.Del("port")
	u.RawQuery = q.Encode()
	u.Host = strings.Join(addrs, ",")
	return u.String(), proxies, nil
}

// hosts lists a URL's servers as Start wants them.
func hosts(u *url.URL) ([]string, error) {
	if u.Host != "" {
		return strings.Split(u.Host, ","), nil
	}
	q := u.Query()
	hs, ports := strings.Split(q.Get("host"), ","), strings.Split(q.Get("port"), ",")
	if q.Get("host") == "" || q.Get("port") == "" {
		return nil, fmt.Errorf("pgproxy: no host and port in %q", u.Redacted())
	}
	var out []string
	for i, h := range hs {
		port := ports[min(i, len(ports)-1)]
		if strings.HasPrefix(h, "/") {
			out = append(out, fmt.Sprintf("%s/.s.PGSQL.%s", h, port))
		} else {
			out = append(out, net.JoinHostPort(h, port))
		}
	}
	return out, nil
}
