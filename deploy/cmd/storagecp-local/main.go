// Command storagecp-local runs a whole storagecp deployment on this machine,
// for `make run`: a private PostgreSQL cluster under .run/pg (kept across
// runs), the four services on their default ports, and sim-upstairs
// processes, with logs under .run/logs. It stops everything on Ctrl-C.
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

	"storagecp.dev/deploy/stack"
)

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
	runDir := fs.String("run-dir", filepath.Join(root, ".run"), "state directory (PostgreSQL data, logs, binaries)")
	sims := fs.Int("sim-upstairs", 2, "number of sim-upstairs processes")
	build := fs.Bool("build", true, "build the binaries first")
	tracing := fs.Bool("tracing", false, "also start Jaeger (.run/bin/jaeger, `make jaeger`) and export every process's spans to it (make run TRACING=1)")
	exitAfterStart := fs.Bool("exit-after-start", false, "stop everything once healthy (smoke test)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
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
		PGPort:      55432,
		Fsync:       true,
		LogDir:      filepath.Join(*runDir, "logs"),
		FixedPorts:  true,
		SimUpstairs: *sims,
		Dev:         true,
		Tracing:     *tracing,
		JaegerBin:   filepath.Join(binDir, stack.JaegerBinName),
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
	fmt.Printf("\nstoragecp is up (%.1fs)\n\n", time.Since(start).Seconds())
	fmt.Printf("  %-26s %s\n", "PostgreSQL", st.Cluster.DSN("<db>"))
	for _, p := range st.Procs() {
		fmt.Printf("  %-26s %-18s log %s\n", p.Name, p.Addr, p.LogPath())
	}
	fmt.Println("\nMetrics (Prometheus):")
	for _, p := range st.Procs() {
		fmt.Printf("  %-26s %s\n", p.Name, st.MetricsURL(p.Name))
	}
	if u := st.JaegerURL(); u != "" {
		fmt.Printf("\nTraces (Jaeger UI): %s/search?service=%s\n", u, stack.Orchestrator)
	}
	grpcurl := filepath.Join(binDir, "grpcurl")
	if _, err := os.Stat(grpcurl); err != nil {
		grpcurl = "grpcurl"
	}
	fmt.Printf(`
Explore with grpcurl:
  %[1]s -plaintext %[2]s list
  %[1]s -plaintext %[3]s list storage.allocator.v1.RegionAllocatorService
  %[1]s -plaintext -d '{}' %[3]s storage.allocator.v1.RegionAllocatorService/ListPhysicalDisks
  %[1]s -plaintext -d '{}' %[2]s storage.volume.v1.VolumeService/CheckInvariants
  %[1]s -plaintext -d '{}' %[4]s storage.orchestrator.v1.AdminService/ListSagas

Ctrl-C stops everything.
`, grpcurl, st.Addr(stack.Volume), st.Addr(stack.Allocator), st.Addr(stack.Orchestrator))
	if *exitAfterStart {
		return 0
	}
	<-ctx.Done()
	return 0
}
