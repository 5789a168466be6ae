// Package sagabench holds what the saga engine's throughput measurements
// share: the Go benchmarks and cmd/sagalog-bench, which runs them on a
// fan-out's cluster.
package sagabench

import (
	"context"
	"fmt"

	"storagecp.dev/orchestrator/internal/saga"
)

// NoopTemplate is a saga of n sequential action nodes (n is the saga's
// parameter) that do nothing: what it costs is the saga log.
func NoopTemplate(name string) *saga.Template {
	t := saga.NewTemplate(name)
	step := t.Action("step", func(context.Context, *saga.ActionContext) (any, error) { return struct{}{}, nil },
		func(context.Context, *saga.ActionContext) error { return nil })
	saga.SetBuild(t, func(b *saga.Builder, n int) error {
		for i := range n {
			b.Append(saga.ActionNode(fmt.Sprintf("n%d", i), step))
		}
		return nil
	})
	return t
}
