# storagecp — every developer and CI entry point.
#
#   make run     the whole system on this machine with a live replacement
#                demo, until Ctrl-C (DEMO=exit: run the demo and exit)
#   make test    everything CI checks (what .ci/run calls)
#   make bench   the performance suite (BENCH=failover: one part alone)
#   make soak    the long suites (every crash point, many race seeds)
#
# Needs only Go (see go.work) and the PostgreSQL 15 server binaries
# (/usr/lib/postgresql/15/bin; apt-get install postgresql). Tools (buf, the
# protoc plugins, grpcurl, grpc-health-probe) are pinned in tools/go.mod and built into
# .run/bin on first use. Jaeger is pinned in its own module, tools/jaeger
# (a big build: minutes), and built only for the trace test and
# `make run TRACING=1`.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go
BIN := $(CURDIR)/.run/bin
export PATH := $(BIN):$(PATH)

# Every package of the workspace except the process-level integration tests.
# go test starts the test binaries in the order it is given them, -p (the
# number of cores) at a time, so the longest go first: started last, one
# would run alone at the end while the other cores idle. The longest are
# measured (docs/testing.md, "Where the time goes"); a package named here
# that no longer exists fails the run, as any unknown package would.
UNIT_FIRST = storagecp.dev/orchestrator/internal/sagadef \
	storagecp.dev/orchestrator/internal/background/tasks \
	storagecp.dev/orchestrator/internal/saga \
	storagecp.dev/notifier/internal/server
UNIT_PKGS = $$({ printf '%s\n' $(UNIT_FIRST); $(GO) list storagecp.dev/... | grep -v '^storagecp.dev/integration/'; } | awk '!seen[$$0]++')
INTEGRATION_FIRST = storagecp.dev/integration/ha \
	storagecp.dev/integration/hosts
INTEGRATION_PKGS = $$({ printf '%s\n' $(INTEGRATION_FIRST); $(GO) list storagecp.dev/integration/...; } | awk '!seen[$$0]++')

BASELINE := proto/baseline.binpb

.PHONY: deploy-check monitoring-check ha-deps console-deps all tools jaeger generate lint breaking baseline gen-check vet prod-deps-check unit integration test run clean-run bench soak fmt-check doc-check

all: test

tools: $(BIN)/.tools-stamp

$(BIN)/.tools-stamp: tools/go.mod tools/go.sum
	cd tools && GOWORK=off $(GO) build -o $(BIN)/ tool
	touch $@

# Its own module so that `make tools` on a fresh machine does not pay for
# Jaeger's dependency tree; touched because go build leaves an up-to-date
# binary's mtime alone.
jaeger: $(BIN)/jaeger

$(BIN)/jaeger: tools/jaeger/go.mod tools/jaeger/go.sum
	cd tools/jaeger && GOWORK=off $(GO) build -o $(BIN)/ tool
	touch $@

