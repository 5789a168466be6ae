package app

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"storagecp.dev/orchestrator/internal/store"
)

// registerMetrics adds the gauges of replacement requests and steps by
// state, read from the database at each scrape (one GROUP BY per table over
// its state index), and initialises the DataLost counter. Only the leader
// reports the gauges: every orchestrator reads the same rows, and a sum
// over instances must not count them twice. The returned function
// unregisters.
func (s *App) registerMetrics(ctx context.Context) (func(), error) {
	m := otel.Meter("storagecp/replacement")
	// The counter ro-replacement-start adds to (sagadef/ro_start.go, same name and
	// description, so the SDK hands out the same instrument): at zero from
	// the start, so "DataLost > 0" has a series to alert on.
	if c, err := m.Int64Counter("storagecp.replacement.data_lost",
		metric.WithDescription("read-only replacement requests that ended DataLost: no surviving copy to clone from")); err == nil {
		for _, kind := range []string{"region_snapshot", "read_only_region"} {
			c.Add(ctx, 0, metric.WithAttributes(attribute.String("kind", kind)))
		}
	}
	requests, err := m.Int64ObservableGauge("storagecp.replacement.requests",
		metric.WithDescription("replacement requests by kind (read_only, read_write) and state; reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("requests gauge: %w", err)
	}
	steps, err := m.Int64ObservableGauge("storagecp.replacement.steps",
		metric.WithDescription("read-only replacement steps (one per volume that referenced the replaced target) by state; reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("steps gauge: %w", err)
	}
	lockWait, err := m.Float64ObservableGauge("storagecp.replacement.oldest_lock_wait",
		metric.WithUnit("s"),
		metric.WithDescription("how long the longest waiter in any volume's repair-lock queue has waited (0 when none waits); reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("lock wait gauge: %w", err)
	}
	lockWaiters, err := m.Int64ObservableGauge("storagecp.replacement.lock_waiters",
		metric.WithDescription("takers waiting in volumes' repair-lock queues; reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("lock waiters gauge: %w", err)
	}
	paused, err := m.Int64ObservableGauge("storagecp.replacement.paused",
		metric.WithDescription("unfinished replacement requests an operator holds by their own pause (PauseReplacement); reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("paused gauge: %w", err)
	}
	rackPaused, err := m.Int64ObservableGauge("storagecp.replacement.rack_paused",
		metric.WithDescription("1 while an operator holds every replacement of the rack (PauseReplacement with rack), else 0; reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("rack paused gauge: %w", err)
	}
	stalled, err := m.Float64ObservableGauge("storagecp.replacement.stalled",
		metric.WithUnit("s"),
		metric.WithDescription("how long the longest-idle unfinished replacement request nobody holds has gone without progress (no change to it, its steps or its drive steps); 0 when none; reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("stalled gauge: %w", err)
	}
	// At zero from the start, like the DataLost counter (the drive task
	// adds to it: background/tasks/metrics.go).
	if c, err := m.Int64Counter("storagecp.replacement.gave_up",
		metric.WithDescription("rw replacements ended DataLost or NeedsOperator by their drive's bounds")); err == nil {
		for _, end := range []string{"data_lost", "needs_operator"} {
			c.Add(ctx, 0, metric.WithAttributes(attribute.String("end", end)))
		}
	}
	reg, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s.mu.Lock()
		leading := s.sec != nil
		s.mu.Unlock()
		if !leading {
			return nil
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		counts := func(table string) (map[string]int64, error) {
			rows, err := s.pool.Query(ctx, "SELECT state, count(*) FROM "+table+" GROUP BY state")
			if err != nil {
				return nil, fmt.Errorf("count %s by state: %w", table, err)
			}
			defer rows.Close()
			out := map[string]int64{}
			for rows.Next() {
				var st string
				var n int64
				if err := rows.Scan(&st, &n); err != nil {
					return nil, fmt.Errorf("count %s by state: %w", table, err)
				}
				out[st] = n
			}
			return out, rows.Err()
		}
		ro, err := counts("ro_replacement")
		if err != nil {
			return err
		}
		// Every known state, so each series exists (at zero) from the first
		// scrape: an alert on "requests in state X" must not depend on one
		// having been seen. The lists are the store's.
		for _, st := range store.ROStates {
			o.ObserveInt64(requests, ro[string(st)], metric.WithAttributes(attribute.String("kind", "read_only"), attribute.String("state", string(st))))
		}
		rw, err := counts("rw_replacement")
		if err != nil {
			return err
		}
		for _, st := range store.RWStates {
			o.ObserveInt64(requests, rw[string(st)], metric.WithAttributes(attribute.String("kind", "read_write"), attribute.String("state", string(st))))
		}
		st, err := counts("ro_replacement_step")
		if err != nil {
			return err
		}
		for _, state := range store.StepStates {
			o.ObserveInt64(steps, st[string(state)], metric.WithAttributes(attribute.String("state", string(state))))
		}
		oldest, waiters, err := s.store.OldestLockWait(ctx)
		if err != nil {
			return fmt.Errorf("oldest lock wait: %w", err)
		}
		o.ObserveFloat64(lockWait, oldest.Seconds())
		o.ObserveInt64(lockWaiters, int64(waiters))
		held, rack, err := s.store.PausedRequests(ctx)
		if err != nil {
			return fmt.Errorf("paused requests: %w", err)
		}
		o.ObserveInt64(paused, held)
		o.ObserveInt64(rackPaused, map[bool]int64{false: 0, true: 1}[rack])
		idle, err := s.store.Stalled(ctx)
		if err != nil {
			return fmt.Errorf("stalled requests: %w", err)
		}
		o.ObserveFloat64(stalled, idle.Seconds())
		return nil
	}, requests, steps, lockWait, lockWaiters, paused, rackPaused, stalled)
	if err != nil {
		return nil, fmt.Errorf("register replacement gauges: %w", err)
	}
	return func() { _ = reg.Unregister() }, nil
}

// syncStates are pg_stat_replication's sync_state values: each has a
// series, at zero when no standby is in it, so that "no sync standby" is
// a value to alert on rather than a missing series.
var syncStates = []string{"sync", "quorum", "potential", "async"}

// registerFormationMetrics adds the replication gauges, read at each
// scrape from the node this process is connected to (the primary, through
// the multi-host DSN): each standby's replay lag in bytes, and the standbys
// by sync state. Like the replacement gauges, only the leader reports them,
// so that a sum over instances counts each standby once; a scrape that
// cannot reach the database reports none (the RPC says why).
func (s *App) registerFormationMetrics() (func(), error) {
	m := otel.Meter("storagecp/database")
	lag, err := m.Int64ObservableGauge("storagecp.db.replication_lag",
		metric.WithUnit("By"),
		metric.WithDescription("how far each standby's replayed WAL is behind the primary's current position (pg_stat_replication), by standby application_name; reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("replication lag gauge: %w", err)
	}
	standbys, err := m.Int64ObservableGauge("storagecp.db.standbys",
		metric.WithDescription("standbys streaming from the primary, by sync_state (sync or quorum: commits wait for it); reported by the leader"))
	if err != nil {
		return nil, fmt.Errorf("standbys gauge: %w", err)
	}
	reg, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s.mu.Lock()
		leading := s.sec != nil
		s.mu.Unlock()
		if !leading {
			return nil
		}
		c := s.formation.ReadConnection(ctx)
		if c.Error != "" || !c.Primary {
			return nil
		}
		counts := map[string]int64{}
		for _, sb := range c.Standbys {
			counts[sb.SyncState]++
			if sb.State != "" {
				o.ObserveInt64(lag, sb.ReplayLagBytes, metric.WithAttributes(attribute.String("standby", sb.ApplicationName)))
			}
		}
		for _, st := range syncStates {
			o.ObserveInt64(standbys, counts[st], metric.WithAttributes(attribute.String("sync_state", st)))
		}
		return nil
	}, lag, standbys)
	if err != nil {
		return nil, fmt.Errorf("register database gauges: %w", err)
	}
	return func() { _ = reg.Unregister() }, nil
}
