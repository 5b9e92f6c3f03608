# `make test` and `make demo` each create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench readme clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q

demo: $(STAMP)
	$(PY) -m optlab.cli demo

bench: $(STAMP)
	$(PY) benchmarks/step_time.py

readme: $(STAMP)
	$(PY) -m optlab.cli catalog --write README.md

clean:
	rm -rf $(VENV) .pytest_cache
