# Two entry points, both from a fresh checkout: `make demo` and `make test`.
# Everything else (venv, binaries built from source and cached by version) is prepared
# on the way; set VNODE_CACHE_DIR to move the cache (default ~/.cache/vnode).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python

.PHONY: demo test unit e2e bench bench-cold fuzz binaries system-deps down clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,demo]'
	touch $@

# Debian's qemu-user runs the built llama-server under emulated older CPUs
# (tests/e2e/test_portable_binary.py); installed here when missing and we are root.
QEMU = qemu-$(shell uname -m)
system-deps:
	@command -v $(QEMU) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing qemu-user (for the portability test)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; \
	  else echo "the tests need $(QEMU): apt-get install qemu-user"; exit 1; fi; }

binaries: $(VENV)/.installed
	$(PY) -m vnode cluster build

demo: binaries
	$(PY) -m vnode demo

# pytest exits 5 when it collected no test: that must fail, not pass silently.
test: binaries system-deps
	$(PY) -m vnode cluster build --suites
	$(PY) -m pytest -ra tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "no tests were collected: failing"; exit 1; fi; exit $$rc

unit: $(VENV)/.installed
	$(PY) -m pytest -q tests/unit

e2e: binaries system-deps
	$(PY) -m pytest -ra tests/e2e

# The upstream suites against a vnode node (issue 12): Kubernetes e2e tiers 1 and 2 and
# virtual-kubelet's e2e suite, their pods rewritten into Gemma servers; prints a table and
# keeps the last results in docs/conformance.md. (`make test` runs the same specs, through
# tests/e2e/test_conformance.py.) CONFORMANCE_TIERS=tier1,vk runs a part.
CONFORMANCE_TIERS ?= tier1,tier2,vk
.PHONY: conformance
conformance: binaries
	$(PY) -m tests.conformance --tiers $(CONFORMANCE_TIERS) --docs docs/conformance.md

bench: binaries
	$(PY) bench/node.py
	$(PY) bench/pods.py
	$(PY) bench/kubelet_api.py
	$(PY) bench/portforward.py
	$(PY) bench/tooling.py
	$(PY) bench/scale.py

# The first `make demo` on empty caches, each step timed (30-60 minutes).
bench-cold: $(VENV)/.installed
	$(PY) bench/coldstart.py

# The SPDY frame parser and the WebSocket channel decoder, mutation-fuzzed for
# FUZZ_SECONDS each (CI runs their bounded property tests only).
FUZZ_SECONDS ?= 300
fuzz: $(VENV)/.installed
	VNODE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q -s -k fuzz_long tests/unit/kubelet_api

down:
	$(PY) -m vnode cluster down

clean: down
	rm -rf $(VENV) build *.egg-info
