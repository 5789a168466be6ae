package saga

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// ActionFunc is a node's forward action. It returns the node's output, which
// must survive a JSON round trip (it is persisted and read back by later
// nodes and after a crash). It may run more than once: it must converge to
// the same effect and an equivalent output.
type ActionFunc func(ctx context.Context, ac *ActionContext) (any, error)

// UndoFunc undoes a node whose action succeeded. Any error is permanent (the
// saga becomes stuck), so it must retry transient failures itself and treat
// "already gone" as success. It may run more than once.
type UndoFunc func(ctx context.Context, ac *ActionContext) error

// ShortcutFunc decides, from the saga's parameters and earlier outputs
// alone, that an action has nothing to do outside the saga, and returns
// the output the action would have returned. ok=false (or an error) runs
// the action as usual. It must not touch anything outside the saga: it
// runs on the saga's driver before anything is logged for the node.
type ShortcutFunc func(ac *ActionContext) (output any, ok bool, err error)

// Action is registered code: a forward action and an optional undo. Its
// global name is "<template>.<name>"; persisted DAGs refer to that name, so a
// binary must keep registering every action an unfinished saga names.
type Action struct {
	template *Template
	name     string
	do       ActionFunc
	undo     UndoFunc
	shortcut ShortcutFunc
}

// Shortcut lets the engine complete the node without running the action
// when f says it has nothing to do. The write-ahead rule (the node's
// `started` is durable before its action runs) exists for effects outside
// the saga; a node that has none needs no record until something depends
// on its output, so its `started` and `succeeded` go into the same commit
// as whatever the saga does next: a node fewer to commit and to schedule.
// The action runs f first too, so it behaves the same where the engine
// runs it as a task instead (tests with hooks, failure or crash points at
// the node), and replay cannot tell the two apart.
func (a *Action) Shortcut(f ShortcutFunc) *Action {
	do := a.do
	a.shortcut = f
	a.do = func(ctx context.Context, ac *ActionContext) (any, error) {
		out, ok, err := f(ac)
		if err != nil || ok {
			return out, err
		}
		return do(ctx, ac)
	}
	return a
}

// Local marks an action that has no effect outside the saga at all (it
// computes from its inputs or generates fresh ids): the engine may always
// run it on the driver, as with Shortcut. A fresh id made by a run whose
// record was lost is harmless, as nothing saw it.
func (a *Action) Local() *Action {
	do := a.do
	a.shortcut = func(ac *ActionContext) (any, bool, error) {
		out, err := do(context.Background(), ac)
		return out, err == nil, err
	}
	return a
}

// Name is the action's global name ("template.action").
func (a *Action) Name() string { return a.template.name + "." + a.name }

// Node is a DAG node named like the action.
func (a *Action) Node() Node { return ActionNode(a.name, a) }

// Template is a saga type: a name, the actions its DAGs use and a function
// that builds the DAG from typed parameters.
type Template struct {
	name    string
	actions map[string]*Action
	build   func(b *Builder, params json.RawMessage) error
}

// NewTemplate returns an empty template; add actions with Action and the
// DAG builder with SetBuild.
func NewTemplate(name string) *Template {
	return &Template{name: name, actions: map[string]*Action{}}
}

// Name is the template name.
func (t *Template) Name() string { return t.name }

// Action declares an action of this template (registered with it). undo may
// be nil: the node then needs no compensation. It panics on a duplicate or
// invalid name, which is a programming error found at start-up.
func (t *Template) Action(name string, do ActionFunc, undo UndoFunc) *Action {
	if err := checkName(name); err != nil {
		panic(fmt.Sprintf("saga template %s: action: %v", t.name, err))
	}
	if _, dup := t.actions[name]; dup {
		panic(fmt.Sprintf("saga template %s: duplicate action %q", t.name, name))
	}
	if do == nil {
		panic(fmt.Sprintf("saga template %s: action %q has no function", t.name, name))
	}
	a := &Action{template: t, name: name, do: do, undo: undo}
	t.actions[name] = a
	return a
}

