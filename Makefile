# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install clean docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and by exact version, so nothing below can make pip resolve a CUDA build here.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/convlearn demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

# The inner loop: everything but the tests marked slow (< 3 min on 2 cores). CI and `make test` run all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

docs: $(STAMP)
	$(VENV)/bin/convlearn config docs > docs/CONFIG.md

clean:
	rm -rf $(VENV) runs .pytest_cache
