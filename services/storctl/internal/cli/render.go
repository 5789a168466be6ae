package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// table renders aligned columns. Empty cells print as "-" so that columns
// stay parseable with awk.
type table struct{ tw *tabwriter.Writer }

func newTable(w io.Writer) *table {
	return &table{tw: tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)}
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
		// A tab or newline inside a cell would break the layout.
		cells[i] = strings.NewReplacer("\t", " ", "\n", " ").Replace(cells[i])
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
}

func (t *table) flush() error { return t.tw.Flush() }

// renderTable writes a header and rows.
func renderTable(w io.Writer, header []string, rows [][]string) error {
	t := newTable(w)
	t.row(header...)
	for _, r := range rows {
		t.row(r...)
	}
	return t.flush()
}

// renderFields writes "key: value" lines, aligned.
func renderFields(w io.Writer, kv [][2]string) error {
	t := newTable(w)
	for _, f := range kv {
		t.row(f[0]+":", f[1])
	}
	return t.flush()
}

// marshalJSON is protojson (field names as grpcurl prints them) made
// stable: protojson deliberately varies its whitespace between builds,
// which scripts and golden files must not see, so the output is
// re-indented by encoding/json.
func marshalJSON(m proto.Message) ([]byte, error) {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", m, err)
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return nil, fmt.Errorf("indent %T: %w", m, err)
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

func (e *env) json() bool { return e.opts.output == "json" }

// printJSON writes one message as JSON.
func (e *env) printJSON(m proto.Message) error {
	b, err := marshalJSON(m)
	if err != nil {
		return err
	}
	_, err = e.stdout.Write(b)
	return err
}

// enum shortens a proto enum name for a table: READ_ONLY_REPLACEMENT_STATE_
// RUNNING with prefix READ_ONLY_REPLACEMENT_STATE_ is "running";
// UNSPECIFIED is empty.
func enum(v fmt.Stringer, prefix string) string {
	s := strings.TrimPrefix(v.String(), prefix)
	if s == "UNSPECIFIED" {
		return ""
	}
	return strings.ToLower(s)
}

// ts formats a timestamp in UTC to the second; empty when unset.
func ts(t *timestamppb.Timestamp) string {
	if t == nil {
		return ""
	}
	return t.AsTime().UTC().Format(time.RFC3339)
}

func dur(d *durationpb.Duration) string {
	if d == nil {
		return ""
	}
	return d.AsDuration().String()
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func bytesGiB(n int64) string {
	return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
}

// compactJSON folds indented JSON onto one line.
func compactJSON(b []byte) string {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return strings.TrimSpace(string(b))
	}
	return buf.String()
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
