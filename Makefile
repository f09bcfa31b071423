# Customer lifecycle platform — the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
ASYNCAPI_SPECS := .cache/asyncapi-specs/package/schemas/3.0.0-without-$$id.json

.PHONY: help install run test chaos chaos-ci fuzz soak test-unit test-integration test-e2e lint format docs docs-check bench chaos soak deploy-check clean

help:
	@echo "make run          start the whole platform on embedded defaults (Ctrl-C stops it)"
	@echo "make test         unit, integration and end-to-end tests on real PostgreSQL and Kafka"
	@echo "make lint         ruff + mypy"
	@echo "make docs         regenerate docs/asyncapi.yaml and docs/events/*.schema.json"
	@echo "make bench        benchmarks (prints a table, writes bench/results.json)"
	@echo "make chaos        fault-injection tests;  make soak MINUTES=30"
	@echo "make deploy-check validate the image, compose file and Kubernetes manifests"

# The runtime dependencies at the image's pins (requirements.lock without its hashes, which
# pip would demand of the editable project too): tests, benches and the image run the same
# versions. The dev tools float within pyproject's ranges.
$(STAMP): pyproject.toml requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	grep -E '^[A-Za-z0-9._-]+==' requirements.lock | sed 's/ *\\$$//' > $(VENV)/constraints.txt
	$(PY) -m pip install --quiet -c $(VENV)/constraints.txt -e '.[dev,deploy]'
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/crm up

# The e2e platform (four service processes) runs in a pytest process of its own, on fresh
# infrastructure: services left running by other suites would share its consumer groups.
TEST_SUITES := tests/unit tests/integration tests/fuzz tests/bench/test_harness.py

test: $(STAMP)
	$(PY) -m pytest $(TEST_SUITES) -q
	$(PY) -m pytest tests/e2e -q

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration -q

test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e -q

lint: $(STAMP)
	$(VENV)/bin/ruff check shared services tests
	$(VENV)/bin/ruff format --check shared services tests
	$(VENV)/bin/mypy shared services

format: $(STAMP)
	$(VENV)/bin/ruff check --fix shared services tests
	$(VENV)/bin/ruff format shared services tests

docs: $(STAMP)
	$(VENV)/bin/crm docs

$(ASYNCAPI_SPECS):
	mkdir -p .cache/asyncapi-specs
	cd .cache/asyncapi-specs && npm pack --silent @asyncapi/specs@6.11.1 >/dev/null && tar xzf asyncapi-specs-6.11.1.tgz

docs-check: $(STAMP) $(ASYNCAPI_SPECS)
	$(VENV)/bin/crm docs --check --asyncapi-schema '$(ASYNCAPI_SPECS)'

# lifetimes (the reference CLV fitter, unmaintained, pulls pandas) lives in its own venv under .cache.
BENCH_VENV := .cache/bench-venv
bench: $(STAMP)
	@test -x $(BENCH_VENV)/bin/python || { $(PY) -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install -q lifetimes==0.11.3 matplotlib py-spy "numpy==$$($(PY) -c 'import numpy;print(numpy.__version__)')" "scipy==$$($(PY) -c 'import scipy;print(scipy.__version__)')"; }
	$(PY) tests/bench/run.py $(BENCH_ARGS)

# Fault injection on the real platform (needs Java for Apache Kafka): kill -9 workers, restart the
# broker and PostgreSQL, duplicates, poison messages; then reconcile. chaos-ci is the short profile.
chaos: $(STAMP)
	$(PY) -m pytest tests/chaos -q -s

chaos-ci: $(STAMP)
	CRM_CHAOS_PROFILE=ci $(PY) -m pytest tests/chaos -q -s

fuzz: $(STAMP)
	$(PY) -m pytest tests/fuzz -q

MINUTES ?= 30
soak: $(STAMP)
	$(PY) tests/soak/soak.py --minutes $(MINUTES) $(if $(RATE),--rate $(RATE))

deploy-check: $(STAMP)
	bash deploy/check.sh

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
