# The two set-up commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed
# the test extras (SDKs, playwright, kubernetes-validate, fastmcp: about 275 MB) and Debian's chromium,
# only for what runs the tests or the benches; `make demo` needs the runtime alone
STAMP  := $(VENV)/.installed-test

.PHONY: install demo test test-stress bench ab soak profile instructions instructions-mcp bench-routing bench-mcp bench-scale clean

$(RUNTIME): pyproject.toml sluice/core/bytescan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/pip install --quiet -e '.[test]'
	@# the dashboard's browser test drives Debian's chromium (no browser download by playwright)
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "chromium could not be installed: tests/admin/test_dashboard.py needs it"
	@# the README's CLI tour runs in an 80x24 terminal: tmux
	command -v tmux >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux) \
		|| echo "tmux could not be installed: tests/cli/test_cli_tour.py needs it"
	touch $(STAMP)

install: $(STAMP)

demo: $(RUNTIME)
	$(BIN)/sluice demo

# The suite on parallel workers, a test file to a worker (its module fixtures start once), then the
# tests marked `alone` (they measure time against time) with nothing beside them. Both parts always run.
TEST_WORKERS ?= 4
PARALLEL := -n $(TEST_WORKERS) --dist loadfile -m "not alone"

test: $(STAMP)
	@rc=0; $(BIN)/pytest -q $(PARALLEL) || rc=1; $(BIN)/pytest -q -m alone || rc=1; exit $$rc

# The suite three times in a row beside two CPU-burning processes: timing-sensitive tests must
# hold on a busy machine. The burners are killed however the runs end (pass, fail or Ctrl-C).
test-stress: $(STAMP)
	@$(PYTHON) -c 'while True: pass' & b1=$$!; \
	$(PYTHON) -c 'while True: pass' & b2=$$!; \
	trap 'kill $$b1 $$b2 2>/dev/null' EXIT INT TERM; \
	start=$$(date +%s); \
	for run in 1 2 3; do \
		echo "== stress run $$run of 3 (burners $$b1 $$b2)"; \
		CI=true $(BIN)/pytest -q -p no:cacheprovider $(PARALLEL) || exit 1; \
		CI=true $(BIN)/pytest -q -p no:cacheprovider -m alone || exit 1; \
	done; \
	echo "== 3 runs passed beside two CPU burners in $$(( $$(date +%s) - start )) s"

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/run.sh

# sluice's own CPU per MCP tools/call (bench/mcp_calls.py; PROFILE=1 adds a py-spy round; WRK=1 drives it with wrk at c=16)
bench-mcp: $(STAMP)
	PYTHONPATH=$(CURDIR) $(BIN)/python bench/mcp_calls.py $(if $(PROFILE),--profile) $(if $(WRK),--wrk)

ab: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/ab.sh

soak: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/soak.sh

profile: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/profile.sh

# instructions per request under callgrind: a cost that does not move with the machine's load
instructions: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/instructions.sh

# the same for MCP tools/call (pin: off and required) beside a chat completion, on one config in one run
instructions-mcp: $(STAMP)
	CONFIG=bench/gateway-mcp.yaml BENCH_PORT=8090 MOCK_PORT=18020 MOCK_STREAM_PORT=18021 SIDES="chat:$(CURDIR):chat:plain mcp:$(CURDIR):mcp:plain mcp-pin:$(CURDIR):mcp:pinned" \
	  PATH="$(CURDIR)/$(BIN):$$PATH" bench/instructions.sh

# What sluice costs as identities, routes, limit rules, the policy, prompts, open streams and the usage history
# grow (issue 29, item 5): one table, bench/README.md "Costs as the work grows". Free ports only; about 30-60 min
# on 2 shared cores (QUICK=1: the smaller sizes, no 100,000 identities or 9,000 streams). The usage history
# needs Postgres (SLUICE_PG_URL) and runs 1M rows; HISTORY=1M,10M adds sizes (10M: ~15 min to load here).
bench-scale: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python bench/scale.py $(if $(QUICK),--quick) $(if $(HISTORY),--history $(HISTORY))

# Placement policies in front of 4 sim replicas (a couple of minutes; not part of `make test`).
bench-routing: $(STAMP)
	$(BIN)/python bench/bench_routing.py

clean:
	rm -rf $(VENV) .sluice .pytest_cache

# --workers 1 against --workers 2 with Redis limits, CPU of each side recorded (bench/README.md).
# sluice against ../shared/bench/floor.py in one session: the issue-15 targets as ratios to the floor.
.PHONY: bench-floor
bench-floor: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/floor_ratio.sh

.PHONY: bench-workers
bench-workers: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/workers.sh

# TLS on the data plane against plain HTTP, keep-alive and a handshake per request (bench/README.md);
# run it as: unshare -n sh -c 'ip link set lo up && make bench-tls'
.PHONY: bench-tls
bench-tls: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bench/tls.sh
