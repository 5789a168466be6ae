package main

import (
	"path/filepath"
	"testing"

	"storagecp.dev/platform/server"
)

// The example configuration an operator installs loads against this
// binary's flags, its commented-out settings too.
func TestExampleConfig(t *testing.T) {
	if err := server.CheckExampleConfig(service(), filepath.Join("..", "..", "..", "..", "deploy", "config", "replacement-orchestrator.toml")); err != nil {
		t.Fatal(err)
	}
}
