package main

import (
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"storagecp.dev/platform/server"
)

// The example configuration an operator installs loads against this
// binary's flags: no key it does not know, no value a flag rejects; the
// settings it shows commented out at their defaults too.
func TestExampleConfig(t *testing.T) {
	path := filepath.Join("..", "..", "..", "..", "deploy", "config", "region-allocator.toml")
	if err := server.CheckConfig(service(), path); err != nil {
		t.Fatal(err)
	}
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	commented := regexp.MustCompile(`(?m)^# ([a-z][a-z0-9-]* = .*)$`).ReplaceAll(text, []byte("$1"))
	uncommented := filepath.Join(t.TempDir(), "region-allocator.toml")
	if err := os.WriteFile(uncommented, commented, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := server.CheckConfig(service(), uncommented); err != nil {
		t.Fatalf("a commented-out setting: %v", err)
	}
}
