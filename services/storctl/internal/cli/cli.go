// Package cli is storctl: an omdb-like operator CLI over storagecp's public
// gRPC APIs. It reads nothing but those APIs, so what it shows is what any
// client (grpcurl, the demo, a script) would see.
//
// Exit codes: 0 success, 1 error (a call failed, a service is unreachable
// or, for health, not serving), 2 usage error, 3 a check found violations
// (validate, volumes invariants) or problems (health: the database
// formation is degraded).
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/storctl/creds"
)

// Exit codes.
const (
	ExitOK         = 0
	ExitError      = 1
	ExitUsage      = 2
	ExitViolations = 3
)

// Service names, as the processes call themselves (testsupport/stack), so an
// error names the process an operator would look at.
const (
	svcVolume       = "volume-service"
	svcAllocator    = "region-allocator"
	svcNotifier     = "upstairs-notifier"
	svcOrchestrator = "replacement-orchestrator"
)

// endpoint is one service's address: its flag, its environment variable
// and its default (the ports `make run` uses), and the identity path the
// service must present (mtls), so that storctl talks to nothing else.
type endpoint struct {
	service, flag, env, def, identity string
}

var endpoints = []endpoint{
	{svcVolume, "volume", "STORAGECP_VOLUME_ADDR", "127.0.0.1:7101", mtls.VolumeService},
	{svcAllocator, "allocator", "STORAGECP_ALLOCATOR_ADDR", "127.0.0.1:7102", mtls.RegionAllocator},
	{svcNotifier, "notifier", "STORAGECP_NOTIFIER_ADDR", "127.0.0.1:7103", mtls.UpstairsNotifier},
	{svcOrchestrator, "orchestrator", "STORAGECP_ORCHESTRATOR_ADDR", "127.0.0.1:7104", mtls.ReplacementOrchestrator},
}

// options are the global flags, accepted before or after the command.
type options struct {
	addrs   map[string]*string // by service
	output  string
	timeout time.Duration
	// timeoutSet: --timeout was given, so it overrides a command's own
	// deadline (command.timeout).
	timeoutSet bool

	// TLS: the trust bundle and this operator's X509-SVID, or plaintext.
	files       mtls.Files
	trustDomain string
	insecure    bool
}

func newOptions(getenv func(string) string) *options {
	o := &options{addrs: map[string]*string{}, output: "table", timeout: 10 * time.Second}
	for _, ep := range endpoints {
		v := ep.def
		if e := getenv(ep.env); e != "" {
			v = e
		}
		o.addrs[ep.service] = &v
	}
	o.files = mtls.Files{CA: getenv("STORCTL_CA"), Cert: getenv("STORCTL_CERT"), Key: getenv("STORCTL_KEY")}
	o.trustDomain = mtls.DefaultTrustDomain
	if td := getenv("STORAGECP_TRUST_DOMAIN"); td != "" {
		o.trustDomain = td
	}
	return o
}

// bind registers the global flags on fs with their current values as
// defaults, so parsing a second flag set (the command's) keeps what the
// first one set.
func (o *options) bind(fs *flag.FlagSet) {
	for _, ep := range endpoints {
		fs.StringVar(o.addrs[ep.service], ep.flag, *o.addrs[ep.service], fmt.Sprintf("%s address (env %s)", ep.service, ep.env))
	}
	fs.StringVar(&o.output, "o", o.output, `output: "table" or "json"`)
	fs.Var(timeoutFlag{o}, "timeout", "deadline of each command's calls (watch and demo are not bounded by it; validate's is 2m unless given)")
	fs.StringVar(&o.files.CA, "ca", o.files.CA, "trust bundle, PEM CA certificates (env STORCTL_CA; default .run/pki/bundle.pem above the working directory)")
	fs.StringVar(&o.files.Cert, "cert", o.files.Cert, "your X509-SVID, PEM (env STORCTL_CERT; default .run/pki/"+creds.Operator+"/svid.pem)")
	fs.StringVar(&o.files.Key, "key", o.files.Key, "its private key (env STORCTL_KEY; default .run/pki/"+creds.Operator+"/svid.key)")
	fs.StringVar(&o.trustDomain, "trust-domain", o.trustDomain, "SPIFFE trust domain of the deployment (env STORAGECP_TRUST_DOMAIN)")
	fs.BoolVar(&o.insecure, "insecure", o.insecure, "plaintext, no certificates: only for a deployment started with --insecure")
}

// timeoutFlag is --timeout, noting that it was given.
type timeoutFlag struct{ o *options }

func (f timeoutFlag) String() string {
	if f.o == nil {
		return ""
	}
	return f.o.timeout.String()
}

