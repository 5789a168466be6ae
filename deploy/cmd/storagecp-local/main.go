// Command storagecp-local runs a whole storagecp deployment on this machine,
// for `make run`: a private PostgreSQL cluster under .run/pg (kept across
// runs), the four services on their default ports, and sim-upstairs
// processes, with logs under .run/logs. Every process speaks mutual TLS
// with a certificate from a local CA under .run/pki (kept across runs;
// missing or near-expiry certificates are re-issued), which also holds an
// operator identity (what storctl uses by default) and a viewer one;
// --insecure runs everything in plaintext instead. Once everything is up
// it starts the live web console (storctl console, its URL printed) and
// runs the demo (storctl/demo: a live read-only replacement, shown on
// the terminal) as the operator, then serves until Ctrl-C and stops
// everything.
//
// Exit codes: 0 clean stop (or, with --non-interactive, a successful
// demo), 1 failure, 2 bad usage.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/storctl/demo"
	"storagecp.dev/testsupport/stack"
)

// ViewerID is the read-only identity the launcher issues beside the
// operator's, to try the policy with.
const ViewerID = mtls.Viewers + "/local"

func main() {
	os.Exit(run())
}

func run() int {
	root, err := stack.FindRepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "storagecp-local:", err)
		return 1
	}
	fs := flag.NewFlagSet("storagecp-local", flag.ContinueOnError)
	runDir := fs.String("run-dir", filepath.Join(root, ".run"), "state directory (PostgreSQL data, logs, binaries, the PKI)")
	sims := fs.Int("sim-upstairs", 2, "number of sim-upstairs processes")
	build := fs.Bool("build", true, "build the binaries first")
	tracing := fs.Bool("tracing", false, "also start Jaeger (.run/bin/jaeger, `make jaeger`) and export every process's spans to it (make run TRACING=1)")
	exitAfterStart := fs.Bool("exit-after-start", false, "stop everything once healthy (smoke test)")
	runDemo := fs.Bool("demo", true, "once up, drive a live replacement and show its progress (--demo=false only serves)")
	nonInteractive := fs.Bool("non-interactive", false, "plain output, and exit when the demo is done: 0 if it succeeded, 1 if not (make run DEMO=exit)")
	freePorts := fs.Bool("free-ports", false, "free loopback ports for every process instead of 7101-7104 and 7110+ (tests, or beside another deployment)")
	pgPort := fs.Int("pg-port", 55432, "PostgreSQL port; 0 picks a free one")
	ha := fs.Bool("ha", false, "run the services on a replicated PostgreSQL under <run-dir>/ha (pg_auto_failover: a monitor, a primary and a synchronous standby; make run HA=1) instead of the single cluster under <run-dir>/pg")
	hosts := fs.Bool("hosts", false, "run every process on a host of its own (a network namespace on a bridge) with every link through a fault proxy, deployed through configuration files (make run HOSTS=1; needs root)")
	linksAPI := fs.String("links-api", "127.0.0.1:8474", "with --hosts: serve toxiproxy's HTTP API for the links' proxies here (empty: none)")
	withConsole := fs.Bool("console", true, "serve the live web console (storctl console) and print its URL")
	insecure := fs.Bool("insecure", false, "plaintext gRPC without identities or authorization: anything that reaches a port may call every RPC (a lab bench only; make run INSECURE=1)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *insecure {
		fmt.Println(insecureBanner)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	binDir := filepath.Join(*runDir, "bin")
	if *build {
		fmt.Println("building binaries …")
		if err := stack.Build(ctx, root, binDir); err != nil {
			fmt.Fprintln(os.Stderr, "storagecp-local:", err)
			return 1
		}
	}
	fmt.Println("starting PostgreSQL and services …")
	start := time.Now()
	st, err := stack.Start(ctx, stack.Config{
		BinDir:      binDir,
		PGDir:       filepath.Join(*runDir, "pg"),
		PGPort:      *pgPort,
		HA:          *ha,
		HADir:       filepath.Join(*runDir, "ha"),
		Fsync:       true,
		LogDir:      filepath.Join(*runDir, "logs"),
		FixedPorts:  !*freePorts,
		SimUpstairs: *sims,
		Dev:         true,
		Tracing:     *tracing,
		PKIDir:      filepath.Join(*runDir, "pki"),
		Insecure:    *insecure,
		Hosts:       *hosts,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "storagecp-local:", err)
		return 1
	}
	defer func() {
		fmt.Println("\nstopping …")
		st.Stop()
		fmt.Println("stopped: every process and PostgreSQL")
	}()
	sec, err := newSecurity(st, *freePorts || *hosts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "storagecp-local:", err)
		return 1
	}
	fmt.Printf("\nstoragecp is up (%.1fs)\n\n", time.Since(start).Seconds())
	fmt.Printf("  %-26s %s\n", "PostgreSQL", st.DSN("<db>"))
	if st.Formation != nil {
		printFormation(ctx, st)
	}
	for _, p := range st.Procs() {
		fmt.Printf("  %-26s %-18s log %s\n", p.Name, p.Addr, p.LogPath())
	}
	if st.Hosts() {
		if err := printHosts(st, *linksAPI); err != nil {
			fmt.Fprintln(os.Stderr, "storagecp-local:", err)
			return 1
		}
	} else {
		fmt.Println("\nMetrics (Prometheus):")
		for _, p := range st.Procs() {
			fmt.Printf("  %-26s %s\n", p.Name, st.MetricsURL(p.Name))
		}
	}
	if u := st.JaegerURL(); u != "" {
		fmt.Printf("\nTraces (Jaeger UI): %s/search?service=%s\n", u, stack.Orchestrator)
	}
	sec.print()
	grpcurl := filepath.Join(binDir, "grpcurl")
	if _, err := os.Stat(grpcurl); err != nil {
		grpcurl = "grpcurl"
	}
	g := demo.ShortPath(grpcurl) + " " + sec.grpcurlFlags()
	fmt.Printf(`
Explore with grpcurl (as %[5]s):
  %[1]s %[2]s list
  %[1]s %[3]s list storage.allocator.v1.RegionAllocatorService
  %[1]s -d '{}' %[3]s storage.allocator.v1.RegionAllocatorService/ListPhysicalDisks
  %[1]s -d '{}' %[2]s storage.volume.v1.VolumeService/CheckInvariants
  %[1]s -d '{}' %[4]s storage.orchestrator.v1.AdminService/ListSagas
`, g, st.Addr(stack.Volume), st.Addr(stack.Allocator), st.Addr(stack.Orchestrator), sec.who())
	sec.printStorctl(st, demo.ShortPath(filepath.Join(binDir, "storctl")))
	if *withConsole {
		url, stopConsole, err := startConsole(ctx, st, binDir, *freePorts || *hosts)
		if err != nil {
			fmt.Fprintln(os.Stderr, "storagecp-local:", err)
			return 1
		}
		// Before the services stop (defers run last first).
		defer stopConsole()
		fmt.Printf("\nConsole (live, in a browser; reads as %s, acts as %s): %s\n", ConsoleViewerID, ConsoleOperatorID, url)
	}
	if *exitAfterStart {
		return 0
	}
	if *runDemo {
		err := playDemo(ctx, st, sec, start, binDir, grpcurl, *nonInteractive)
		switch {
		case ctx.Err() != nil:
			fmt.Println("\ndemo interrupted")
			return 0
		case err != nil:
			fmt.Fprintln(os.Stderr, "\nstoragecp-local: demo failed:", err)
			if *nonInteractive {
				return 1
			}
			fmt.Println("the deployment keeps running for a look at what went wrong (logs above)")
		}
	}
	if *nonInteractive {
		return 0
	}
	fmt.Println("\nstoragecp keeps serving. Ctrl-C stops everything.")
	<-ctx.Done()
	return 0
}

