# Pharmacy fulfillment: the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
BENCH_ARGS ?=
MUTATION_ARGS ?=
MUTATION_STAMP := $(VENV)/.mutation-stamp

.PHONY: install contracts asyncapi browser up down status demo test check lint unit chaos bench bench-rounds mutation clean

$(STAMP): pyproject.toml contracts/pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=24"
	$(BIN)/pip install --quiet -c constraints.txt -e ./contracts -e '.[devstack,test,bench]'
	touch $(STAMP)

install: $(STAMP) ## virtual environment with the services, the dev stack and the test tools

contracts: install asyncapi ## JSON Schema per message into contracts/schemas, topic table into README, AsyncAPI documents
	$(BIN)/python -m pharmacy_contracts.schemas contracts/schemas
	$(BIN)/python -m services.ops.readme_topics README.md

asyncapi: install ## AsyncAPI 3 document per service into docs/asyncapi, generated from the FastStream apps
	$(BIN)/python -m services.ops.asyncapi docs/asyncapi

up: install ## broker, database, topics and the four services on loopback; logs in .devstack/logs
	$(BIN)/python -m services.ops.devstack up

down: ## stop everything `make up` started
	@if [ -x $(BIN)/python ]; then $(BIN)/python -m services.ops.devstack down; fi

status: install
	$(BIN)/python -m services.ops.devstack status

demo: install ## the whole system on the embedded stack, a simulated rural county, a summary
	$(BIN)/python -m services.ops.demo

# Playwright drives Debian's chromium (browser downloads do not work here); installed once, as root.
browser: ## Debian's chromium for the board's browser test, if /usr/bin/chromium is missing
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "chromium is missing: run 'sudo make browser'" >&2; exit 1; fi; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; \
	fi

lint: install
	$(BIN)/ruff check services contracts tests
	$(BIN)/lint-imports

test: install browser lint ## every test; starts and stops its own broker and database
	$(BIN)/pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

check: lint ## the fast loop (under a minute): ruff, import contracts, and the unit and in-memory use-case tests
	$(BIN)/pytest tests/unit -q $(PYTEST_ARGS)

chaos: install ## the chaos run on its own (it also runs inside `make test`): kill -9 under load, then every guarantee
	$(BIN)/python -m services.ops.chaos

bench: install ## throughput, latency and memory on the dev stack vs the bare and the stored relay; bench-results/ (BENCH_ARGS="--runs 1")
	$(BIN)/python -m services.ops.bench $(BENCH_ARGS)

bench-rounds: install ## delivery rounds vs one trip per delivery on the demo county, and the planning time of 200 deliveries and 10 vans (no stack needed)
	$(BIN)/python -m services.ops.rounds_bench

$(MUTATION_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[mutation]'
	touch $(MUTATION_STAMP)

mutation: $(MUTATION_STAMP) ## mutmut over the guarantee modules, a score per module in mutation-results/ (slow; not in `make test`; MUTATION_ARGS="--children 1")
	$(BIN)/python -m services.ops.mutation_run $(MUTATION_ARGS)

clean: down
	rm -rf $(VENV) .devstack .pytest_cache .ruff_cache