func (f timeoutFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	f.o.timeout, f.o.timeoutSet = d, true
	return nil
}

// errNoCredentials is storctl's one line when it has no certificate.
var errNoCredentials = errors.New("no TLS credentials: pass --ca, --cert and --key (or STORCTL_CA, STORCTL_CERT, STORCTL_KEY), " +
	"run `make run` (storctl then finds .run/pki above the working directory), or use --insecure against a plaintext deployment")

// credentials resolves the TLS files: each flag (or its environment
// variable), else the operator `make run` issued under the nearest
// .run/pki above the working directory. A certificate without its key (or
// the reverse) is a usage error rather than a silent mix with the default.
// found reports that all three were found rather than given.
func (o *options) credentials(wd string) (mtls.Files, bool, error) {
	f := o.files
	if (f.Cert == "") != (f.Key == "") {
		return mtls.Files{}, false, usagef("--cert and --key go together")
	}
	if f.CA != "" && f.Cert != "" {
		return f, false, nil
	}
	def, ok := creds.Default(wd)
	if !ok {
		return mtls.Files{}, false, errNoCredentials
	}
	found := f == mtls.Files{}
	if f.CA == "" {
		f.CA = def.CA
	}
	if f.Cert == "" {
		f.Cert, f.Key = def.Cert, def.Key
	}
	return f, found, nil
}

// usageError is a bad command line: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// violationsError means a check ran and found violations (or, for
// health, problems with the database): exit 3. msg, when set, says what
// was checked.
type violationsError struct {
	n   int
	msg string
}

func (e violationsError) Error() string {
	if e.msg != "" {
		return e.msg
	}
	return fmt.Sprintf("%d violation(s) found", e.n)
}

// Run runs storctl with args (without the program name), reading endpoints
// from the environment, and returns the exit code.
func Run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	return run(ctx, args, stdout, stderr, os.Getenv)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	e := &env{opts: newOptions(getenv), stdout: stdout, stderr: stderr, conns: map[string]*grpc.ClientConn{}, getenv: getenv}
	defer e.close()
	err := e.dispatch(ctx, args)
	var ue usageError
	var ve violationsError
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, flag.ErrHelp):
		return ExitOK
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "storctl: %s\nRun 'storctl help' for usage.\n", ue.msg)
		return ExitUsage
	case errors.As(err, &ve):
		fmt.Fprintf(stderr, "storctl: %s\n", ve)
		return ExitViolations
	default:
		fmt.Fprintf(stderr, "storctl: %s\n", e.describe(err))
		return ExitError
	}
}

// env is one invocation: options, output and lazily dialled connections.
type env struct {
	opts           *options
	stdout, stderr io.Writer
	conns          map[string]*grpc.ClientConn
	getenv         func(string) string
	// transport is loaded with the first connection; files are what it
	// was loaded from, and discovered whether they were found under
	// .run/pki rather than given.
	transport  *mtls.Transport
	files      mtls.Files
	discovered bool
}

func (e *env) close() {
	for _, c := range e.conns {
		_ = c.Close()
	}
}

// conn dials a service once. Connections are lazy and calls do not wait
// for readiness, so a service that is down fails the first call at once
// with Unavailable instead of hanging until the deadline.
func (e *env) conn(service string) (*grpc.ClientConn, error) {
	if c, ok := e.conns[service]; ok {
		return c, nil
	}
	t, err := e.tls()
	if err != nil {
		return nil, err
	}
	addr := *e.opts.addrs[service]
	c, err := grpc.NewClient(addr, t.DialOption(identityOf(service)))
	if err != nil {
		return nil, fmt.Errorf("%s address %q: %w", service, addr, err)
	}
	e.conns[service] = c
	return c, nil
}

