// Package testenv runs saga and task tests against the real services: the
// volume-service, region-allocator, upstairs-notifier and sim-upstairs as
// processes (started by testsupport/testenv, shared with the integration
// harness), and a saga execution coordinator in the test process on the
// orchestrator's database in the same PostgreSQL cluster. Only what needs
// the orchestrator's internals is here.
package testenv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/orchestrator/migrations"
	"storagecp.dev/platform/db"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/testsupport/stack"
	processes "storagecp.dev/testsupport/testenv"
)

// Main builds the service binaries once, runs the tests, cleans up.
func Main(m *testing.M) { processes.Main(m) }

// Env is one test's deployment.
type Env struct {
	Stack     *stack.Stack
	Pool      *pgxpool.Pool
	Store     *store.Store
	Deps      *sagadef.Deps
	SEC       *saga.SEC
	Volumes   volumev1.VolumeServiceClient
	Allocator allocatorv1.RegionAllocatorServiceClient
	Notifier  notifierv1.UpstairsNotifierServiceClient
	Logger    *slog.Logger
}

// Options tune Start.
type Options struct {
	SimUpstairs int
}

// Start brings the services up for one test; everything stops at its end.
func Start(t testing.TB, o Options) *Env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	only := []string{stack.Volume, stack.Allocator, stack.Notifier}
	if o.SimUpstairs > 0 {
		only = append(only, stack.SimUpstairs)
	}
	// The processes stop (and, on failure, show their logs) in a cleanup
	// registered first, so it runs after the SEC's and the pool's below.
	st := processes.Start(t, stack.Config{SimUpstairs: o.SimUpstairs, Only: only})
	e := &Env{Stack: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}
	t.Cleanup(func() {
		if e.SEC != nil {
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = e.SEC.Shutdown(c)
			cancel()
		}
		if e.Pool != nil {
			e.Pool.Close()
		}
	})
	var err error
	e.Pool, err = db.Open(ctx, st.DSN(stack.DatabaseOf(stack.Orchestrator)))
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Migrate(ctx, e.Pool, migrations.FS); err != nil {
		t.Fatal(err)
	}
	e.Store = store.New(e.Pool)
	e.Volumes = volumev1.NewVolumeServiceClient(dial(t, st, st.Addr(stack.Volume)))
	e.Allocator = allocatorv1.NewRegionAllocatorServiceClient(dial(t, st, st.Addr(stack.Allocator)))
	e.Notifier = notifierv1.NewUpstairsNotifierServiceClient(dial(t, st, st.Addr(stack.Notifier)))
	e.Deps = &sagadef.Deps{Volumes: e.Volumes, Allocator: e.Allocator, Notifier: e.Notifier, Store: e.Store}
	reg, err := sagadef.Registry()
	if err != nil {
		t.Fatal(err)
	}
	e.SEC = saga.NewSEC(e.Pool, "test-"+uuid.NewString()[:8], reg, e.Deps, e.Logger)
	return e
}

func dial(t testing.TB, st *stack.Stack, addr string) *grpc.ClientConn {
	conn, err := grpcclient.Dial(addr, st.DialOption())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// Disk is a seeded physical disk.
type Disk struct {
	SledID, DiskID, DatasetID string
}

// SeedRack adds sleds × disksPerSled disks of capacity bytes each.
func (e *Env) SeedRack(t testing.TB, sleds, disksPerSled int, capacity int64) []Disk {
	t.Helper()
	ctx := context.Background()
	var out []Disk
	for s := 0; s < sleds; s++ {
		sled, err := e.Allocator.AddSled(ctx, &allocatorv1.AddSledRequest{Serial: fmt.Sprintf("sled-%d", s)})
		if err != nil {
			t.Fatal(err)
		}
		for d := 0; d < disksPerSled; d++ {
			disk, err := e.Allocator.AddPhysicalDisk(ctx, &allocatorv1.AddPhysicalDiskRequest{
				SledId: sled.Sled.SledId, CapacityBytes: capacity,
				DatasetAddress: fmt.Sprintf("fd00:1122:3344:%x::%x", 0x100+s, d+1),
			})
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, Disk{SledID: sled.Sled.SledId, DiskID: disk.Disk.DiskId, DatasetID: disk.Disk.DatasetId})
		}
	}
	return out
}

// Run runs a saga to its outcome with optional hooks.
func (e *Env) Run(t testing.TB, tmpl *saga.Template, params any, opts ...saga.CreateOption) saga.Outcome {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	o, err := e.SEC.Run(ctx, tmpl, params, opts...)
	if err != nil {
		t.Fatalf("run %s: %v", tmpl.Name(), err)
	}
	return o
}

// MustSucceed runs a saga and fails the test unless it succeeded.
func (e *Env) MustSucceed(t testing.TB, tmpl *saga.Template, params any) saga.Outcome {
	t.Helper()
	o := e.Run(t, tmpl, params)
	if o.Kind != saga.Succeeded {
		t.Fatalf("%s: %v", tmpl.Name(), o.Error())
	}
	return o
}