// SetBuild sets the function that builds t's DAG from parameters of type P.
// The DAG is built once, at creation, and persisted; its shape may depend on
// the parameters.
func SetBuild[P any](t *Template, build func(b *Builder, params P) error) {
	t.build = func(b *Builder, raw json.RawMessage) error {
		var p P
		if err := json.Unmarshal(raw, &p); err != nil {
			return fmt.Errorf("saga %s: decode parameters: %w", t.name, err)
		}
		return build(b, p)
	}
}

// Node kinds in a built DAG.
const (
	KindStart        = "start"
	KindEnd          = "end"
	KindAction       = "action"
	KindConstant     = "constant"
	KindSubsagaStart = "subsaga_start"
	KindSubsagaEnd   = "subsaga_end"
)

// Names of the internal nodes. They cannot clash with user nodes, whose
// names may not contain '@' or '.'.
const (
	startNodeName = "@start"
	endNodeName   = "@end"
	subStartName  = "@params"
)

// Node is one element of a stage, made by ActionNode, ConstantNode or
// SubsagaNode.
type Node struct {
	kind       string
	name       string
	action     *Action
	constant   any
	sub        *Template
	subParams  any
	paramsFrom string
}

// ActionNode runs a (registered) action under the node name.
func ActionNode(name string, a *Action) Node { return Node{kind: KindAction, name: name, action: a} }

// ConstantNode outputs value; mostly used to feed subsaga parameters.
func ConstantNode(name string, value any) Node {
	return Node{kind: KindConstant, name: name, constant: value}
}

// SubsagaNode splices the DAG of template sub, built from buildParams, in
// place of this node. At run time the subsaga's actions read as parameters
// the output of paramsFrom, a node of an earlier stage (usually a constant
// holding the same value as buildParams). Inner node names are scoped:
// "name.inner". Later nodes read the subsaga's final output under name.
func SubsagaNode(name string, sub *Template, paramsFrom string, buildParams any) Node {
	return Node{kind: KindSubsagaEnd, name: name, sub: sub, subParams: buildParams, paramsFrom: paramsFrom}
}

func checkName(name string) error {
	if name == "" {
		return errors.New("empty node name")
	}
	if strings.ContainsAny(name, ".@") {
		return fmt.Errorf("node name %q contains '.' or '@'", name)
	}
	return nil
}

// DAG is a built, persistable saga graph. Nodes are in topological order:
// every parent has a smaller id than its children.
type DAG struct {
	Version  int             `json:"version"`
	Template string          `json:"template"`
	Params   json.RawMessage `json:"params"`
	Nodes    []DAGNode       `json:"nodes"`
}

// DAGNode is one node of a persisted DAG.
type DAGNode struct {
	// Name is unique in the DAG, scoped by subsaga: "sub.inner".
	Name string `json:"name"`
	Kind string `json:"kind"`
	// Action is the global action name (action nodes).
	Action string `json:"action,omitempty"`
	// Constant is the value of a constant node.
	Constant json.RawMessage `json:"constant,omitempty"`
	Parents  []int           `json:"parents"`
	// Scope is the name prefix of the (sub)saga the node belongs to
	// ("" at top level, "sub." inside subsaga "sub").
	Scope string `json:"scope,omitempty"`
	// ParamsNode is the start or subsaga-start node whose output is the
	// parameters of the node's scope.
	ParamsNode int `json:"params_node"`
	// From is, for a subsaga start, the node whose output becomes the
	// subsaga's parameters; for a subsaga end, the subsaga's final node.
	From int `json:"from,omitempty"`
}

const dagVersion = 1

// Builder assembles a DAG stage by stage. Errors are remembered and
// reported by the template's build.
type Builder struct {
	tmpl   *Template
	scope  string
	dag    *DAG
	byName map[string]int // full name → id
	last   []int          // nodes of the previous stage
	// earlier holds every node of earlier stages, by local name: the
	// ancestors a subsaga may take its parameters from.
	earlier    map[string]int
	paramsNode int
	stages     int
	err        error
}

// Append adds a stage of one node that depends on every node of the
// previous stage.
func (b *Builder) Append(n Node) { b.AppendParallel(n) }

