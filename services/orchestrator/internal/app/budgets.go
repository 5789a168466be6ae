package app

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"

	"storagecp.dev/orchestrator/internal/store"
)

// BudgetView is one rebuild budget as operators see it (GetRebuildBudgets,
// the budget metrics).
type BudgetView struct {
	Name  string
	Limit int
	// InUse: for per-sled budgets, the highest use over sleds.
	InUse   int
	Waiting int
	Runtime bool
	// BySled: per-sled budgets' use, sleds with none omitted.
	BySled map[string]int
}

// RebuildBudgets reads the budgets' limits and use from the database, and
// what the leader's last passes held back (zero on a standby).
func (s *App) RebuildBudgets(ctx context.Context) ([]BudgetView, error) {
	limits, runtime, err := s.store.RebuildLimits(ctx)
	if err != nil {
		return nil, err
	}
	slots, err := s.store.HeldSlots(ctx)
	if err != nil {
		return nil, err
	}
	steps, err := s.store.RunningSteps(ctx)
	if err != nil {
		return nil, fmt.Errorf("running steps: %w", err)
	}
	use := store.UseOf(slots, uuid.Nil)
	waiting := s.admission.Waiting()
	var out []BudgetView
	for _, name := range store.BudgetNames {
		v := BudgetView{Name: name, Limit: limits.Get(name), Waiting: waiting[name], Runtime: runtime[name]}
		switch name {
		case store.BudgetRackRebuilds:
			v.InUse = use.Rack
		case store.BudgetSourceSledRebuilds:
			v.InUse = store.MaxOf(use.BySource)
			v.BySled = map[string]int{}
			for k, n := range use.BySource {
				v.BySled[k.String()] = n
			}
		case store.BudgetDestSledRebuilds:
			v.InUse = store.MaxOf(use.ByDest)
			v.BySled = map[string]int{}
			for k, n := range use.ByDest {
				v.BySled[k.String()] = n
			}
		case store.BudgetRackSteps:
			v.InUse = steps
		}
		out = append(out, v)
	}
	return out, nil
}

// registerBudgetMetrics adds the budget gauges (names fixed for the
// alerts: storagecp.rebuild.budget.{limit,in_use,waiting}, attribute
// budget), reported by the leader like the other replacement gauges.
func (s *App) registerBudgetMetrics() (func(), error) {
	m := otel.Meter("storagecp/replacement")
	limit, err := m.Int64ObservableGauge("storagecp.rebuild.budget.limit",
		metric.WithDescription("each rebuild budget's limit (0: unlimited); reported by the leader"))
	if err != nil {
		return nil, err
	}
	inUse, err := m.Int64ObservableGauge("storagecp.rebuild.budget.in_use",
		metric.WithDescription("each rebuild budget's use now; for per-sled budgets the highest use over sleds; reported by the leader"))
	if err != nil {
		return nil, err
	}
	waiting, err := m.Int64ObservableGauge("storagecp.rebuild.budget.waiting",
		metric.WithDescription("work (requests or steps) each rebuild budget holds back now; reported by the leader"))
	if err != nil {
		return nil, err
	}
	reg, err := m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		s.mu.Lock()
		leading := s.sec != nil
		s.mu.Unlock()
		if !leading {
			return nil
		}
		views, err := s.RebuildBudgets(ctx)
		if err != nil {
			return err
		}
		for _, v := range views {
			attrs := metric.WithAttributes(attribute.String("budget", v.Name))
			o.ObserveInt64(limit, int64(v.Limit), attrs)
			o.ObserveInt64(inUse, int64(v.InUse), attrs)
			o.ObserveInt64(waiting, int64(v.Waiting), attrs)
		}
		return nil
	}, limit, inUse, waiting)
	if err != nil {
		return nil, err
	}
	return func() { _ = reg.Unregister() }, nil
}
