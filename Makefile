# promoter-relay developer commands. Everything runs from a local virtualenv that `make` builds itself.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
comma := ,
# The browser extra (Playwright, for the dashboard test) only where a Chromium is there to drive.
EXTRAS := dev,test,lint,bench$(if $(shell command -v chromium 2>/dev/null),$(comma)browser)
# One stamp per set of extras: installing Chromium later makes the next `make` add Playwright.
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install run status dead-letters test check lint bench chaos sim grafana compose-test clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	# The older Segment client (body-only writeKey auth), importable only by tests that ask for it.
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/segment-2.3 'segment-analytics-python==2.3.6' 'backoff~=2.1'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/promoter-relay dev --port $(PORT)

# What `make run` holds (or REDIS_URL's Redis): the venv's promoter-relay, which is not on PATH.
status: $(STAMP)
	$(BIN)/promoter-relay status

dead-letters: $(STAMP)
	$(BIN)/promoter-relay dead-letters list

lint: $(STAMP)
	$(BIN)/ruff check app worker tests bench deploy
	$(BIN)/ruff format --check app worker tests bench deploy
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# The fast tier: every test that starts no process (workers, CLIs, a browser) and is not slow, on the
# run's own embedded Redis. Under a minute.
check: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m "not integration and not slow"

# make bench PEOPLE=1000000: the people section also loads that many (about half an hour here).
# make bench QUICK=1: every section once, smaller (a check that it runs).
bench: $(STAMP)
	$(BIN)/python -m bench $(if $(PEOPLE),--people $(PEOPLE)) $(if $(QUICK),--quick)

chaos: $(STAMP)
	$(BIN)/python -m tests.chaos

# Regenerate deploy/grafana/promoter-relay.json from deploy/grafana_dashboard.py.
grafana: $(STAMP)
	$(BIN)/python -m deploy.grafana_dashboard

# Deterministic simulation of delivery (tests/sim): SEED=n for one seed, SEEDS=n or SECONDS=n for a run,
# WITHOUT=feature,... to leave traffic features out, MUTATE=name to plant a bug of tests/sim/mutations.py
# (it must fail). About 10 minutes by default.
sim: $(STAMP)
	PYTHONHASHSEED=0 $(BIN)/python -m tests.sim $(if $(SEED),--seed $(SEED) -v) $(if $(SEEDS),--seeds $(SEEDS)) \
		$(if $(SECONDS),--seconds $(SECONDS)) $(if $(WITHOUT),--without $(WITHOUT)) $(if $(MUTATE),--mutate $(MUTATE))

# docker-compose.yml on a real Docker engine: started here as root when none runs, with a local
# base image (debootstrap, cached). About 5 minutes once the base image is cached.
compose-test: $(STAMP)
	bash tests/compose/engine.sh run $(BIN)/python -m pytest tests/compose/stack.py -v -s -p no:cacheprovider --timeout=1500

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
