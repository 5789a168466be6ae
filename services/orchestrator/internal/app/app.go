// Package app ties the orchestrator process together: it dials the other
// services, campaigns for the leader lease and, for each term, raises every
// service's fence, runs a saga execution coordinator (adopting and
// recovering the sagas of the previous leader) and the background tasks, all
// under the term's fenced context. The gRPC handlers (package server) reach
// the process only through App's methods.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	allocatorv1 "storagecp.dev/gen/go/storage/allocator/v1"
	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	notifierv1 "storagecp.dev/gen/go/storage/notifier/v1"
	volumev1 "storagecp.dev/gen/go/storage/volume/v1"
	"storagecp.dev/orchestrator/internal/background"
	"storagecp.dev/orchestrator/internal/background/tasks"
	"storagecp.dev/orchestrator/internal/formation"
	"storagecp.dev/orchestrator/internal/leader"
	"storagecp.dev/orchestrator/internal/pause"
	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagadef"
	"storagecp.dev/orchestrator/internal/store"
	"storagecp.dev/platform/grpcclient"
	"storagecp.dev/platform/mtls"
)

// Config holds the addresses of the other services and tuning.
type Config struct {
	// Transport is the orchestrator's identity for dialing the services.
	Transport     *mtls.Transport
	VolumeAddr    string
	AllocatorAddr string
	NotifierAddr  string
	// SECID identifies this process as lease holder and saga owner; a fresh
	// id per start when empty.
	SECID string
	// LeaseTTL is the leader lease's duration.
	LeaseTTL time.Duration
	// TaskPeriod is every background task's safety-net period.
	TaskPeriod time.Duration
	// MaxSagasPerTask bounds the sagas each task keeps in flight.
	MaxSagasPerTask int
	// StepBatch is tasks.Env.StepBatch (0: no batch swap).
	StepBatch int
	// PantryEndpoints are Pantry-like Upstairs hosts for reconciliation.
	PantryEndpoints []string
	// Sabotage: deliberate replacement bugs (dev/test only; see
	// sagadef.SabotageEnv).
	Sabotage sagadef.Sabotage
	// Retry is the backoff before a request or step whose saga unwound is
	// tried again (zero fields: the tasks' defaults).
	Retry tasks.RetryBackoff
	// RWBounds end a rw replacement whose repair does not finish (zero
	// fields: the tasks' defaults).
	RWBounds tasks.RWBounds
	// ActionRetry bounds the in-place retries of a saga action (zero
	// fields: saga.DefaultActionRetry's).
	ActionRetry saga.RetryPolicy
	// UnwindGrace: how long an operator's unwind lets the actions in
	// flight finish before cancelling them (saga.WithUnwindGrace).
	UnwindGrace time.Duration
	// CrashAt and FailAt arm the process-level crash and failure hooks
	// of the leader's SEC (saga.WithCrashAt, saga.WithFailAt; dev/test
	// only: main sets them from saga.CrashEnv and saga.FailEnv with --dev).
	CrashAt, FailAt string
	// DBMonitor is pg_auto_failover's monitor's connection string, when the
	// database is a formation (--db-monitor): GetDatabaseFormation then
	// includes its view. Empty: the connection's view alone.
	DBMonitor string
	// Budgets are the rebuild budgets' configured limits (0: unlimited);
	// values set at runtime (AdminService/SetRebuildBudgets) override them.
	Budgets store.Limits
}

// App is one orchestrator process: its clients, store, saga registry,
// background tasks and, while it leads, the term's SEC.
type App struct {
	pool     *pgxpool.Pool
	logger   *slog.Logger
	cfg      Config
	store    *store.Store
	lease    *leader.Lease
	registry *saga.Registry
	deps     *sagadef.Deps
	driver   *background.Driver
	// viewer reads the saga log for the admin API on leader and standby
	// alike; it never creates or recovers anything.
	viewer *saga.SEC
	// fences of the other services, raised at every election.
	fences map[string]commonv1.FenceServiceClient
	// formation reads the database's replication state.
	formation *formation.Reader

	// admission is the rebuild budgets' planning state the tasks share
	// (what the last passes held back, for waits and metrics).
	admission *tasks.Admission

	mu  sync.Mutex
	sec *saga.SEC // the current term's SEC; nil on a standby

	pauses *pause.Gate
}

