// Package tracing checks what an operator sees of a replacement from the
// outside, over real processes: the whole replacement as one trace in a
// real Jaeger, no encryption key in any log, span or operational table, and
// each service's Prometheus metrics.
package tracing

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	commonv1 "storagecp.dev/gen/go/storage/common/v1"
	orchestratorv1 "storagecp.dev/gen/go/storage/orchestrator/v1"

	"storagecp.dev/integration/harness"
	"storagecp.dev/integration/rack"
	"storagecp.dev/testsupport/stack"
)

func TestMain(m *testing.M) { harness.Main(m) }

// canonical is the canonical read-only replacement: a disk, its snapshot,
// two clones running on sim-upstairs, and the disk of one of the
// snapshot's region snapshots expunged. It returns the request for that
// region snapshot once every request is terminal.
type canonical struct {
	disk, snap string
	clones     []string
	req        *orchestratorv1.Replacement
}

func runCanonical(t *testing.T, r *rack.Rack) canonical {
	t.Helper()
	c := canonical{disk: r.CreateDisk(t)}
	c.snap = r.Snapshot(t, c.disk)
	c.clones = []string{r.Clone(t, c.snap), r.Clone(t, c.snap)}
	for i, cl := range c.clones {
		r.Construct(t, cl, i)
	}
	old := r.Targets(t, c.snap, commonv1.TargetKind_TARGET_KIND_REGION_SNAPSHOT)[0]
	r.Expunge(t, r.DiskOf(t, old.DatasetId))
	for _, q := range r.WaitRequests(t, 60*time.Second) {
		if q.OldTargetId == old.TargetId {
			c.req = q
		}
	}
	if c.req == nil {
		t.Fatalf("no request for region snapshot %s", old.TargetId)
	}
	if c.req.ReadOnlyState != orchestratorv1.ReadOnlyReplacementState_READ_ONLY_REPLACEMENT_STATE_COMPLETE {
		t.Fatalf("request %s ended %v", c.req.ReplacementId, c.req.ReadOnlyState)
	}
	return c
}

// The replacement is one trace in Jaeger: the five sagas' spans, each with
// one child span per action node it ran, under them the RPC server spans
// of the volume-service, the region-allocator and the upstairs-notifier,
// and under those their PostgreSQL queries.
func TestReplacementIsOneTraceInJaeger(t *testing.T) {
	bin := jaegerBin(t)
	r := rack.Start(t, 4, 2, stack.Config{Tracing: true, JaegerBin: bin})
	c := runCanonical(t, r)
	parts := strings.Split(c.req.Traceparent, "-")
	if len(parts) != 4 {
		t.Fatalf("request traceparent %q", c.req.Traceparent)
	}
	traceID := parts[1]
	base := r.Stack.JaegerURL()
	ctx := context.Background()
	t.Logf("Jaeger: %s/trace/%s", base, traceID)

	// Each saga that worked on the request must be in the trace with every
	// action node it ran; the orchestrator's log says which ran.
	sagas, err := r.Admin.ListSagas(ctx, &orchestratorv1.ListSagasRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	actions := map[string][]string{} // saga id → action nodes that succeeded
	names := map[string]string{}
	for _, s := range sagas.Sagas {
		if !strings.HasPrefix(s.Name, "ro-replacement-") {
			continue
		}
		g, err := r.Admin.GetSaga(ctx, &orchestratorv1.GetSagaRequest{SagaId: s.SagaId})
		if err != nil {
			t.Fatal(err)
		}
		if g.Saga.Outcome != "succeeded" {
			continue // unwound (lock contention, say) and retried by its task
		}
		for _, n := range g.Nodes {
			if n.Kind == "action" && n.Status == "succeeded" {
				actions[s.SagaId] = append(actions[s.SagaId], n.Name)
			}
		}
		sort.Strings(actions[s.SagaId])
		names[s.SagaId] = s.Name
	}
	if len(names) < 7 {
		t.Fatalf("%d succeeded read-only replacement sagas, want at least 7: %v", len(names), names)
	}

	// Exporters batch: poll until Jaeger holds everything, or the deadline.
	var last *jaegerTrace
	harness.Eventually(t, 30*time.Second, "the whole replacement as one trace in Jaeger", func() error {
		tr, err := getTrace(ctx, base, traceID)
		if err != nil {
			return err
		}
		last = tr
		return checkTrace(tr, actions, names)
	})

	perService := map[string]int{}
	for _, s := range last.Spans {
		perService[last.Processes[s.ProcessID].ServiceName]++
	}
	keys := make([]string, 0, len(perService))
	for k := range perService {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Logf("trace %s: %4d spans from %s", traceID, perService[k], k)
	}
	t.Logf("trace %s: %4d spans in all", traceID, len(last.Spans))

	// The search API finds it by service and its root span's operation, as
	// an operator would (by service alone, the 100 newest traces are task
	// activations and lease renewals that ran after it).
	root := ""
	for _, s := range last.Spans {
		parented := false
		for _, ref := range s.References {
			// A root's only references are links (FOLLOWS_FROM) to the task
			// activation that started it.
			parented = parented || (ref.RefType == "CHILD_OF" && ref.TraceID == traceID)
		}
		if !parented && last.Processes[s.ProcessID].ServiceName == stack.Orchestrator {
			root = s.OperationName
		}
	}
	if root == "" {
		t.Fatalf("trace %s has no root span from %s", traceID, stack.Orchestrator)
	}
	body, err := searchTraces(ctx, base, stack.Orchestrator, root, 100)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), traceID) {
		t.Errorf("GET /api/traces?service=%s&operation=%s does not list trace %s", stack.Orchestrator, root, traceID)
	}
}

