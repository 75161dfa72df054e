# The README's two commands: `make demo` (install + launch the explorer) and `make test`
# (install everything the tests need, Python and Debian packages, then run the whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Real data for the eval sets, training and ingestion tests, and Chromium for the browser test.
APT_PACKAGES := openclipart-png openclipart-svg tuxpaint-stamps-default dataset-fashion-mnist \
	r-doc-pdf python-reportlab-doc debian-reference-en chromium

.PHONY: demo test install install-test apt lint

demo: $(VENV)/.runtime
	$(PY) app.py

test: $(VENV)/.test .apt-installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

install: $(VENV)/.runtime
install-test: $(VENV)/.test .apt-installed

# torch first, pinned to the local CPU build: an unpinned torch would pull a multi-GB CUDA build.
$(VENV)/.runtime: requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.test: $(VENV)/.runtime requirements-test.txt
	$(PIP) install -q -r requirements-test.txt
	touch $@

.apt-installed: Makefile
	$(SUDO) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PACKAGES)
	touch $@

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