// New returns the orchestrator over its database.
func New(pool *pgxpool.Pool, logger *slog.Logger, cfg Config) (*App, error) {
	if cfg.SECID == "" {
		cfg.SECID = uuid.NewString()
	}
	if cfg.TaskPeriod == 0 {
		cfg.TaskPeriod = 30 * time.Second
	}
	if cfg.MaxSagasPerTask == 0 {
		cfg.MaxSagasPerTask = 64
	}
	if cfg.StepBatch < 0 || cfg.StepBatch > sagadef.MaxStepBatch {
		return nil, fmt.Errorf("step-batch: must be 0 to %d, got %d", sagadef.MaxStepBatch, cfg.StepBatch)
	}
	if cfg.Transport == nil {
		return nil, errors.New("app: no transport")
	}
	dial := func(addr, service string) (*grpc.ClientConn, error) {
		// The other services are always meant to be up: a call made while
		// one restarts waits (within its deadline) rather than failing a
		// saga node.
		return grpcclient.Dial(addr, cfg.Transport.DialOption(service), grpcclient.WaitForReady(), grpc.WithChainUnaryInterceptor(leader.UnaryClientInterceptor()))
	}
	vc, err := dial(cfg.VolumeAddr, mtls.VolumeService)
	if err != nil {
		return nil, err
	}
	ac, err := dial(cfg.AllocatorAddr, mtls.RegionAllocator)
	if err != nil {
		return nil, err
	}
	nc, err := dial(cfg.NotifierAddr, mtls.UpstairsNotifier)
	if err != nil {
		return nil, err
	}
	registry, err := sagadef.Registry()
	if err != nil {
		return nil, err
	}
	fr, err := formation.New(pool, cfg.DBMonitor)
	if err != nil {
		return nil, err
	}
	s := &App{
		pool: pool, logger: logger, cfg: cfg, formation: fr,

		lease:    leader.New(pool, cfg.SECID, leader.Config{TTL: cfg.LeaseTTL}, logger),
		registry: registry,
		driver:   background.NewDriver(logger),

		admission: tasks.NewAdmission(),
	}
	// A released repair lock may unblock a request or step insertion that
	// lost the contention: activate whoever retries those.
	s.store = store.New(pool, store.WithLockReleased(func() {
		sagadef.Wakeup(s.deps.Wake.RODetector, s.deps.Wake.ROStep, s.deps.Wake.RWDetector)
	}), store.WithRebuildLimits(cfg.Budgets))
	s.deps = &sagadef.Deps{
		Volumes:   volumev1.NewVolumeServiceClient(vc),
		Allocator: allocatorv1.NewRegionAllocatorServiceClient(ac),
		Notifier:  notifierv1.NewUpstairsNotifierServiceClient(nc),
		Store:     s.store,

		PantryEndpoints: cfg.PantryEndpoints,
		Sabotage:        cfg.Sabotage,
	}
	s.viewer = saga.NewSEC(pool, "viewer-"+cfg.SECID, registry, s.deps, logger)
	s.fences = map[string]commonv1.FenceServiceClient{
		"volume-service":    commonv1.NewFenceServiceClient(vc),
		"region-allocator":  commonv1.NewFenceServiceClient(ac),
		"upstairs-notifier": commonv1.NewFenceServiceClient(nc),
	}
	s.pauses = pause.New(s.store)
	tasks.Register(s.driver, tasks.Env{
		Deps: s.deps, Start: s.sagaStarter(), Period: cfg.TaskPeriod, MaxSagas: cfg.MaxSagasPerTask, Logger: logger,
		Retry: cfg.Retry, RWBounds: cfg.RWBounds, Pauses: s.pauses, Admission: s.admission, StepBatch: cfg.StepBatch,
	})
	return s, nil
}

