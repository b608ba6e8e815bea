# Two entry points, both from a fresh checkout: `make demo` and `make test`.
# Everything else (venv, binaries built from source and cached by version) is prepared
# on the way; set VNODE_CACHE_DIR to move the cache (default ~/.cache/vnode).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test unit e2e bench fuzz binaries down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo]'
	touch $@

binaries: $(VENV)/.installed
	$(PY) -m vnode cluster build

demo: binaries
	$(PY) -m vnode demo

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: binaries
	$(PY) -m pytest -ra tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

e2e: binaries
	$(PY) -m pytest -ra tests/e2e

bench: binaries
	$(PY) bench/node.py
	$(PY) bench/pods.py
	$(PY) bench/kubelet_api.py
	$(PY) bench/portforward.py

# The SPDY frame parser and the WebSocket channel decoder, mutation-fuzzed for
# FUZZ_SECONDS each (CI runs their bounded property tests only).
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.installed
	VNODE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q -s -k fuzz_long tests/unit/kubelet_api

down:
	$(PY) -m vnode cluster down

clean: down
	rm -rf $(VENV) build *.egg-info
