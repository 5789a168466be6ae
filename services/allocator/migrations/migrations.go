// Package migrations embeds the region-allocator database schema, applied at start
// with tern (files NNN_name.sql, in order).
package migrations

import (
	"embed"

	"storagecp.dev/platform/fence"
)

// FS holds the migration files: the fence table's (platform/fence), then
// this service's own.
var FS = fence.Migrations(own)

//go:embed *.sql
var own embed.FS