# pg_auto_failover, the engine of the replicated PostgreSQL (make run HA=1,
# platform/pgformation and its tests), from Debian's packages when missing.
ha-deps:
	@command -v pg_autoctl >/dev/null 2>&1 || { \
		echo "installing pg_auto_failover (apt-get install postgresql-15-auto-failover pg-auto-failover-cli)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15-auto-failover pg-auto-failover-cli; }

# The console's browser test (integration/console): Debian's chromium, and
# node with the test's pinned npm packages (playwright-core, axe-core:
# integration/console/browser/package-lock.json, `npm ci`, so the exact
# versions), each installed when missing. The console itself needs none of
# this: its pages are embedded in storctl from source (go:embed).
CONSOLE_BROWSER := integration/console/browser
console-deps: $(CONSOLE_BROWSER)/node_modules/.ci-stamp
	@test -x /usr/bin/chromium || { \
		echo "installing chromium (apt-get install chromium)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

$(CONSOLE_BROWSER)/node_modules/.ci-stamp: $(CONSOLE_BROWSER)/package.json $(CONSOLE_BROWSER)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		echo "installing node and npm (apt-get install nodejs npm)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd $(CONSOLE_BROWSER) && npm ci --no-audit --no-fund --prefer-offline
	touch $@

# What an operator installs (deploy/README.md): each systemd unit under
# deploy/systemd passes `systemd-analyze verify` and keeps its hardening
# (`systemd-analyze security --offline=true`: exposure at most 1.1 and no
# failed check beyond the few the units accept on purpose); check.sh says
# how, and why verify runs on a copy whose ExecStart points at a stub (the
# real binary need not be installed on the machine that checks). The
# self-test proves the check bites: a unit without NoNewPrivileges= fails.
# systemd-analyze comes from Debian's systemd package when missing. The
# example configs are checked against each binary's flags by `make unit`
# (TestExampleConfig in each cmd package).
deploy-check:
	@command -v systemd-analyze >/dev/null 2>&1 || { \
		echo "installing systemd-analyze (apt-get install systemd)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; }
	deploy/systemd/check.sh deploy/systemd/*.service
	deploy/systemd/check.sh --self-test deploy/systemd/volume-service.service

# promtool, Prometheus's checker, from Debian's prometheus package: only the
# one binary, extracted into .run/bin (apt-get download, no install), so
# nothing else lands on the machine and no Prometheus server is started.
# About 30 s on a fresh machine (a 19 MB package); building it from Go
# source instead fetches 1.8 GB of modules and compiles every
# service-discovery client, many minutes on 2 cores.
$(BIN)/promtool:
	@mkdir -p $(BIN)
	@echo "fetching promtool (apt-get download prometheus)"
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; cd "$$tmp"; \
	apt-get download -qq -o APT::Sandbox::User=root prometheus 2>/dev/null || \
		{ apt-get update -qq && apt-get download -qq -o APT::Sandbox::User=root prometheus; }; \
	dpkg-deb --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool >$@.tmp
	chmod +x $@.tmp && mv $@.tmp $@
	$@ --version | sed -n 1p

# deploy/monitoring (README.md there): the alert rules pass promtool's
# checks and its unit tests (every alert fires when it should and stays
# quiet when it should not), the scrape configuration parses, and the Go
# tests check that every alert can be acted on (severity, summary,
# description, runbook section), that breaking any alert fails its promtool
# tests, and that every dashboard query parses. That each metric they name
# is exported is integration/monitoring's (make integration).
monitoring-check: $(BIN)/promtool
	promtool check rules deploy/monitoring/alerts.yml
	cd deploy/monitoring && promtool test rules alerts_test.yml
	promtool check config --syntax-only deploy/monitoring/prometheus.yml
	STORAGECP_PROMTOOL=$(BIN)/promtool $(GO) test -count=1 storagecp.dev/deploy/monitoring

generate: tools
	buf generate

lint: tools
	buf lint

# Incompatible API changes fail against the committed baseline image; an
# intended one updates the baseline (make baseline) in its own commit.
breaking: tools
	buf breaking --against $(BASELINE)

baseline: tools
	buf build --exclude-source-info -o $(BASELINE)

# Generated code is committed; CI fails if it is stale.
gen-check: generate
	@git diff --exit-code -- gen/ || { echo "gen/ is stale: run 'make generate' and commit"; exit 1; }
	@test -z "$$(git status --porcelain --untracked-files=all -- gen/)" || { git status --short -- gen/; echo "gen/ has uncommitted files: run 'make generate' and commit"; exit 1; }

fmt-check:
	@out=$$(gofmt -l gen services deploy testsupport integration tools/cmd); test -z "$$out" || { echo "gofmt needed:"; echo "$$out"; exit 1; }

# The repository cites only what it contains: every relative link in a tracked
# *.md resolves (file, and #anchor as GitHub slugs headings), every *.md path a
# tracked file names exists, every citation of a heading (the path, a comma,
# the heading in double quotes) names a heading that exists, and nothing
# points outside the clone (tools/cmd/doccheck lists the patterns). The checker's own tests run first: the tools module is not part
# of the workspace, so `make unit` does not reach them.
doc-check: tools
	cd tools && GOWORK=off $(GO) test -count=1 -timeout 2m ./cmd/doccheck
	cd tools && GOWORK=off $(GO) run ./cmd/doccheck -C ..

vet:
	$(GO) vet storagecp.dev/...

# Production binaries link production code only: `go list -deps` of each
# names no test-support package (testsupport, integration, any testenv or
# sagatest, platform's pgtest, the standard testing package), no launcher
# (deploy, platform's pgcluster and netlab) and no simulation (a module named sim, as
# storagecp.dev/notifier/sim and storagecp.dev/allocator/sim).
PROD_BINS = storagecp.dev/volume/cmd/volume-service \
	storagecp.dev/allocator/cmd/region-allocator \
	storagecp.dev/notifier/cmd/upstairs-notifier \
	storagecp.dev/orchestrator/cmd/replacement-orchestrator \
	storagecp.dev/storctl/cmd/storctl
NON_PROD_PKGS = ^(testing|storagecp\.dev/(testsupport|deploy|integration|sim)(/.*)?|storagecp\.dev/[^/]+/sim(/.*)?|storagecp\.dev/platform/(pgtest|pgcluster|netlab)(/.*)?|storagecp\.dev/.*/(testenv|sagatest))$$

prod-deps-check:
	@fail=0; for b in $(PROD_BINS); do \
		deps=$$($(GO) list -deps $$b); \
		bad=$$(grep -E '$(NON_PROD_PKGS)' <<<"$$deps" || true); \
		if [ -n "$$bad" ]; then \
			echo "$$b links non-production packages:"; sed 's/^/    /' <<<"$$bad"; fail=1; \
		else \
			echo "$$b: $$(grep -c . <<<"$$deps") packages ($$(grep -c '^storagecp\.dev/' <<<"$$deps") storagecp.dev), no test-support, launcher or simulation"; \
		fi; \
	done; exit $$fail

unit: ha-deps
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)

# STORAGECP_REQUIRE_JAEGER turns the trace tests' skip (no Jaeger binary)
# into a failure: under make, the binary is a prerequisite; so does
# STORAGECP_REQUIRE_BROWSER for the console's browser test (console-deps).
integration: $(BIN)/jaeger ha-deps console-deps
	STORAGECP_REQUIRE_JAEGER=1 STORAGECP_REQUIRE_BROWSER=1 $(GO) test -count=1 -timeout 30m $(INTEGRATION_PKGS)

test: gen-check lint breaking fmt-check doc-check deploy-check monitoring-check vet prod-deps-check unit integration
	@echo "make test: all checks passed"

# TRACING=1 also starts Jaeger (built on first use) and sends every
# process's spans to it; the launcher prints the UI's address.
# DEMO: "on" (default) drives a live replacement once everything is up, then
# serves until Ctrl-C; "exit" runs it with plain output and exits with its
# result (0 when it completed clean); "off" only serves.
# INSECURE=1 runs every process in plaintext without identities or
# authorization (a lab bench only); by default they speak mutual TLS with
# certificates from .run/pki.
TRACING ?=
DEMO ?= on
INSECURE ?=
# HA=1 runs the services on a replicated PostgreSQL (pg_auto_failover: a
# monitor, a primary and a synchronous standby under .run/ha), installing
# pg_auto_failover first when it is missing (make ha-deps).
HA ?=
# HOSTS=1 runs every process on a host of its own (a network namespace on a
# bridge; needs root) with every link through a fault proxy (toxiproxy,
# whose API the launcher serves on 127.0.0.1:8474), each process deployed
# through its configuration file.
HOSTS ?=
run: tools $(if $(TRACING),$(BIN)/jaeger) $(if $(HA),ha-deps)
	@case "$(DEMO)" in on|exit|off) ;; *) echo "make run: DEMO must be on, exit or off (got '$(DEMO)')"; exit 2;; esac
	$(GO) run ./deploy/cmd/storagecp-local $(if $(TRACING),--tracing) $(if $(INSECURE),--insecure) $(if $(HA),--ha) $(if $(HOSTS),--hosts) \
		$(if $(filter exit,$(DEMO)),--non-interactive) $(if $(filter off,$(DEMO)),--demo=false)