// tls loads the transport once: plaintext with --insecure (and a warning),
// else mutual TLS with the resolved files.
func (e *env) tls() (*mtls.Transport, error) {
	if e.transport != nil {
		return e.transport, nil
	}
	if e.opts.insecure {
		fmt.Fprintln(e.stderr, "storctl: WARNING: --insecure: plaintext, no identity; only a deployment started with --insecure answers")
		e.transport = mtls.Insecure()
		return e.transport, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return nil, err
	}
	files, found, err := e.opts.credentials(wd)
	if err != nil {
		return nil, err
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	t, err := mtls.Load(e.opts.trustDomain, files, logger)
	if err != nil {
		return nil, fmt.Errorf("TLS credentials: %w", err)
	}
	e.transport, e.files, e.discovered = t, files, found
	return t, nil
}

func identityOf(service string) string {
	for _, ep := range endpoints {
		if ep.service == service {
			return ep.identity
		}
	}
	return service
}

// callError remembers which service a failed call went to.
type callError struct {
	service string
	err     error
}

func (c callError) Error() string { return c.service + ": " + c.err.Error() }
func (c callError) Unwrap() error { return c.err }

func (e *env) wrap(service string, err error) error {
	if err == nil {
		return nil
	}
	return callError{service: service, err: err}
}

// describe turns an error into storctl's one-line message.
func (e *env) describe(err error) string {
	var ce callError
	if !errors.As(err, &ce) {
		return err.Error()
	}
	addr := *e.opts.addrs[ce.service]
	st, _ := status.FromError(ce.err)
	switch st.Code() {
	case codes.Unavailable:
		msg := st.Message()
		switch {
		case strings.Contains(msg, "handshake failed"):
			// Reachable, but one side refused the other's certificate
			// (another deployment's CA, not the expected service, an
			// expired SVID) or it serves plaintext.
			_, why, _ := strings.Cut(msg, "handshake failed: ")
			return fmt.Sprintf("%s at %s: TLS handshake failed: %s", ce.service, addr, strings.TrimRight(why, `"`))
		case strings.Contains(msg, "remote error: tls: "):
			// TLS 1.3: the server checks the client's certificate after
			// the client is done, and says no with an alert.
			_, why, _ := strings.Cut(msg, "remote error: ")
			return fmt.Sprintf("%s at %s refused storctl's certificate (%s): is it from this deployment's CA, and current?", ce.service, addr, strings.TrimRight(why, `"`))
		case !e.opts.insecure && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "server preface: EOF")):
			// The same refusal when the alert lost the race with our
			// first write.
			return fmt.Sprintf("%s at %s closed the connection after the TLS handshake: it probably does not accept storctl's certificate (another deployment's CA, or expired)", ce.service, addr)
		case e.opts.insecure && strings.Contains(msg, "server preface"):
			return fmt.Sprintf("%s at %s closed the plaintext connection: it serves TLS (drop --insecure)", ce.service, addr)
		}
		return fmt.Sprintf("%s at %s is unreachable", ce.service, addr)
	case codes.DeadlineExceeded:
		return fmt.Sprintf("%s at %s did not answer within %s", ce.service, addr, e.opts.timeout)
	case codes.Canceled:
		return "interrupted"
	case codes.PermissionDenied:
		// The server names the caller and the method.
		return fmt.Sprintf("%s refused the call: PermissionDenied: %s (the authorization policy decides who may call what)", ce.service, st.Message())
	case codes.Unauthenticated:
		return fmt.Sprintf("%s refused the call: Unauthenticated: %s", ce.service, st.Message())
	}
	return fmt.Sprintf("%s: %s: %s", ce.service, st.Code(), st.Message())
}

// command is one leaf of the command tree. setup binds the command's own
// flags and returns what runs once they are parsed.
type command struct {
	path    string // "replacements list"
	args    string // positional arguments, for usage
	summary string
	min     int // positional arguments
	max     int // -1: any number
	// unbounded commands (watch, demo) run until done or interrupted,
	// without the --timeout deadline.
	unbounded bool
	// timeout, when set, is the command's deadline unless --timeout is
	// given: a call that reads the whole rack (validate) needs longer than
	// the default.
	timeout time.Duration
	setup   func(fs *flag.FlagSet) func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	var all []command
	all = append(all, replacementCommands()...)
	all = append(all, sagaCommands()...)
	all = append(all, taskCommands()...)
	all = append(all, volumeCommands()...)
	all = append(all, diskCommands()...)
	all = append(all, redundancyCommands()...)
	all = append(all, rackCommands()...)
	all = append(all, healthCommands()...)
	all = append(all, budgetCommands()...)
	all = append(all, consoleCommands()...)
	return all
}

func (e *env) dispatch(ctx context.Context, args []string) error {
	global := flag.NewFlagSet("storctl", flag.ContinueOnError)
	global.SetOutput(io.Discard)
	e.opts.bind(global)
	if err := global.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			e.usage(e.stdout)
			return err
		}
		return usagef("%v", err)
	}
	rest := global.Args()
	if len(rest) == 0 {
		e.usage(e.stderr)
		return usagef("no command")
	}
	if rest[0] == "help" {
		e.usage(e.stdout)
		return nil
	}
	cmd, rest, err := find(rest)
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("storctl "+cmd.path, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	runCmd := cmd.setup(fs)
	e.opts.bind(fs)
	pos, err := parseInterleaved(fs, rest)
	if errors.Is(err, flag.ErrHelp) {
		e.commandUsage(e.stdout, cmd, fs)
		return err
	}
	if err != nil {
		return usagef("%s: %v", cmd.path, err)
	}
	if len(pos) < cmd.min || (cmd.max >= 0 && len(pos) > cmd.max) {
		return usagef("%s: want %s, got %d argument(s)", cmd.path, argsWanted(cmd), len(pos))
	}
	if e.opts.output != "table" && e.opts.output != "json" {
		return usagef(`-o: want "table" or "json", got %q`, e.opts.output)
	}
	if cmd.timeout > 0 && !e.opts.timeoutSet {
		e.opts.timeout = cmd.timeout
	}
	if !cmd.unbounded && e.opts.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.opts.timeout)
		defer cancel()
	}
	return runCmd(ctx, e, pos)
}

