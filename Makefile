# Every target bootstraps what it needs: a fresh machine with Python 3.11+ and Java 17+ runs `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
CONFIG ?= conf/local.yml

.PHONY: demo test test-fast lint bench bench-acquisition bench-header bench-listing bench-pipeline bench-startup bench-site-rows bench-new-keys bench-demo bench-settings-large bench-cold-extract bench-jit bench-submit bench-query-cost bench-case-mapping bench-compaction bench-quality-scope bench-scanned-rows bench-run-profile bench-roundtrips bench-suite setup clean

$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "micdm needs Python 3.11 or newer, found " + sys.version.split()[0])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[spark,s3,gcs,azure,dev,synth]"
	touch $(INSTALLED)

# Azurite, the Azure storage server the abfss:// tests run on (npm; Node.js 18 or newer). The registry
# sometimes fails a request: the install is tried three times, and says why it failed.
AZURITE := build/azurite/node_modules/.bin/azurite-blob
$(AZURITE):
	for attempt in 1 2 3; do \
	  npm install --loglevel=error --no-audit --no-fund --prefix build/azurite azurite@3.37.0 && exit 0; \
	  sleep 10; \
	done; exit 1

setup: $(INSTALLED)
	$(BIN)/micdm setup -c $(CONFIG)

demo: setup
	$(BIN)/micdm demo -c $(CONFIG)

test: setup $(AZURITE)
	$(BIN)/python -m pytest

# The edit loop: unit tests and the quick Spark ones, no server; `make test` (what CI runs) runs everything.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow and not servers"

lint: $(INSTALLED)
	$(BIN)/ruff check lib jobs tests bench notebooks tools
	$(BIN)/python -m mypy

clean:
	rm -rf .micdm demo spark-warehouse

bench: setup
	$(BIN)/python bench/extract_bench.py --instances 20000
	$(BIN)/python bench/listing_bench.py

bench-listing: setup
	$(BIN)/python bench/listing_bench.py

bench-acquisition: setup
	$(BIN)/python bench/acquisition_bench.py

bench-header: setup
	$(BIN)/python bench/header_format_bench.py

bench-pipeline: setup
	$(BIN)/python bench/pipeline_bench.py

bench-site-rows: setup
	$(BIN)/python bench/site_rows_bench.py

bench-new-keys: setup
	$(BIN)/python bench/new_keys_bench.py

bench-startup: setup
	$(BIN)/python bench/startup_bench.py

bench-demo: setup
	$(BIN)/python bench/demo_bench.py

bench-settings-large: setup
	$(BIN)/python bench/demo_bench.py --size large --repeats 2

bench-cold-extract: setup
	$(BIN)/python bench/cold_extract_bench.py

bench-jit: setup
	$(BIN)/python bench/jit_bench.py

bench-submit: setup
	$(BIN)/python bench/submit_bench.py

bench-query-cost: setup
	$(BIN)/python bench/query_cost_bench.py

bench-case-mapping: setup
	$(BIN)/python bench/case_mapping_bench.py

bench-quality-scope: setup
	$(BIN)/python bench/quality_scope_bench.py

bench-scanned-rows: setup
	$(BIN)/python bench/scanned_rows_bench.py

bench-run-profile: setup
	$(BIN)/python bench/run_profile_bench.py

bench-roundtrips: setup
	$(BIN)/python bench/roundtrips_bench.py

# The whole suite as `make test` runs it, each test's wall and CPU seconds recorded (the machine otherwise idle).
bench-suite: setup $(AZURITE)
	$(BIN)/python bench/suite_bench.py

bench-compaction: setup
	$(BIN)/python bench/compaction_bench.py
