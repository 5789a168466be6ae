// Package bgtasks holds the orchestrator's background tasks, one per file,
// each returning a status struct per activation (the style of Nexus's
// background tasks). Tasks only start sagas; they never wait for them.
package bgtasks

import (
	"context"
	"log/slog"
	"time"

	"github.com/google/uuid"

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
	_ = d
	_ = env
}
