# The README names these targets; each installs what it needs into .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test bench bench-scan soak clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

## Quick start: SQLite under instance/, ./ml_models, demo data, trained models, gunicorn on :5000.
run: setup
	bash scripts/quickstart.sh

## The whole test suite (PostgreSQL on 127.0.0.1:5432 and SQLite).
test: setup
	bash scripts/test.sh

## Benchmarks: prints a table, writes bench/results/latest.json.
## The peers (MLflow, skops) are bench-only: installed here, with the runtime pins held.
bench: setup
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt -r requirements-bench.txt
	$(BIN)/python -m bench

## A scan of 10 million observations on PostgreSQL beside the raw scoring rate, retention, the scan
## after it (10-20 min); prints a table, writes bench/results/scan-10m.json.
## Options: make bench-scan SCAN_ARGS="--rows 2000000 --in-turn"
bench-scan: setup
	$(BIN)/python -m bench.scan_scale $(SCAN_ARGS)

## Soak: 2 min of mixed traffic against gunicorn (2 workers, scheduler on) on a private PostgreSQL
## that is stopped for 30 s in the middle; prints a table, writes bench/results/soak-latest.json.
## Options: make soak SOAK_ARGS="--duration 300 --outage 60 --fault freeze"
soak: setup
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
