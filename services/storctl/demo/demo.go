// Package demo drives a live read-only replacement on a running storagecp
// deployment, for `make run` and `storctl demo`: it seeds a demo rack,
// creates a disk, a snapshot and clones, attaches the clones to
// sim-upstairs, previews and expunges a disk holding one of the snapshot's
// region snapshots, shows the replacement's progress until every request
// is terminal, and ends with the system's consistency checks. Everything
// goes through the services' public gRPC APIs.
package demo

// This file holds the demo's options and result, Run, and the order of its
// phases (run.run); each phase is in a file of its own.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"

	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"
)

// Options shape a demo run.
type Options struct {
	// SimUpstairs are the sim-upstairs "host:port" addresses the clones are
	// constructed on, round-robin. Empty: the clones are not attached.
	SimUpstairs []string
	// UpstairsSince, when set, is when the sim-upstairs processes started
	// (storagecp-local knows): a Propolis attachment not updated since is
	// a leftover of an earlier run whatever its state, and is detached.
	UpstairsSince time.Time
	// Clones of the snapshot to create; default 10.
	Clones int
	// NonInteractive prints plain periodic progress lines instead of
	// redrawing in place, even on a terminal.
	NonInteractive bool
	// JaegerURL, when set (e.g. "http://127.0.0.1:16686"), is used to print
	// each replacement's trace URL.
	JaegerURL string
	// Out receives the demo's output when Run's writer is nil.
	Out io.Writer
	// Seed shapes the demo rack.
	Seed SeedOptions
	// Timeout bounds waiting for the replacement to finish (expunge to every
	// request terminal); default 5 minutes.
	Timeout time.Duration
	// StorctlPath and GrpcurlPath are what the closing hints run; defaults
	// ".run/bin/storctl" and ".run/bin/grpcurl" (where make run puts them).
	StorctlPath, GrpcurlPath string
	// TLS is what the closing hints connect with.
	TLS HintTLS
}

// HintTLS is the credentials the closing hints give grpcurl and storctl:
// the files of the identity the demo ran as. With the zero value grpcurl
// gets placeholders and storctl its own defaults.
type HintTLS struct {
	// CA is the trust bundle, Cert and Key the identity's SVID.
	CA, Cert, Key string
	// Insecure: the deployment is plaintext (grpcurl -plaintext, storctl
	// --insecure).
	Insecure bool
	// StorctlFinds: storctl finds these files by itself (the operator
	// under the .run/pki above the working directory), so its lines need
	// no TLS settings.
	StorctlFinds bool
}