// Run campaigns for the lease until ctx ends.
func (s *App) Run(ctx context.Context) {
	if unregister, err := s.registerMetrics(ctx); err != nil {
		s.logger.Warn("replacement metrics unavailable", "err", err)
	} else {
		defer unregister()
	}
	if unregister, err := s.registerBudgetMetrics(); err != nil {
		s.logger.Warn("rebuild budget metrics unavailable", "err", err)
	} else {
		defer unregister()
	}
	if unregister, err := s.registerFormationMetrics(); err != nil {
		s.logger.Warn("database replication metrics unavailable", "err", err)
	} else {
		defer unregister()
	}
	defer s.formation.Close()
	s.lease.Run(ctx, s.lead)
}

// lead runs one term: adopt the sagas of every other SEC (the lease
// guarantees they no longer run), recover them, then run the tasks until
// the term ends.
func (s *App) lead(term *leader.Term) {
	ctx := term.Ctx
	logger := s.logger.With("epoch", term.Epoch)
	sec := saga.NewSEC(s.pool, s.cfg.SECID, s.registry, s.deps, logger, saga.WithBaseContext(ctx), saga.WithUnwindGrace(s.UnwindGrace()),
		saga.WithCrashAt(s.cfg.CrashAt), saga.WithFailAt(s.cfg.FailAt), saga.WithActionRetry(s.cfg.ActionRetry))
	defer func() {
		s.mu.Lock()
		if s.sec == sec {
			s.sec = nil
		}
		s.mu.Unlock()
		c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = sec.Shutdown(c)
	}()
	// Raise every service's fence before any work: from now on nothing a
	// previous leader (paused, partitioned) sends can land anywhere.
	if err := s.advanceFences(ctx, term.Epoch); err != nil {
		logger.Error("raising the fences failed; not leading this term", "err", err)
		return
	}
	others, err := s.otherSECs(ctx)
	if err != nil && ctx.Err() == nil {
		logger.Error("listing other SECs' sagas", "err", err)
	}
	for _, other := range others {
		n, err := sec.Adopt(ctx, other)
		if err != nil {
			logger.Error("adopting sagas", "from", other, "err", err)
			continue
		}
		logger.Info("adopted sagas", "from", other, "count", n)
	}
	if !s.recover(ctx, sec, logger) {
		// Some saga could not be loaded (the database or a peer blinked):
		// keep trying for the whole term, or its request or step would wait
		// on it until the next change of leader.
		go func() {
			wait := time.Second
			for ctx.Err() == nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				if s.recover(ctx, sec, logger) {
					return
				}
				wait = min(2*wait, 30*time.Second)
			}
		}()
	}
	// Operators' holds before any task runs: a request paused under the
	// previous leader stays paused. Until they are read nothing starts
	// (the gate refuses), so a failure here only delays the tasks.
	defer s.pauses.Forget()
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		err := s.pauses.Load(ctx)
		if err == nil || ctx.Err() != nil {
			break
		}
		logger.Warn("reading operators' holds; retrying", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	s.mu.Lock()
	s.sec = sec
	s.mu.Unlock()
	s.driver.Run(ctx)
}

// recover recovers this SEC's unfinished sagas (those already running here
// are skipped) and reports whether every one was.
func (s *App) recover(ctx context.Context, sec *saga.SEC, logger *slog.Logger) bool {
	report, err := sec.Recover(ctx)
	if err != nil {
		if ctx.Err() == nil {
			logger.Error("saga recovery", "err", err)
		}
		return false
	}
	logger.Info("saga recovery", "recovered", len(report.Recovered), "abandoned", len(report.Abandoned), "failed", len(report.Failed))
	// A request or step whose saga is abandoned (recovery could not read
	// its log, now or in an earlier term) goes back where its task retries
	// it, rather than wait on a saga that will never move.
	reconciled, err := s.store.ReconcileOrphans(ctx)
	if err != nil {
		if ctx.Err() == nil {
			logger.Error("reconcile the records of abandoned sagas", "err", err)
		}
		return false
	}
	for _, r := range reconciled {
		logger.Warn("record of an abandoned saga put back", "what", r.What, "id", r.ID, "from", r.From, "to", r.To)
	}
	for _, f := range report.Failed {
		logger.Warn("saga not recovered yet; retrying", "err", f)
	}
	// A task wakes when a saga it started ends; nothing started these, so
	// each one's end wakes every task (the one activation at start may
	// have found its record still held by the saga, an unwinding step
	// say, with nothing to wake it later).
	for _, id := range report.Recovered {
		go func() {
			if _, err := sec.Wait(ctx, id); err == nil {
				sagadef.Wakeup(s.deps.Wake.All)
			}
		}()
	}
	return len(report.Failed) == 0
}