clean-run:
	rm -rf .run/pg .run/logs

# CLONES: fan-out sizes for the replacement benchmark (e.g. CLONES="1000 10000");
# the failover bench takes the first.
CLONES ?= 1000 10000
# ATTACHED: shares (percent) of the fan-out's clones running on sim-upstairs,
# one run each (e.g. ATTACHED="0 25 100"); STEP_BATCH: the orchestrator's
# --step-batch for the fan-out (empty: its default, 256; 0: one saga per step).
ATTACHED ?= 0
STEP_BATCH ?=
# BENCH runs parts of the suite alone, e.g. BENCH=failover or BENCH="canonical
# fanout": go (the Go benchmarks), canonical, fanout, failover, rack. Empty runs all.
BENCH ?=
# RACK_SCALE: the rack bench's population over its full size (4,000 disks,
# 400 snapshots, 4,000 clones); empty is 1.
RACK_SCALE ?=
bench_parts := go canonical fanout failover rack
bench_run = $(if $(BENCH),$(filter $(1),$(BENCH)),$(1))
bench_fanout_tests = $(subst $(eval) ,|,$(strip $(if $(call bench_run,canonical),TestCanonical) $(if $(call bench_run,fanout),TestFanOut)))
bench: $(if $(call bench_run,failover),ha-deps)
	@bad="$(filter-out $(bench_parts),$(BENCH))"; test -z "$$bad" || { echo "make bench: BENCH takes $(bench_parts) (got '$$bad')"; exit 2; }
	@mkdir -p .run/bench
	$(if $(call bench_run,go),$(GO) test -run '^$$' -bench . -skip 'SagaThroughput|DecodeClone' -benchtime 1x -count 1 -timeout 60m $(UNIT_PKGS) | tee .run/bench/go-bench.txt)
	# The saga engine's benchmarks measure per saga (1x would time one),
	# the VCR decoder per decode.
	$(if $(call bench_run,go),$(GO) test -run '^$$' -bench SagaThroughput -benchtime 300x -count 1 -timeout 20m storagecp.dev/orchestrator/internal/saga | tee -a .run/bench/go-bench.txt)
	$(if $(call bench_run,go),$(GO) test -run '^$$' -bench DecodeClone -count 1 storagecp.dev/platform/vcr | tee -a .run/bench/go-bench.txt)
	$(if $(bench_fanout_tests),STORAGECP_BENCH=1 STORAGECP_BENCH_CLONES="$(CLONES)" STORAGECP_BENCH_ATTACHED="$(ATTACHED)" STORAGECP_BENCH_STEP_BATCH="$(STEP_BATCH)" $(GO) test -count=1 -v -timeout 120m -run '^($(bench_fanout_tests))$$' storagecp.dev/integration/bench | grep -v '^ *{' | tee .run/bench/fanout.txt)
	# The failover bench: the fan-out on one PostgreSQL and on a replicated
	# formation, then the formation's primary killed in the middle of it.
	$(if $(call bench_run,failover),STORAGECP_BENCH=1 STORAGECP_BENCH_CLONES="$(CLONES)" $(GO) test -count=1 -v -timeout 60m -run '^TestFailover$$' storagecp.dev/integration/bench | grep -v '^ *{' | tee .run/bench/failover.txt)
	# The rack bench: 32 sleds of 10 disks populated (RACK_SCALE=0.1 for a
	# tenth), the fullest sled expunged, at half and full population.
	$(if $(call bench_run,rack),STORAGECP_BENCH=1 STORAGECP_BENCH_RACK_SCALE="$(RACK_SCALE)" $(GO) test -count=1 -v -timeout 120m -run '^TestRack$$' storagecp.dev/integration/bench | grep -v '^ *{' | tee .run/bench/rack.txt)

# Every crash point, every user operation before every saga node, a
# transient fault at every undo and a lost answer at every action of every
# saga (make test samples them), every network fault several times
# (integration/hosts), and
# SEEDS random race seeds (each printed; replay one with
# STORAGECP_SEED=<seed> go test ./integration/race).
SEEDS ?= 20
soak:
	STORAGECP_SOAK=1 $(GO) test -count=1 -timeout 240m -run 'TestUserOperations' storagecp.dev/orchestrator/internal/sagadef/...
	STORAGECP_SOAK=1 $(GO) test -count=1 -timeout 60m -run '(Helpers|^TestRO(GarbageCollect|Step|StepGarbageCollect|Finish))$$/(undo_transient|lost_answer)_at_' storagecp.dev/orchestrator/internal/sagadef
	STORAGECP_SOAK=1 STORAGECP_SEEDS=$(SEEDS) $(GO) test -count=1 -timeout 240m $(INTEGRATION_PKGS)
