# The project's vocabulary: run, test, lint, bench, fuzz.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test lint format bench bench-scale fuzz cluster clean

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install ## migrate the database, make a demo client if none, serve on $PORT (8000)
	$(BIN)/tokenserver db upgrade
	$(BIN)/tokenserver clients ensure-demo
	$(BIN)/python -m tokenserver.gunicorn_start --config gunicorn.conf.py wsgi:app

test: install ## the whole suite; TEST_DATABASE_URL=postgresql+psycopg://... runs it on PostgreSQL
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check tokenserver tests bench deploy
	$(BIN)/ruff format --check tokenserver tests bench deploy
	$(BIN)/mypy tokenserver deploy

format: install
	$(BIN)/ruff format tokenserver tests bench deploy
	$(BIN)/ruff check --fix tokenserver tests bench deploy

# make bench [DB=postgres | BENCH_DATABASE_URL=postgresql+psycopg://...] [SCALE=1] [PROFILE=1]
DB ?= sqlite
BENCH_DATABASE_URL ?= $(if $(filter postgres postgresql,$(DB)),postgresql+psycopg://postgres@127.0.0.1:5432/postgres)
BENCH_ARGS ?=

bench: install ## each route under wrk against /healthz on 2 gunicorn workers; see README "Performance"
	command -v wrk >/dev/null || (apt-get update && apt-get install -y wrk)
	$(if $(PROFILE),$(BIN)/python -m pip install --quiet py-spy==0.4.3)
	BENCH_DATABASE_URL='$(BENCH_DATABASE_URL)' $(BIN)/python -m bench.run \
		$(if $(SCALE),--scale) $(if $(PROFILE),--profile) $(BENCH_ARGS)

bench-scale: ## the same, then again with 1,000,000 token records and 100,000 users
	$(MAKE) bench SCALE=1

# make fuzz [FUZZ_EXAMPLES=200]: `make test` runs the same tests with far fewer examples.
FUZZ_EXAMPLES ?= 200

fuzz: install ## schemathesis against live gunicorn, every operation, with and without a token
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests/test_fuzz.py tests/test_properties.py $(PYTEST_ARGS)

# make cluster: TOKENSERVER_DATABASE_URL (default: database tokenserver on the local PostgreSQL)
# and TOKENSERVER_RATELIMIT_STORAGE_URI (default: the local Redis) choose the shared services.
cluster: install ## two nodes on one PostgreSQL and one Redis behind HAProxy on port 8000
	command -v haproxy >/dev/null || (apt-get update && apt-get install -y haproxy)
	$(BIN)/python -m deploy.cluster

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
