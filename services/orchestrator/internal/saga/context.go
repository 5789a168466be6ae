package saga

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/google/uuid"
)

// ActionContext is what an action or undo sees of its saga.
type ActionContext struct {
	sagaID  uuid.UUID
	node    int
	ex      *execution
	logger  *slog.Logger
	unknown bool
}

// OutcomeUnknown, in an undo, says the node's action failed with its
// outcome unknown: its last run ended in a retryable error (an answer lost
// after the call landed, a deadline that passed while it ran), so the
// unwind undoes it as if it had succeeded, without an output. An undo that
// reads its own node's output (Output) works out instead what the action
// meant to do, from the same inputs, and undoes that: every undo already
// treats "not there" as done.
func (c *ActionContext) OutcomeUnknown() bool { return c.unknown }

// SagaID is the saga's id (stable across recovery; use it to derive ids).
func (c *ActionContext) SagaID() uuid.UUID { return c.sagaID }

// NodeName is the node's full (scoped) name.
func (c *ActionContext) NodeName() string { return c.ex.dag.Nodes[c.node].Name }

// Deps is the SEC's dependency value (service clients and the like).
func (c *ActionContext) Deps() any { return c.ex.sec.deps }

// Logger is a logger tagged with the saga and node.
func (c *ActionContext) Logger() *slog.Logger { return c.logger }

// Params decodes the parameters of the node's (sub)saga into out.
func (c *ActionContext) Params(out any) error {
	raw, ok := c.ex.output(c.ex.dag.Nodes[c.node].ParamsNode)
	if !ok {
		return &ActionError{Kind: ErrKindDeserialize, Message: "saga parameters are not available"}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return &ActionError{Kind: ErrKindDeserialize, Message: fmt.Sprintf("decode saga parameters: %v", err)}
	}
	return nil
}

// Lookup decodes into out the output of node name, an ancestor in the same
// (sub)saga scope (an undo may also look up its own node).
func (c *ActionContext) Lookup(name string, out any) error {
	self := c.ex.dag.Nodes[c.node]
	full := self.Scope + name
	id, ok := c.ex.byName[full]
	// Scoping: a saga sees a subsaga only by its final output (its node
	// name), never its inner nodes or the engine's internal nodes.
	if !ok || strings.ContainsAny(name, ".@") {
		return &ActionError{Kind: ErrKindDeserialize, Message: fmt.Sprintf("lookup %q from %q: no such node", name, self.Name)}
	}
	if id != c.node && !c.ex.isAncestor(id, c.node) {
		return &ActionError{Kind: ErrKindDeserialize, Message: fmt.Sprintf("lookup %q from %q: not an ancestor", name, self.Name)}
	}
	raw, ok := c.ex.output(id)
	if !ok {
		return &ActionError{Kind: ErrKindDeserialize, Message: fmt.Sprintf("lookup %q from %q: no output", name, self.Name)}
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return &ActionError{Kind: ErrKindDeserialize, Message: fmt.Sprintf("lookup %q: decode: %v", name, err)}
	}
	return nil
}

// Output decodes the node's own output (for undos). There is none when
// OutcomeUnknown: it is an error to ask.
func (c *ActionContext) Output(out any) error {
	if c.unknown {
		return &ActionError{Kind: ErrKindDeserialize, Message: fmt.Sprintf("node %q failed with its outcome unknown: it has no output (ActionContext.OutcomeUnknown)", c.NodeName())}
	}
	return c.Lookup(strings.TrimPrefix(c.NodeName(), c.ex.dag.Nodes[c.node].Scope), out)
}

// Lookup is ActionContext.Lookup returning a typed value.
func Lookup[T any](ac *ActionContext, name string) (T, error) {
	var v T
	err := ac.Lookup(name, &v)
	return v, err
}

// Params is ActionContext.Params returning a typed value.
func Params[T any](ac *ActionContext) (T, error) {
	var v T
	err := ac.Params(&v)
	return v, err
}