// advanceFences raises each service's fence to epoch, retrying each until it
// answers or the term ends.
func (s *App) advanceFences(ctx context.Context, epoch int64) error {
	for name, f := range s.fences {
		for {
			c, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := f.AdvanceEpoch(c, &commonv1.AdvanceEpochRequest{Epoch: epoch})
			cancel()
			if err == nil {
				break
			}
			if status.Code(err) == codes.FailedPrecondition || ctx.Err() != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			s.logger.Warn("raising fence", "service", name, "err", err)
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// otherSECs lists the owners of unfinished sagas other than this process.
func (s *App) otherSECs(ctx context.Context) ([]string, error) {
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT current_sec FROM saga
		WHERE saga_state IN ('running', 'unwinding') AND current_sec IS NOT NULL AND current_sec <> $1`, s.cfg.SECID)
	if err != nil {
		return nil, err
	}
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// CurrentSEC returns the term's SEC, or Unavailable on a standby.
func (s *App) CurrentSEC() (*saga.SEC, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.sec == nil || s.lease.Current() == nil {
		return nil, status.Error(codes.Unavailable, "this orchestrator is not the leader (or is still recovering); retry")
	}
	return s.sec, nil
}

// UnwindGrace is the configured grace, or the default when unset.
func (s *App) UnwindGrace() time.Duration {
	if s.cfg.UnwindGrace > 0 {
		return s.cfg.UnwindGrace
	}
	return saga.DefaultUnwindGrace
}

// sagaStarter lets tasks start sagas on the current term's SEC.
func (s *App) sagaStarter() tasks.Starter {
	return func(ctx context.Context, t *saga.Template, params any, opts ...saga.CreateOption) (uuid.UUID, <-chan saga.Outcome, error) {
		sec, err := s.CurrentSEC()
		if err != nil {
			return uuid.Nil, nil, err
		}
		id, err := sec.Create(ctx, t, params, opts...)
		if err != nil {
			return uuid.Nil, nil, err
		}
		done := make(chan saga.Outcome, 1)
		go func() {
			o, err := sec.Wait(context.WithoutCancel(ctx), id)
			if err != nil {
				o = saga.Outcome{SagaID: id}
			}
			done <- o
		}()
		return id, done, nil
	}
}

// Store is the orchestrator's SQL store.
func (s *App) Store() *store.Store { return s.store }

// Pauses is the leader's gate for operators' holds (package pause).
func (s *App) Pauses() *pause.Gate { return s.pauses }

// Deps are the clients and hooks the sagas use; the handlers use the same
// clients.
func (s *App) Deps() *sagadef.Deps { return s.deps }

// Admission is the rebuild budgets' planning state (what the leader's last
// passes held back).
func (s *App) Admission() *tasks.Admission { return s.admission }

// Driver runs the background tasks.
func (s *App) Driver() *background.Driver { return s.driver }

// Viewer reads the saga log on leader and standby alike.
func (s *App) Viewer() *saga.SEC { return s.viewer }

// Lease is this process's view of the leader lease.
func (s *App) Lease() *leader.Lease { return s.lease }

// Logger is the process's logger.
func (s *App) Logger() *slog.Logger { return s.logger }

// Formation reads the database's formation: the connected node, its
// standbys and, with --db-monitor, pg_auto_failover's monitor.
func (s *App) Formation() *formation.Reader { return s.formation }

// Pool is the orchestrator's database.
func (s *App) Pool() *pgxpool.Pool { return s.pool }

// Retry is the backoff before a request or step whose saga unwound is
// tried again.
func (s *App) Retry() tasks.RetryBackoff { return s.cfg.Retry }
