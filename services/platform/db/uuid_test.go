package db_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgtype"

	"storagecp.dev/platform/pgtest"
)

func TestMain(m *testing.M) {
	pgtest.Main(m, pgtest.Schema{Name: "ids", Migrations: fstest.MapFS{
		"001_ids.sql": {Data: []byte(`CREATE TABLE ids (id uuid PRIMARY KEY, other uuid, many uuid[]);`)},
	}})
}

// uuid.UUID goes to PostgreSQL and back in binary form with the meaning
// its Valuer and Scanner gave it: values, pointers, NULLs and arrays.
func TestUUIDRoundTrip(t *testing.T) {
	ctx := context.Background()
	pool := pgtest.NewPool(t, "ids")
	id, other := uuid.New(), uuid.New()
	many := []uuid.UUID{uuid.New(), uuid.Nil, uuid.New()}
	if _, err := pool.Exec(ctx, `INSERT INTO ids VALUES ($1, $2, $3)`, id, &other, many); err != nil {
		t.Fatal(err)
	}
	var nilPtr *uuid.UUID
	if _, err := pool.Exec(ctx, `INSERT INTO ids VALUES ($1, $2, NULL)`, uuid.Nil, nilPtr); err != nil {
		t.Fatal(err)
	}

	var gotID, gotOther uuid.UUID
	var gotMany []uuid.UUID
	var text string
	err := pool.QueryRow(ctx, `SELECT id, other, many, id::text FROM ids WHERE id = $1`, id).Scan(&gotID, &gotOther, &gotMany, &text)
	if err != nil {
		t.Fatal(err)
	}
	if gotID != id || gotOther != other || text != id.String() {
		t.Fatalf("got %s %s (%s), want %s %s", gotID, gotOther, text, id, other)
	}
	if len(gotMany) != len(many) || gotMany[0] != many[0] || gotMany[1] != uuid.Nil || gotMany[2] != many[2] {
		t.Fatalf("array: got %v, want %v", gotMany, many)
	}

	// NULL: nil through a pointer; a plain UUID is left as it was, which
	// is what uuid.UUID's Scan (pgx's fallback) does.
	var nullable *uuid.UUID
	before := uuid.New()
	kept := before
	if err := pool.QueryRow(ctx, `SELECT other, other FROM ids WHERE id = $1`, uuid.Nil).Scan(&nullable, &kept); err != nil {
		t.Fatal(err)
	}
	if nullable != nil || kept != before {
		t.Fatalf("NULL scanned as %v and %s; want nil and %s unchanged", nullable, kept, before)
	}
	if err := pool.QueryRow(ctx, `SELECT other FROM ids WHERE id = $1`, id).Scan(&nullable); err != nil {
		t.Fatal(err)
	}
	if nullable == nil || *nullable != other {
		t.Fatalf("nullable column: got %v, want %s", nullable, other)
	}
}

// The binary encode plan is the one chosen, not the driver.Valuer fallback
// that formats a string.
func TestUUIDUsesBinaryEncodePlan(t *testing.T) {
	ctx := context.Background()
	conn, err := pgtest.NewPool(t, "ids").Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	m := conn.Conn().TypeMap()
	if p := fmt.Sprintf("%T", m.PlanEncode(pgtype.UUIDOID, pgtype.BinaryFormatCode, uuid.New())); !strings.Contains(p, "uuidEncodePlan") {
		t.Errorf("encode plan for uuid.UUID is %s", p)
	}
}
