package server

import (
	"testing"

	"storagecp.dev/orchestrator/internal/store"
)

// Every state the store knows has an API value: a state added to the store
// but not here would reach clients as UNSPECIFIED.
func TestEveryStoreStateHasAnAPIState(t *testing.T) {
	for _, st := range store.ROStates {
		if _, ok := roStates[st]; !ok {
			t.Errorf("read-only state %q has no API state", st)
		}
	}
	for _, st := range store.RWStates {
		if _, ok := rwStates[st]; !ok {
			t.Errorf("rw state %q has no API state", st)
		}
	}
	for _, st := range store.StepStates {
		if _, ok := stepStates[st]; !ok {
			t.Errorf("step state %q has no API state", st)
		}
	}
	if len(roStates) != len(store.ROStates) || len(rwStates) != len(store.RWStates) || len(stepStates) != len(store.StepStates) {
		t.Errorf("the API maps and the store's state lists differ in length")
	}
}
