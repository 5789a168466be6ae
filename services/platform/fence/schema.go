package fence

import (
	"embed"
	"errors"
	"io"
	"io/fs"
	"slices"
	"strings"
)

// MigrationName is the file name of the fence table's migration, the first
// of every service database. Its name and content are part of every
// existing database's history (tern records the count of applied files, so
// a changed 001 would not run again where it already ran): never change
// either; a change to the fence table is a new migration of every service.
const MigrationName = "001_fence.sql"

//go:embed 001_fence.sql
var schema embed.FS

// Schema is the SQL of the fence table (the one row Check reads).
func Schema() string {
	b, err := schema.ReadFile(MigrationName)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// Migrations returns a service's migrations with the fence table's first:
// service is its own files (002 onward, at the root); the result also
// holds MigrationName, read from this package. Each service's migrations
// package exports the result, so the fence schema has one source.
func Migrations(service fs.FS) fs.FS { return withFence{service} }

type withFence struct{ service fs.FS }

var errDuplicate = errors.New("fence: a service's migrations must not hold " + MigrationName + " themselves")

func (w withFence) Open(name string) (fs.File, error) {
	switch name {
	case MigrationName:
		return schema.Open(name)
	case ".":
		entries, err := w.ReadDir(name)
		if err != nil {
			return nil, err
		}
		f, err := w.service.Open(name)
		if err != nil {
			return nil, err
		}
		return &rootDir{File: f, entries: entries}, nil
	}
	return w.service.Open(name)
}

// rootDir is the service's root directory listing the fence migration too.
type rootDir struct {
	fs.File
	entries []fs.DirEntry
}

func (d *rootDir) ReadDir(n int) ([]fs.DirEntry, error) {
	if n <= 0 {
		out := d.entries
		d.entries = nil
		return out, nil
	}
	if len(d.entries) == 0 {
		return nil, io.EOF
	}
	n = min(n, len(d.entries))
	out := d.entries[:n]
	d.entries = d.entries[n:]
	return out, nil
}

// ReadDir lists the root with the fence migration in it, sorted by name;
// fs.ReadDir and fs.Glob (and so tern) use it.
func (w withFence) ReadDir(name string) ([]fs.DirEntry, error) {
	entries, err := fs.ReadDir(w.service, name)
	if err != nil || name != "." {
		return entries, err
	}
	for _, e := range entries {
		if e.Name() == MigrationName {
			return nil, &fs.PathError{Op: "readdir", Path: name, Err: errDuplicate}
		}
	}
	own, err := fs.ReadDir(schema, ".")
	if err != nil {
		return nil, err
	}
	entries = append(entries, own...)
	slices.SortFunc(entries, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	return entries, nil
}
