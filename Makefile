# Every target creates .venv on first use (and reinstalls when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv quick test demo bench readme api docs dist notebooks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# the distribution was called `optlab` before it became `optlab-jax`: drop that editable install
	if $(PY) -m pip show optlab 2>/dev/null | grep -q "^Editable project location: $(CURDIR)$$"; then \
	  $(PY) -m pip uninstall -q -y optlab; fi
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# .venv with optlab (editable) and the test tools; then `. .venv/bin/activate`
venv: $(STAMP)

# the first thing to try: imports every module, each recipe's NumPy reference and
# one contract point, the unit tests (-m quick: tests/conftest.py defines it)
quick: $(STAMP)
	$(PY) -m pytest -n 2 -q -m quick

# the whole suite, tests marked slow included (what CI runs: .ci/run)
test: $(STAMP)
	$(PY) -m pytest -n 2 -q

# the preset comparison: tables, results.json, report.md and plots in bench_out/demo/
demo: $(STAMP)
	$(PY) -m optlab.cli demo

# step time against optax (benchmarks/README.md)
bench: $(STAMP)
	$(PY) benchmarks/step_time.py

# regenerate everything derived from optlab.catalog(): the README table and docs/ pages
readme: $(STAMP)
	$(PY) -m optlab.cli catalog --write README.md --docs docs/

# regenerate optlab/__init__.py, the explicit public namespace, from the modules' __all__
api: $(STAMP)
	$(PY) -m tests.api --write

# the API reference from the docstrings (Sphinx, docs/api/conf.py), warnings as errors:
# HTML in docs/_build/html/index.html (-E: a fresh build, so no warning hides in a cached page)
docs: $(STAMP)
	$(PY) -m sphinx -E -b html -W --keep-going -n -q docs/api docs/_build/html

# the wheel and the sdist of optlab-jax, in dist/
dist: $(STAMP)
	$(PY) -m build --no-isolation --outdir dist .

# jupyter in .venv ([notebooks] extra), then the notebooks in the browser
notebooks: $(STAMP)
	$(PY) -m pip install -q -e '.[dev,notebooks]'
	$(VENV)/bin/jupyter notebook notebooks/

clean:
	rm -rf $(VENV) .pytest_cache build dist bench_out notebooks/bench_out