// playDemo runs the demo against the stack as the operator, printing to
// stdout (redrawn in place on a terminal unless nonInteractive).
// started is when the stack (and so every sim-upstairs) started: older
// attachments are leftovers of an earlier run.
func playDemo(ctx context.Context, st *stack.Stack, sec *security, started time.Time, binDir, grpcurl string, nonInteractive bool) error {
	c, err := demo.Dial(demo.Addrs{
		Volume: st.Addr(stack.Volume), Allocator: st.Addr(stack.Allocator),
		Notifier: st.Addr(stack.Notifier), Orchestrator: st.Addr(stack.Orchestrator),
	}, sec.transport)
	if err != nil {
		return err
	}
	defer c.Close()
	res, err := demo.Run(ctx, c, os.Stdout, demo.Options{
		SimUpstairs:    st.UpstairsEndpoints(),
		UpstairsSince:  started,
		NonInteractive: nonInteractive,
		JaegerURL:      st.JaegerURL(),
		StorctlPath:    demo.ShortPath(filepath.Join(binDir, "storctl")),
		GrpcurlPath:    demo.ShortPath(grpcurl),
		TLS:            sec.hint(),
	})
	if err != nil {
		return err
	}
	fmt.Printf("\ndemo finished: expunge → Complete in %.2fs\n", res.ExpungeToComplete.Seconds())
	return nil
}