func (o Options) withDefaults() Options {
	if o.Clones <= 0 {
		o.Clones = 10
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.StorctlPath == "" {
		o.StorctlPath = ".run/bin/storctl"
	}
	if o.GrpcurlPath == "" {
		o.GrpcurlPath = ".run/bin/grpcurl"
	}
	o.JaegerURL = strings.TrimRight(o.JaegerURL, "/")
	return o
}

// StepCounts are replacement steps by state.
type StepCounts struct {
	Requested, Running, Complete, Collecting, VolumeDeleted int64
}

// Total is every step.
func (s StepCounts) Total() int64 {
	return s.Requested + s.Running + s.Complete + s.Collecting + s.VolumeDeleted
}

// Done is the steps past their switch (complete, being collected, or
// with nothing left to do).
func (s StepCounts) Done() int64 { return s.Complete + s.Collecting + s.VolumeDeleted }

func (s *StepCounts) add(p *orchestratorv1.StepCounts) {
	s.Requested += p.GetRequested()
	s.Running += p.GetRunning()
	s.Complete += p.GetComplete()
	s.Collecting += p.GetCollecting()
	s.VolumeDeleted += p.GetVolumeDeleted()
}

// Result is what a demo run did.
type Result struct {
	// The volumes it made: the disk, its snapshot and the clones.
	VolumeID, SnapshotID string
	CloneIDs             []string
	// The expunged physical disk and its dataset.
	DiskID, DatasetID string
	// Whether ReplacementService.PreviewExpunge answered.
	PreviewAvailable bool
	// Every replacement request the expunge caused, by id, and their final
	// records.
	RequestIDs   []string
	Replacements []*orchestratorv1.Replacement
	// Final request counts by state ("read-only complete", "rw complete",
	// ...) and the steps of those requests by state.
	States map[string]int
	Steps  StepCounts
	// From the expunge call to every request terminal, as seen here.
	ExpungeToComplete time.Duration
	// W3C trace id of each request (request id → trace id), where recorded.
	TraceIDs map[string]string
}

// Run drives the demo and writes what happens to w (Options.Out when w is
// nil). It returns an error when a step fails, a request does not
// complete (DataLost included) within the timeout, or a consistency check
// is not clean.
func Run(ctx context.Context, c Clients, w io.Writer, o Options) (Result, error) {
	o = o.withDefaults()
	if w == nil {
		w = o.Out
	}
	if w == nil {
		w = io.Discard
	}
	a, err := c.api()
	if err != nil {
		return Result{}, err
	}
	d := &run{a: a, c: c, w: w, o: o, sims: map[string]*grpc.ClientConn{}}
	defer d.closeSims()
	return d.run(ctx)
}

type run struct {
	a    api
	c    Clients
	w    io.Writer
	o    Options
	res  Result
	sims map[string]*grpc.ClientConn
	// expungedAt is when the expunge was asked for: the replacement's
	// elapsed time counts from here.
	expungedAt time.Time
}

func (d *run) printf(format string, args ...any) { fmt.Fprintf(d.w, format, args...) }

func (d *run) run(ctx context.Context) (Result, error) {
	d.printf("\n── storagecp demo: a live read-only replacement ──\n\n")
	if err := d.waitLeader(ctx); err != nil {
		return d.res, err
	}
	if err := d.detachStale(ctx); err != nil {
		return d.res, err
	}
	rep, err := seedRack(ctx, d.a, d.o.Seed)
	if err != nil {
		return d.res, err
	}
	d.printf("  %-10s %s\n", "rack", rep)
	if err := d.makeVolumes(ctx); err != nil {
		return d.res, err
	}
	if err := d.attachClones(ctx); err != nil {
		return d.res, err
	}
	victim, err := d.chooseDisk(ctx, rep)
	if err != nil {
		return d.res, err
	}
	d.preview(ctx)
	if err := d.expunge(ctx, victim); err != nil {
		return d.res, err
	}
	if err := d.watch(ctx, victim); err != nil {
		return d.res, err
	}
	d.summary()
	if err := d.checks(ctx); err != nil {
		return d.res, err
	}
	d.hints()
	return d.res, nil
}

func (d *run) sim(endpoint string) (*grpc.ClientConn, error) {
	if conn := d.sims[endpoint]; conn != nil {
		return conn, nil
	}
	if d.c.Upstairs == nil {
		return nil, fmt.Errorf("dial upstairs %s: no credentials (Clients.Upstairs)", endpoint)
	}
	conn, err := grpc.NewClient(endpoint, d.c.Upstairs)
	if err != nil {
		return nil, fmt.Errorf("dial upstairs %s: %w", endpoint, err)
	}
	d.sims[endpoint] = conn
	return conn, nil
}

func (d *run) closeSims() {
	for _, conn := range d.sims {
		_ = conn.Close()
	}
}

// ShortPath is path relative to the working directory when it lies below
// it (.run/pki/bundle.pem from the repository root), else path itself: how
// the hints and the launcher print the files a reader will type.
func ShortPath(path string) string {
	wd, err := os.Getwd()
	if err != nil || !filepath.IsAbs(path) {
		return path
	}
	rel, err := filepath.Rel(wd, path)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return path
	}
	return rel
}