// AppendParallel adds a stage of concurrent nodes, each depending on every
// node of the previous stage.
func (b *Builder) AppendParallel(nodes ...Node) {
	if b.err != nil {
		return
	}
	if len(nodes) == 0 {
		b.err = fmt.Errorf("saga %s: empty parallel stage", b.tmpl.name)
		return
	}
	parents := b.last
	var stage []int
	added := map[string]int{}
	for _, n := range nodes {
		if err := checkName(n.name); err != nil {
			b.err = fmt.Errorf("saga %s: %w", b.tmpl.name, err)
			return
		}
		full := b.scope + n.name
		if _, dup := b.byName[full]; dup {
			b.err = fmt.Errorf("saga %s: duplicate node name %q", b.tmpl.name, full)
			return
		}
		var id int
		switch n.kind {
		case KindAction:
			if n.action == nil || n.action.template != b.tmpl {
				b.err = fmt.Errorf("saga %s: node %q: action is not an action of this template", b.tmpl.name, full)
				return
			}
			id = b.add(DAGNode{Name: full, Kind: KindAction, Action: n.action.Name(), Parents: parents})
		case KindConstant:
			raw, err := json.Marshal(n.constant)
			if err != nil {
				b.err = fmt.Errorf("saga %s: constant %q: %w", b.tmpl.name, full, err)
				return
			}
			id = b.add(DAGNode{Name: full, Kind: KindConstant, Constant: raw, Parents: parents})
		case KindSubsagaEnd:
			var err error
			id, err = b.splice(n, parents)
			if err != nil {
				b.err = err
				return
			}
		default:
			b.err = fmt.Errorf("saga %s: zero Node value", b.tmpl.name)
			return
		}
		added[n.name] = id
		stage = append(stage, id)
	}
	for name, id := range added {
		b.earlier[name] = id
	}
	b.last = stage
	b.stages++
}

func (b *Builder) add(n DAGNode) int {
	n.Scope = b.scope
	n.ParamsNode = b.paramsNode
	if n.Parents == nil {
		n.Parents = []int{}
	}
	id := len(b.dag.Nodes)
	b.dag.Nodes = append(b.dag.Nodes, n)
	b.byName[n.Name] = id
	return id
}

func (b *Builder) splice(n Node, parents []int) (int, error) {
	full := b.scope + n.name
	if n.sub == nil || n.sub.build == nil {
		return 0, fmt.Errorf("saga %s: subsaga %q: template has no build function", b.tmpl.name, full)
	}
	from, ok := b.earlier[n.paramsFrom]
	if !ok {
		return 0, fmt.Errorf("saga %s: subsaga %q: parameters node %q is not an ancestor", b.tmpl.name, full, n.paramsFrom)
	}
	raw, err := json.Marshal(n.subParams)
	if err != nil {
		return 0, fmt.Errorf("saga %s: subsaga %q: parameters: %w", b.tmpl.name, full, err)
	}
	start := b.add(DAGNode{Name: full + "." + subStartName, Kind: KindSubsagaStart, Parents: parents, From: from})
	inner := &Builder{
		tmpl: n.sub, scope: full + ".", dag: b.dag, byName: b.byName,
		last: []int{start}, earlier: map[string]int{}, paramsNode: start,
	}
	if err := n.sub.build(inner, raw); err != nil {
		return 0, fmt.Errorf("saga %s: subsaga %q: %w", b.tmpl.name, full, err)
	}
	final, err := inner.finish()
	if err != nil {
		return 0, fmt.Errorf("saga %s: subsaga %q: %w", b.tmpl.name, full, err)
	}
	return b.add(DAGNode{Name: full, Kind: KindSubsagaEnd, Parents: []int{final}, From: final}), nil
}

// finish checks the builder produced a DAG with one final node and returns it.
func (b *Builder) finish() (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.stages == 0 {
		return 0, fmt.Errorf("saga %s: empty DAG", b.tmpl.name)
	}
	if len(b.last) != 1 {
		return 0, fmt.Errorf("saga %s: %d final nodes; the last stage must have exactly one node", b.tmpl.name, len(b.last))
	}
	return b.last[0], nil
}

