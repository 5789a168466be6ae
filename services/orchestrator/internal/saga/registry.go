package saga

import (
	"errors"
	"fmt"
	"sort"
)

// ErrUnknownAction means a persisted DAG names an action this binary does
// not register. Recovery treats it as permanent and abandons the saga.
var ErrUnknownAction = errors.New("unknown saga action")

// Registry maps global action names to code. Build it once at start-up with
// every template (subsaga templates included) and share it read-only.
type Registry struct {
	templates map[string]*Template
	actions   map[string]*Action
}

// NewRegistry registers templates; duplicate template names are an error.
func NewRegistry(templates ...*Template) (*Registry, error) {
	r := &Registry{templates: map[string]*Template{}, actions: map[string]*Action{}}
	for _, t := range templates {
		if err := r.Register(t); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Register adds a template and its actions. Call it before the SEC starts.
func (r *Registry) Register(t *Template) error {
	if _, dup := r.templates[t.name]; dup {
		return fmt.Errorf("saga template %q registered twice", t.name)
	}
	r.templates[t.name] = t
	for _, a := range t.actions {
		r.actions[a.Name()] = a
	}
	return nil
}

// Templates lists the registered template names, sorted.
func (r *Registry) Templates() []string {
	names := make([]string, 0, len(r.templates))
	for n := range r.templates {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (r *Registry) action(name string) (*Action, error) {
	a, ok := r.actions[name]
	if !ok {
		return nil, fmt.Errorf("%w %q", ErrUnknownAction, name)
	}
	return a, nil
}

// check resolves every action a DAG names.
func (r *Registry) check(d *DAG) error {
	for _, n := range d.Nodes {
		if n.Kind == KindAction {
			if _, err := r.action(n.Action); err != nil {
				return fmt.Errorf("node %q: %w", n.Name, err)
			}
		}
	}
	return nil
}
