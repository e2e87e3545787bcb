# tcpstate-tracer. Quick start (as root, or with sudo):  make run   /   make test
#
# `setup` installs what is missing and is safe to run again: Debian packages
# (BCC's Python module, kernel headers, test tools), then a venv that sees the
# system's bcc module, with the project installed in it.

SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
# Not root: use sudo for the system parts only.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
DEB_PACKAGES := python3-bpfcc python3-venv linux-headers-$(ARCH) iproute2 gcc libc6-dev
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup deb-packages run test unit live clean

setup: deb-packages $(VENV)/.installed

deb-packages:
	@missing=$$(for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# --system-site-packages: bcc is Debian's python3-bpfcc, never the unrelated PyPI "bcc".
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@$(BIN)/python -c 'import bcc' || { echo "setup: the venv cannot import bcc (python3-bpfcc)"; exit 1; }
	@touch $@

run: setup
	$(BIN)/tcpstate-tracer run $(ARGS)

# Unit tests need nothing; live tests need root and the kernel (with CI=true they
# fail instead of skipping when they cannot run).
test: setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

unit: setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

live: setup
	$(BIN)/python -m pytest tests/live $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