// BuildDAG builds t's DAG for params (any JSON-marshalable value). Tests use
// it to iterate over a saga's nodes; Create uses it to persist the DAG.
func (t *Template) BuildDAG(params any) (*DAG, error) {
	if t.build == nil {
		return nil, fmt.Errorf("saga %s: template has no build function", t.name)
	}
	raw, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("saga %s: encode parameters: %w", t.name, err)
	}
	d := &DAG{Version: dagVersion, Template: t.name, Params: raw}
	b := &Builder{tmpl: t, dag: d, byName: map[string]int{}, earlier: map[string]int{}}
	start := b.add(DAGNode{Name: startNodeName, Kind: KindStart})
	b.last = []int{start}
	b.paramsNode = start
	if err := t.build(b, raw); err != nil {
		return nil, err
	}
	final, err := b.finish()
	if err != nil {
		return nil, err
	}
	b.add(DAGNode{Name: endNodeName, Kind: KindEnd, Parents: []int{final}, From: final})
	return d, nil
}

// ActionNodes lists the names of the DAG's action nodes in topological
// order (what the test helpers iterate over).
func (d *DAG) ActionNodes() []string {
	var names []string
	for _, n := range d.Nodes {
		if n.Kind == KindAction {
			names = append(names, n.Name)
		}
	}
	return names
}

// finalActions marks, by node index, the action nodes with no action node
// after them: the saga's commit points. Nodes are in topological order,
// so one reverse pass sees every child before its parents.
func (d *DAG) finalActions() []bool {
	children := make([][]int, len(d.Nodes))
	for id, n := range d.Nodes {
		for _, p := range n.Parents {
			children[p] = append(children[p], id)
		}
	}
	below := make([]bool, len(d.Nodes)) // an action node after it
	final := make([]bool, len(d.Nodes))
	for id := len(d.Nodes) - 1; id >= 0; id-- {
		for _, c := range children[id] {
			if d.Nodes[c].Kind == KindAction || below[c] {
				below[id] = true
			}
		}
		final[id] = d.Nodes[id].Kind == KindAction && !below[id]
	}
	return final
}

// FinalActionNodes lists the names of the action nodes with no action
// node after them: the commit points, whose retryable failures are retried
// until they clear rather than unwound (doc.go, "Retries").
func (d *DAG) FinalActionNodes() []string {
	var names []string
	for id, f := range d.finalActions() {
		if f {
			names = append(names, d.Nodes[id].Name)
		}
	}
	return names
}

// validate checks a loaded DAG's structure (a corrupt row must not crash
// the engine).
func (d *DAG) validate() error {
	if d.Version != dagVersion {
		return fmt.Errorf("unsupported DAG version %d", d.Version)
	}
	if len(d.Nodes) < 2 || d.Nodes[0].Kind != KindStart || d.Nodes[len(d.Nodes)-1].Kind != KindEnd {
		return errors.New("DAG must begin with a start node and end with an end node")
	}
	seen := map[string]bool{}
	for id, n := range d.Nodes {
		if seen[n.Name] {
			return fmt.Errorf("duplicate node name %q", n.Name)
		}
		seen[n.Name] = true
		if id > 0 && len(n.Parents) == 0 {
			return fmt.Errorf("node %q has no parent", n.Name)
		}
		for _, p := range n.Parents {
			if p < 0 || p >= id {
				return fmt.Errorf("node %q: parent %d out of order", n.Name, p)
			}
		}
		if n.ParamsNode < 0 || n.ParamsNode >= len(d.Nodes) || (id > 0 && n.ParamsNode >= id) {
			return fmt.Errorf("node %q: bad params node", n.Name)
		}
		if (n.Kind == KindSubsagaStart || n.Kind == KindSubsagaEnd || n.Kind == KindEnd) && (n.From < 0 || n.From >= id) {
			return fmt.Errorf("node %q: bad source node", n.Name)
		}
	}
	return nil
}
