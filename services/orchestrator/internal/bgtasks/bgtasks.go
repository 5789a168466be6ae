// Package bgtasks holds the orchestrator's background tasks, one per file,
// each returning a status struct per activation (the style of Nexus's
// background tasks). Tasks only start sagas; they never wait for them. Each
// runs on its period (the safety net) and is activated at once by the saga
// or task that advanced the records it waits on, so a replacement flows
// through its phases without waiting for a period.
package bgtasks

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"storagecp.dev/orchestrator/internal/saga"
	"storagecp.dev/orchestrator/internal/sagas"
	"storagecp.dev/orchestrator/internal/tasks"
)

// Starter creates a saga on the leader's SEC and returns its id and a
// channel that receives its outcome.
type Starter func(ctx context.Context, t *saga.Template, params any, opts ...saga.CreateOption) (uuid.UUID, <-chan saga.Outcome, error)

// Env is what every task gets.
type Env struct {
	Deps     *sagas.Deps
	Start    Starter
	Period   time.Duration
	MaxSagas int
	Logger   *slog.Logger
}

// Register adds every background task to the driver.
func Register(d *tasks.Driver, env Env) {
	if env.MaxSagas <= 0 {
		env.MaxSagas = 64
	}
	add := func(t tasks.Task, l *tasks.Limiter) { d.Register(t, env.Period, l) }
	add(&roDetector{env: env}, nil)
	start := &roStart{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1)}
	add(start, start.limiter)
	gc := &roGC{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1)}
	add(gc, gc.limiter)
	step := &roStep{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1), scans: pacer{every: rescanEvery}}
	add(step, step.limiter)
	finish := &roFinish{env: env, limiter: tasks.NewLimiter(env.MaxSagas, 1)}
	add(finish, finish.limiter)
	registerRW(d, env)
}

// startSaga starts a saga if the limiter has room for key, releasing the
// slot when the saga ends. It reports whether it started one.
func startSaga(ctx context.Context, env Env, l *tasks.Limiter, key string, t *saga.Template, params any, opts ...saga.CreateOption) (bool, error) {
	release, ok := l.TryAcquire(key)
	if !ok {
		return false, nil
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, saga.WithLinks(trace.Link{SpanContext: sc}))
	}
	_, done, err := env.Start(ctx, t, params, opts...)
	if err != nil {
		release()
		return false, err
	}
	go func() {
		<-done
		release()
	}()
	return true, nil
}

// newRequestTrace starts the root span of a new replacement request and
// returns its traceparent: every saga working on the request is created as
// its child (linked to the activation that started it), so one replacement
// is one trace.
func newRequestTrace(ctx context.Context, name string, attrs ...attribute.KeyValue) string {
	opts := []trace.SpanStartOption{trace.WithNewRoot(), trace.WithAttributes(attrs...)}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc}))
	}
	c, span := otel.Tracer("storagecp/replacement").Start(ctx, name, opts...)
	defer span.End()
	carrier := propagation.MapCarrier{}
	propagation.TraceContext{}.Inject(c, carrier)
	return carrier["traceparent"]
}

// errs collects per-item errors into a status list.
func errf(list *[]string, format string, args ...any) {
	*list = append(*list, fmt.Sprintf(format, args...))
}
