// Package target holds the one rule for a downstairs target address, the
// "[ipv6]:port" socket address of a region or region snapshot, that every
// service applies to the addresses it is given or stores.
//
// The rule: an IPv6 address (an IPv4 address, or an IPv4-mapped IPv6 one
// such as ::ffff:10.0.0.1, is refused: the fleet's underlay is IPv6 only),
// without a zone (%eth0: a link-local scope means nothing off the sled that
// wrote it), and a port other than 0 (no downstairs listens there). The
// canonical form is netip.AddrPort's String: RFC 5952 compressed IPv6 in
// brackets, then the decimal port. Every comparison and every stored
// address uses it, so equal targets are equal strings.
package target

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Errors name what is wrong with an address; test them with errors.Is. The
// error Parse returns also quotes the address (short), so its message can
// be shown as it is.
var (
	// ErrMalformed: not "[ipv6]:port" at all.
	ErrMalformed = errors.New(`not "[ipv6]:port"`)
	// ErrIPv4: an IPv4 or IPv4-mapped IPv6 address.
	ErrIPv4 = errors.New("IPv4 (or IPv4-mapped) address; targets must be IPv6")
	// ErrZone: an IPv6 address with a zone.
	ErrZone = errors.New("zoned IPv6 address; targets take no zone")
	// ErrPortZero: port 0.
	ErrPortZero = errors.New("port 0")
)

// Parse parses a target address by the rule of the package comment.
func Parse(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, wrap(s, ErrMalformed)
	}
	if err := checkAddr(ap.Addr()); err != nil {
		return netip.AddrPort{}, wrap(s, err)
	}
	if ap.Port() == 0 {
		return netip.AddrPort{}, wrap(s, ErrPortZero)
	}
	return ap, nil
}

// ParseAll parses a list of target addresses, the request field field,
// and refuses the first bad one as InvalidArgument naming it ("field[i]: ").
func ParseAll(field string, vs []string) ([]netip.AddrPort, error) {
	out := make([]netip.AddrPort, 0, len(vs))
	for i, v := range vs {
		ap, err := Parse(v)
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%s[%d]: %v", field, i, err)
		}
		out = append(out, ap)
	}
	return out, nil
}

// Canonical parses a target address and returns its canonical form.
func Canonical(s string) (string, error) {
	ap, err := Parse(s)
	if err != nil {
		return "", err
	}
	return ap.String(), nil
}

// ParseIP parses the IP half of a target address (a dataset's address,
// which its regions' ports are added to) by the same rule: IPv6, not
// IPv4-mapped, no zone.
func ParseIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, wrap(s, errors.New("not an IPv6 address"))
	}
	if err := checkAddr(a); err != nil {
		return netip.Addr{}, wrap(s, err)
	}
	return a, nil
}

func checkAddr(a netip.Addr) error {
	switch {
	case a.Is4() || a.Is4In6():
		return ErrIPv4
	case a.Zone() != "":
		return ErrZone
	}
	return nil
}

// wrap quotes the input, truncated, before the reason.
func wrap(s string, err error) error {
	if len(s) > 64 {
		s = s[:64] + "…"
	}
	return fmt.Errorf("%q: %w", strings.ToValidUTF8(s, "?"), err)
}