// checkTrace returns what the trace still lacks (nil when complete).
func checkTrace(tr *jaegerTrace, actions map[string][]string, names map[string]string) error {
	byID := map[string]jaegerSpan{}
	children := map[string][]jaegerSpan{}
	for _, s := range tr.Spans {
		byID[s.SpanID] = s
		if p := s.parent(); p != "" {
			children[p] = append(children[p], s)
		}
	}
	service := func(s jaegerSpan) string { return tr.Processes[s.ProcessID].ServiceName }
	// Saga spans, by template.
	sagaSpans := map[string][]jaegerSpan{}
	for _, s := range tr.Spans {
		if strings.HasPrefix(s.OperationName, "saga ") && service(s) == stack.Orchestrator {
			sagaSpans[s.tag("saga.name")] = append(sagaSpans[s.tag("saga.name")], s)
		}
	}
	want := map[string]int{"ro-replacement-start": 1, "ro-replacement-garbage-collect": 1, "ro-replacement-step": 2, "ro-replacement-step-garbage-collect": 2, "ro-replacement-finish": 1}
	for name, n := range want {
		if len(sagaSpans[name]) < n {
			return fmt.Errorf("%d %q saga spans, want %d", len(sagaSpans[name]), name, n)
		}
	}
	// Each succeeded saga in the trace: one child span per action node.
	nodeSpans := map[string]bool{}
	for _, list := range sagaSpans {
		for _, ss := range list {
			id := ss.tag("saga.id")
			wantNodes, ok := actions[id]
			if !ok {
				continue // unwound (e.g. lock contention) and retried: not checked
			}
			var got []string
			for _, ch := range children[ss.SpanID] {
				if ch.tag("saga.id") == id {
					got = append(got, ch.OperationName)
					nodeSpans[ch.SpanID] = true
				}
			}
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(wantNodes, ",") {
				return fmt.Errorf("saga %s (%s): node spans %v, want one per action node %v", id, names[id], got, wantNodes)
			}
		}
	}
	// Only one read-only request exists (one disk of the snapshot's three
	// was expunged), so every ro-replacement saga worked on it and belongs here.
	for id, name := range names {
		if !hasSagaSpan(sagaSpans[name], id) {
			return fmt.Errorf("saga %s (%s) has no span in the trace", id, name)
		}
	}
	// under reports whether some ancestor of s satisfies pred.
	under := func(s jaegerSpan, pred func(jaegerSpan) bool) bool {
		for p := s.parent(); p != ""; {
			ps, ok := byID[p]
			if !ok {
				return false
			}
			if pred(ps) {
				return true
			}
			p = ps.parent()
		}
		return false
	}
	isNode := func(s jaegerSpan) bool { return nodeSpans[s.SpanID] }
	for _, svc := range []string{stack.Volume, stack.Allocator, stack.Notifier} {
		var server, db bool
		for _, s := range tr.Spans {
			if service(s) != svc {
				continue
			}
			if s.tag("span.kind") == "server" && under(s, isNode) {
				server = true
			}
			if s.tag("db.system") == "postgresql" || s.tag("db.system.name") == "postgresql" {
				if under(s, func(p jaegerSpan) bool {
					return service(p) == svc && p.tag("span.kind") == "server" && under(p, isNode)
				}) {
					db = true
				}
			}
		}
		if !server {
			return fmt.Errorf("no %s RPC server span beneath a saga node span", svc)
		}
		if !db {
			return fmt.Errorf("no %s PostgreSQL span beneath its RPC server span", svc)
		}
	}
	return nil
}

func hasSagaSpan(list []jaegerSpan, id string) bool {
	for _, s := range list {
		if s.tag("saga.id") == id {
			return true
		}
	}
	return false
}
