package target

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in    string
		canon string
		err   error
	}{
		{"[fd00::1]:19000", "[fd00::1]:19000", nil},
		{"[FD00:0:0::0001]:19000", "[fd00::1]:19000", nil},
		{"[fd00::1]:65535", "[fd00::1]:65535", nil},
		{"[::]:1", "[::]:1", nil},
		{"[::ffff:10.0.0.1]:19000", "", ErrIPv4},
		{"10.0.0.1:19000", "", ErrIPv4},
		{"[fe80::1%eth0]:19000", "", ErrZone},
		{"[fd00::1]:0", "", ErrPortZero},
		{"[fd00::1]:65536", "", ErrMalformed},
		{"fd00::1:19000", "", ErrMalformed},
		{"[fd00::1]", "", ErrMalformed},
		{"localhost:19000", "", ErrMalformed},
		{"", "", ErrMalformed},
	} {
		got, err := Canonical(c.in)
		if !errors.Is(err, c.err) || (c.err == nil) != (err == nil) || got != c.canon {
			t.Errorf("Canonical(%q) = %q, %v; want %q, %v", c.in, got, err, c.canon, c.err)
		}
	}
}

func TestParseIP(t *testing.T) {
	for in, ok := range map[string]bool{
		"fd00::1": true, "::": true, "10.0.0.1": false, "::ffff:10.0.0.1": false,
		"fe80::1%eth0": false, "[fd00::1]": false, "": false,
	} {
		if _, err := ParseIP(in); (err == nil) != ok {
			t.Errorf("ParseIP(%q): %v", in, err)
		}
	}
}

func TestParseAll(t *testing.T) {
	got, err := ParseAll("addresses", []string{"[fd00::1]:19000", "[fd00:0::2]:19001"})
	if err != nil || len(got) != 2 || got[1].String() != "[fd00::2]:19001" {
		t.Fatalf("ParseAll: %v, %v", got, err)
	}
	_, err = ParseAll("addresses", []string{"[fd00::1]:19000", "10.0.0.1:19000"})
	if status.Code(err) != codes.InvalidArgument || !strings.HasPrefix(status.Convert(err).Message(), "addresses[1]: ") {
		t.Fatalf("a bad second address: %v", err)
	}
}
