package cli

import (
	"context"
	"encoding/json"
	"flag"
	"io"
	"strings"
	"time"

	"google.golang.org/grpc"

	"storagecp.dev/platform/mtls"
	"storagecp.dev/storctl/demo"
)

// demoClients hands the demo package storctl's own connections, so both
// reach the services the global flags name.
func (e *env) demoClients() (demo.Clients, error) {
	var c demo.Clients
	for _, x := range []struct {
		service string
		conn    **grpc.ClientConn
	}{
		{svcVolume, &c.Volume}, {svcAllocator, &c.Allocator}, {svcNotifier, &c.Notifier}, {svcOrchestrator, &c.Orchestrator},
	} {
		conn, err := e.conn(x.service)
		if err != nil {
			return demo.Clients{}, err
		}
		*x.conn = conn
	}
	// The sim-upstairs, under the same identity (e.conn loaded it).
	c.Upstairs = e.transport.DialOption(mtls.Upstairs)
	return c, nil
}

// hintTLS is what the demo's closing hints connect with: storctl's own
// credentials.
func (e *env) hintTLS() demo.HintTLS {
	if e.opts.insecure {
		return demo.HintTLS{Insecure: true}
	}
	return demo.HintTLS{CA: demo.ShortPath(e.files.CA), Cert: demo.ShortPath(e.files.Cert), Key: demo.ShortPath(e.files.Key), StorctlFinds: e.discovered}
}

func rackCommands() []command {
	return []command{{
		path: "rack seed", summary: "add demo sleds and disks until the rack has enough in service (idempotent)",
		max: 0,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			var o demo.SeedOptions
			fs.IntVar(&o.Sleds, "sleds", 4, "sleds in service wanted")
			fs.IntVar(&o.DisksPerSled, "disks-per-sled", 2, "in-service disks wanted per sled")
			capGiB := fs.Int64("capacity-gib", 200, "capacity of each added disk, GiB")
			return func(ctx context.Context, e *env, _ []string) error {
				o.DiskCapacityBytes = *capGiB << 30
				o.Out = e.stdout
				if e.json() {
					o.Out = e.stderr
				}
				c, err := e.demoClients()
				if err != nil {
					return err
				}
				if err := demo.SeedRack(ctx, c, o); err != nil {
					return err
				}
				if e.json() {
					all, err := e.listDisks(ctx, "")
					if err != nil {
						return err
					}
					return e.printJSON(all)
				}
				return nil
			}
		},
	}, {
		path: "demo", summary: "seed a rack, make a disk, snapshot and clones, expunge a disk and watch the replacement finish",
		max: 0, unbounded: true,
		setup: func(fs *flag.FlagSet) func(context.Context, *env, []string) error {
			var o demo.Options
			fs.IntVar(&o.Clones, "clones", 10, "clones of the snapshot")
			sims := fs.String("sim-upstairs", "127.0.0.1:7110,127.0.0.1:7111", "comma-separated sim-upstairs addresses the clones attach to (empty: none)")
			fs.BoolVar(&o.NonInteractive, "plain", false, "plain progress lines instead of redrawing in place")
			fs.StringVar(&o.JaegerURL, "jaeger", "", "Jaeger UI URL, to print each replacement's trace link")
			fs.DurationVar(&o.Timeout, "wait", 5*time.Minute, "how long to wait for the replacement to finish")
			return func(ctx context.Context, e *env, _ []string) error {
				for _, s := range strings.Split(*sims, ",") {
					if s = strings.TrimSpace(s); s != "" {
						o.SimUpstairs = append(o.SimUpstairs, s)
					}
				}
				c, err := e.demoClients()
				if err != nil {
					return err
				}
				o.TLS = e.hintTLS()
				w := e.stdout
				if e.json() {
					// The narrative goes to stderr; stdout keeps the result.
					w, o.NonInteractive = e.stderr, true
				}
				res, err := demo.Run(ctx, c, w, o)
				if err != nil {
					return err
				}
				if e.json() {
					return writeDemoResult(e.stdout, res)
				}
				return nil
			}
		},
	}}
}

// writeDemoResult is the demo's result for scripts: ids, final states and
// timings (Go field names, encoding/json).
func writeDemoResult(w io.Writer, r demo.Result) error {
	out := struct {
		VolumeID, SnapshotID string
		CloneIDs             []string
		DiskID, DatasetID    string
		PreviewAvailable     bool
		RequestIDs           []string
		States               map[string]int
		Steps                demo.StepCounts
		ExpungeToCompleteMS  int64
		TraceIDs             map[string]string
	}{
		r.VolumeID, r.SnapshotID, r.CloneIDs, r.DiskID, r.DatasetID, r.PreviewAvailable, r.RequestIDs, r.States, r.Steps,
		r.ExpungeToComplete.Milliseconds(), r.TraceIDs,
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
