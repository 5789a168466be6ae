package fence_test

import (
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"slices"
	"testing"
	"testing/fstest"

	"storagecp.dev/platform/fence"
)

// The fence migration is in every service database's history: its bytes
// must stay those every service shipped as its own 001_fence.sql.
func TestSchemaNeverChanges(t *testing.T) {
	sum := sha256.Sum256([]byte(fence.Schema()))
	if got, want := hex.EncodeToString(sum[:]), "61a0ae4a3b7ce89bcd713b2ac1dda722759b38daaeed467240fa60d30dbf3523"; got != want {
		t.Fatalf("%s changed (sha256 %s, was %s): add a migration to every service instead", fence.MigrationName, got, want)
	}
}

func TestMigrations(t *testing.T) {
	m := fence.Migrations(fstest.MapFS{"002_b.sql": {Data: []byte("b")}, "003_c.sql": {Data: []byte("c")}})
	names, err := fs.Glob(m, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{fence.MigrationName, "002_b.sql", "003_c.sql"}; !slices.Equal(names, want) {
		t.Fatalf("migrations %v, want %v", names, want)
	}
	b, err := fs.ReadFile(m, fence.MigrationName)
	if err != nil || string(b) != fence.Schema() {
		t.Fatalf("%s: %q, %v", fence.MigrationName, b, err)
	}
	if b, err := fs.ReadFile(m, "002_b.sql"); err != nil || string(b) != "b" {
		t.Fatalf("002_b.sql: %q, %v", b, err)
	}
	if err := fstest.TestFS(m, fence.MigrationName, "002_b.sql", "003_c.sql"); err != nil {
		t.Fatal(err)
	}
	dup := fence.Migrations(fstest.MapFS{fence.MigrationName: {Data: []byte("x")}})
	if _, err := fs.ReadDir(dup, "."); err == nil {
		t.Fatal("a service's own 001_fence.sql was accepted")
	}
}
