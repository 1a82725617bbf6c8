# The project's vocabulary: run, test, lint, bench, fuzz.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run test lint format bench bench-scale fuzz clean

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
	$(BIN)/gunicorn --config gunicorn.conf.py wsgi:app

test: install ## the whole suite; TEST_DATABASE_URL=postgresql+psycopg://... runs it on PostgreSQL
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check tokenserver tests bench
	$(BIN)/ruff format --check tokenserver tests bench
	$(BIN)/mypy tokenserver

format: install
	$(BIN)/ruff format tokenserver tests bench
	$(BIN)/ruff check --fix tokenserver tests bench

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
