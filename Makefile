# The two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
APT_STAMP := /var/lib/web-node-deps.stamp
# System packages the tests start for real: PostgreSQL, Prometheus (promtool), Chromium;
# systemd for systemd-analyze verify of deploy/web-node.service; QEMU, Debian's kernel,
# busybox-static, cpio, kmod and xz-utils for the pure cgroup v2 guest (tools/v2-guest).
APT_PACKAGES := postgresql prometheus chromium systemd
V2_GUEST_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static cpio kmod xz-utils

.PHONY: install deps run quickstart test test-v2 lint typecheck unit bench clean docs

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Installs the system packages the test suite starts for real (as root, via apt).
deps:
	@if [ -f $(APT_STAMP) ] && command -v promtool >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v chromium >/dev/null && command -v systemd-analyze >/dev/null \
		&& command -v qemu-system-x86_64 >/dev/null && ls /boot/vmlinuz-* >/dev/null 2>&1 && dpkg -s busybox-static cpio kmod xz-utils >/dev/null 2>&1; then \
		echo "system packages present"; \
	else \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) $(V2_GUEST_PACKAGES) >/dev/null && \
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

test: install deps lint typecheck unit test-v2

# The real-kernel cgroup, supervisor and metrics tests listed in tests/v2_guest_tests.txt,
# again on pure cgroup v2 (systemd's layout): inside a QEMU guest booting Debian's kernel.
test-v2: install deps
	V2_GUEST_PYTHON=$(PY) tools/v2-guest-tests

# Regenerates docs/ from the code (tests/test_docs.py fails when they disagree).
docs: install
	$(PY) -m web_node.reference

bench: install
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
