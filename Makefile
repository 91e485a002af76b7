# Every target installs what it needs first, and does nothing when it is already there.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
E2EFS := $(VENV)/bin/e2efs
STAMP := $(VENV)/.installed
SUDO  := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages: FUSE itself, the headers pyfuse3 builds against, and the
# real programs the tests drive (rsync, rclone as a stand-in sync client).
SYSTEM_DEPS := fuse3 libfuse3-dev pkg-config rsync rclone sqlite3

.PHONY: all demo test bench stress system-deps venv clean

all: test

system-deps:
	@missing=$$(for p in $(SYSTEM_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml | system-deps
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

venv: system-deps $(STAMP)

demo: venv
	$(PY) scripts/demo.py

test: venv
	$(PY) -m pytest -q tests

# The peers (and fio for the random-I/O row) come from Debian; one that cannot be
# installed is reported as missing by the harness, not a failure here.
BENCH_DEPS := gocryptfs securefs fio

bench: venv
	@missing=$$(for p in $(BENCH_DEPS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -qq || true; \
	  for p in $$missing; do \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$p >/dev/null \
	      || echo "make bench: could not install $$p; it is reported as missing"; \
	  done; \
	fi
	$(PY) scripts/bench.py $(BENCH_ARGS)

# Not part of make test: 120 SIGKILL points, 4000 random operations with remounts
# and kills against a model, a 100 000-entry directory, 2 x 10 000 operations
# comparing the daemon's permission checks with the kernel's (STRESS_ARGS to change).
stress: venv
	$(PY) scripts/stress.py $(STRESS_ARGS)

clean:
	rm -rf $(VENV) demo bench-results .pytest_cache *.egg-info