// printFormation shows the replicated PostgreSQL as its monitor sees it
// at start; `storctl health` shows it at any time, through the
// orchestrator.
func printFormation(ctx context.Context, st *stack.Stack) {
	nodes, err := st.Formation.State(ctx)
	if err != nil {
		fmt.Printf("  %-26s unknown: %v\n", "formation", err)
		return
	}
	fmt.Printf("  %-26s monitor 127.0.0.1:%d (pg_autoctl show state --pgdata %s)\n", "formation", st.Formation.MonitorPort, demo.ShortPath(filepath.Join(st.Formation.Dir, "monitor")))
	for _, n := range nodes {
		fmt.Printf("  %-26s 127.0.0.1:%d %s (assigned %s), timeline %d, LSN %s\n", "  "+n.Name, n.Port, n.Current, n.Assigned, n.TLI, n.LSN)
	}
}

// printHosts shows hosts mode's network: each process's host, its
// configuration file, and how to break a link.
func printHosts(st *stack.Stack, linksAPI string) error {
	fmt.Println("\nHosts (each a network namespace on one bridge; ip netns exec NETNS …):")
	for _, p := range st.Procs() {
		h := st.Host(p.Name)
		fmt.Printf("  %-26s %-15s netns %-14s config %s\n", p.Name, h.Addr, h.Netns, demo.ShortPath(filepath.Join(st.LogDir, "config", p.Name+".toml")))
	}
	if h := st.Host(stack.Postgres); h != nil {
		fmt.Printf("  %-26s %-15s netns %s\n", stack.Postgres, h.Addr, h.Netns)
	}
	links := st.Links()
	fmt.Printf("\nLinks: %d, each through a proxy of its own (toxiproxy), e.g.\n", len(links))
	for _, l := range links {
		if l.Client == stack.Orchestrator {
			fmt.Printf("  %-50s %s → %s\n", l.Name(), l.Listen, l.Upstream)
		}
	}
	fmt.Println("Metrics are served on each host's loopback: ip netns exec NETNS curl -s http://127.0.0.1:PORT/metrics")
	if linksAPI == "" {
		return nil
	}
	if err := st.ServeLinksAPI(linksAPI); err != nil {
		return err
	}
	fmt.Printf(`Break a link through toxiproxy's API on %[1]s (the proxy's name, with > as %%3E):
  curl -s %[1]s/proxies
  curl -s -X POST %[1]s/proxies/%[2]s%%3E%[3]s/toxics -d '{"name":"slow","type":"latency","stream":"downstream","attributes":{"latency":200,"jitter":50}}'
  curl -s -X DELETE %[1]s/proxies/%[2]s%%3E%[3]s/toxics/slow
`, linksAPI, stack.Orchestrator, stack.Volume)
	return nil
}
