# `make test` and `make demo` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test test-all demo bench readme docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# the whole suite except tests marked slow (pyproject's addopts: -m 'not slow')
test: $(STAMP)
	$(PY) -m pytest -n 2 -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -n 2 -q -m ""

# the preset comparison: tables, results.json, report.md and plots in bench_out/demo/
demo: $(STAMP)
	$(PY) -m optlab.cli demo

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

# regenerate everything derived from optlab.catalog(): the README table and docs/ pages
readme: $(STAMP)
	$(PY) -m optlab.cli catalog --write README.md --docs docs/

docs: readme

clean:
	rm -rf $(VENV) .pytest_cache
