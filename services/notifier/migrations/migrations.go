// Package migrations embeds the upstairs-notifier database schema, applied at start
// with tern (files NNN_name.sql, in order).
package migrations

import "embed"

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS
