# The two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_STAMP := /var/lib/web-node-deps.stamp
# System packages the tests start for real: PostgreSQL, Prometheus (promtool), Chromium.
APT_PACKAGES := postgresql prometheus chromium

.PHONY: install deps run quickstart test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Installs the system packages the test suite starts for real (as root, via apt).
deps:
	@if [ -f $(APT_STAMP) ] && command -v promtool >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v chromium >/dev/null; then \
		echo "system packages present"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null && \
		{ systemctl disable --now prometheus postgresql >/dev/null 2>&1 || true; } && \
		{ service prometheus stop >/dev/null 2>&1 || true; } && \
		touch $(APT_STAMP); \
	fi

run: install
	$(VENV)/bin/web-node quickstart

lint: install
	$(VENV)/bin/ruff check web_node cgroups tests bench

typecheck: install
	$(VENV)/bin/mypy

unit: install deps
	$(VENV)/bin/pytest -q

test: install deps lint typecheck unit

bench: install
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
