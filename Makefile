# Two commands do all setup (see README.md):
#   make demo   creates .venv, installs gradguard with its dev extras, runs the main example
#   make test   same venv, runs lint, type checks and the whole test-suite
# Both are idempotent: the install step reruns only when pyproject.toml or constraints.txt change.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
EXTRAS ?= dev

.PHONY: demo test lint typecheck bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/seed_example.py

lint: $(STAMP)
	$(VENV)/bin/ruff check gradguard adapters tests examples benchmarks
	$(VENV)/bin/ruff format --check gradguard adapters tests examples benchmarks

typecheck: $(STAMP)
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
