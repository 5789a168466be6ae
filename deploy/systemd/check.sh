#!/usr/bin/env bash
# check.sh UNIT...: what `make deploy-check` runs on deploy/systemd/*.service.
#
# For each unit:
#   - ExecStart runs /usr/local/bin/<unit name> --config /etc/storagecp/<unit name>.toml
#     and deploy/config/<unit name>.toml exists;
#   - `systemd-analyze verify` accepts it. verify also insists that ExecStart's
#     binary exists and is executable on this machine, which on a fresh clone (or
#     CI) it does not: the unit is verified as a temporary copy whose ExecStart
#     points at a stub executable of the same name. (--root=DIR would look for the
#     binary under DIR, but then also for every unit the service depends on,
#     sysinit.target and the rest, so DIR would need a whole systemd tree.)
#   - `systemd-analyze security --offline=true` scores its exposure at most
#     $EXPOSURE (tenths: 11 is 1.1, every unit's score today), and the checks it
#     fails are only the ones in ACCEPTED below, so dropping any hardening
#     directive fails even where the rounded score would not move.
#
# check.sh --self-test runs the same checks on a copy of the first unit without
# NoNewPrivileges= and fails unless they reject it.
set -euo pipefail

EXPOSURE=${EXPOSURE:-11}
# Exposures the units keep on purpose: they serve and call gRPC over the
# network (AF_INET/AF_INET6, no PrivateNetwork, no IPAddressDeny: peers'
# addresses are the site's; add IPAddressAllow= in a drop-in), talk to
# systemd's notify socket and the journal (AF_UNIX), read /dev/null and
# /dev/urandom (DevicePolicy=closed, not strict), and run in the host's root.
ACCEPTED=(
	'RootDirectory=/RootImage='
	'RestrictAddressFamilies=~AF_UNIX'
	'RestrictAddressFamilies=~AF_(INET|INET6)'
	'PrivateNetwork='
	'DeviceAllow='
	'IPAddressDeny='
)

here=$(cd "$(dirname "$0")" && pwd)
configs=$here/../config
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

check() {
	local unit=$1 name fail=0
	name=$(basename "$unit" .service)
	if ! grep -qx "ExecStart=/usr/local/bin/$name --config /etc/storagecp/$name.toml" "$unit"; then
		echo "$unit: ExecStart must be /usr/local/bin/$name --config /etc/storagecp/$name.toml"
		fail=1
	fi
	if [ ! -f "$configs/$name.toml" ]; then
		echo "$unit: no example configuration deploy/config/$name.toml"
		fail=1
	fi

	mkdir -p "$tmp/bin" "$tmp/verify"
	printf '#!/bin/sh\n' >"$tmp/bin/$name"
	chmod +x "$tmp/bin/$name"
	sed "s|^ExecStart=/usr/local/bin/|ExecStart=$tmp/bin/|" "$unit" >"$tmp/verify/$name.service"
	if ! out=$(systemd-analyze verify "$tmp/verify/$name.service" 2>&1) || [ -n "$out" ]; then
		echo "$unit: systemd-analyze verify:"
		sed 's/^/    /' <<<"$out"
		fail=1
	fi

	local report score failed bad=()
	report=$(systemd-analyze security --offline=true --no-pager "$unit" 2>&1) || true
	score=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p' <<<"$report")
	if ! systemd-analyze security --offline=true --threshold="$EXPOSURE" "$unit" >/dev/null 2>&1; then
		echo "$unit: exposure ${score:-?} is above $((EXPOSURE / 10)).$((EXPOSURE % 10))"
		fail=1
	fi
	while read -r failed; do
		local ok=0 a
		for a in "${ACCEPTED[@]}"; do [ "$failed" = "$a" ] && ok=1; done
		[ $ok = 1 ] || bad+=("$failed")
	done < <(awk '$1 == "✗" {print $2}' <<<"$report")
	if [ ${#bad[@]} -gt 0 ]; then
		echo "$unit: hardening checks failed beyond the accepted ones: ${bad[*]}"
		fail=1
	fi
	[ $fail = 0 ] && echo "$unit: verified, exposure $score"
	return $fail
}

if [ "${1:-}" = --self-test ]; then
	shift
	mkdir -p "$tmp/weak"
	weak=$tmp/weak/$(basename "$1")
	grep -v '^NoNewPrivileges=' "$1" >"$weak"
	if check "$weak" >"$tmp/weak.out"; then
		echo "check.sh --self-test: a unit without NoNewPrivileges= passed"
		cat "$tmp/weak.out"
		exit 1
	fi
	echo "check.sh --self-test: a unit without NoNewPrivileges= is rejected: $(grep -v verified "$tmp/weak.out" | tr '\n' ' ')"
	exit 0
fi

status=0
for unit in "$@"; do
	check "$unit" || status=1
done
exit $status