func argsWanted(c command) string {
	if c.args == "" {
		return "no arguments"
	}
	return c.args
}

// find matches the longest command path at the start of args.
func find(args []string) (command, []string, error) {
	all := commands()
	for n := 2; n >= 1; n-- {
		if len(args) < n {
			continue
		}
		p := strings.Join(args[:n], " ")
		for _, c := range all {
			if c.path == p {
				return c, args[n:], nil
			}
		}
	}
	var subs []string
	for _, c := range all {
		if head, tail, ok := strings.Cut(c.path, " "); ok && head == args[0] {
			subs = append(subs, tail)
		}
	}
	if len(subs) > 0 {
		if len(args) == 1 {
			return command{}, nil, usagef("%s: missing subcommand (one of: %s)", args[0], strings.Join(subs, ", "))
		}
		return command{}, nil, usagef("%s: unknown subcommand %q (one of: %s)", args[0], args[1], strings.Join(subs, ", "))
	}
	return command{}, nil, usagef("unknown command %q", args[0])
}

// parseInterleaved parses flags anywhere among the positional arguments
// ("sagas abandon ID --comment why"), which the flag package alone stops
// at; everything after "--" is positional.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var tail []string
	for i, a := range args {
		if a == "--" {
			args, tail = args[:i], args[i+1:]
			break
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	return append(pos, tail...), nil
}

func (e *env) usage(w io.Writer) {
	fmt.Fprint(w, `storctl — operator views and actions over storagecp's gRPC APIs

Usage: storctl [global flags] <command> [arguments] [flags]

Commands:
`)
	all := commands()
	sort.SliceStable(all, func(i, j int) bool { return all[i].path < all[j].path })
	tw := newTable(w)
	for _, c := range all {
		tw.row("  "+strings.TrimSpace(c.path+" "+c.args), c.summary)
	}
	_ = tw.flush()
	fmt.Fprint(w, `
Global flags (before or after the command):
  --volume, --allocator, --notifier, --orchestrator ADDR
        service addresses (env STORAGECP_VOLUME_ADDR, STORAGECP_ALLOCATOR_ADDR,
        STORAGECP_NOTIFIER_ADDR, STORAGECP_ORCHESTRATOR_ADDR; default
        127.0.0.1:7101, 7102, 7103, 7104)
  -o table|json
        human tables (default) or JSON for scripts
  --timeout D
        deadline of a command's calls (default 10s)
  --ca FILE, --cert FILE, --key FILE
        mutual TLS: the trust bundle, your X509-SVID and its key (env STORCTL_CA,
        STORCTL_CERT, STORCTL_KEY; default the operator identity make run issues:
        .run/pki/bundle.pem, .run/pki/operator/local/svid.pem and svid.key in the
        nearest .run/pki above the working directory). What you may call is the
        deployment's authorization policy's business (deploy/authz/policy.json).
  --trust-domain TD
        SPIFFE trust domain (env STORAGECP_TRUST_DOMAIN; default storagecp.local)
  --insecure
        plaintext, no certificate: only for a deployment started with --insecure

Exit codes: 0 ok, 1 error, 2 usage, 3 validate/invariants found violations;
health exits 1 if a service is not serving, 3 if the database is degraded.
'storctl <command> -h' shows a command's flags.
`)
}

func (e *env) commandUsage(w io.Writer, c command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "Usage: storctl %s [flags]\n\n%s\n\nFlags:\n", strings.TrimSpace(c.path+" "+c.args), c.summary)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// allPages fetches page after page — fetch gets each page's token, "" for
// the first — until a page has no next token, handing each page to add.
func allPages[R interface{ GetNextPageToken() string }](fetch func(token string) (R, error), add func(R)) error {
	for token := ""; ; {
		resp, err := fetch(token)
		if err != nil {
			return err
		}
		add(resp)
		if token = resp.GetNextPageToken(); token == "" {
			return nil
		}
	}
}
