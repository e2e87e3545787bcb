# tcpstate-tracer. Quick start (as root, or with sudo):  make run   /   make test
#
# `setup` installs what is missing and is safe to run again: Debian packages
# (BCC's Python module, kernel headers, test tools), then a venv that sees the
# system's bcc module, with the project installed in it.
#
# prometheus (with promtool) checks and unit-tests deploy/prometheus and runs in
# the live tests. On a host with systemd, installing it also starts Debian's
# prometheus service (:9090, /var/lib/prometheus); the tests never use it: they
# run their own server on a free port with a data directory they remove.

SHELL := /bin/bash
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
BIN := $(VENV)/bin
ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
# Not root: use sudo for the system parts only.
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
# What the daemon needs, and what only the tests need on top (a compiler for the
# layout checks, Prometheus and promtool, iptables for faults in namespaces,
# bpftool to read the program's maps independently of the daemon, Chromium and
# its WebDriver for the timeline page's browser tests, bpfcc-tools for the bench's
# comparison with tcpstates; gcc also builds the bench's load generator).
RUN_PACKAGES := python3-bpfcc python3-venv linux-headers-$(ARCH) iproute2
TEST_PACKAGES := gcc libc6-dev prometheus iptables bpftool chromium chromium-driver bpfcc-tools systemd openssl
ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup test-setup run test unit live rules dashboards bench clean install uninstall image image-base

# Installs the Debian packages of $(1) that are missing.
define install_missing
	@missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "setup: installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

setup:
	$(call install_missing,$(RUN_PACKAGES))
	@$(MAKE) --no-print-directory -s $(VENV)/.installed

test-setup: setup
	$(call install_missing,$(TEST_PACKAGES))

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
test: test-setup
	$(BIN)/python -m pytest tests $(PYTEST_ARGS)

unit: test-setup
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

live: test-setup
	$(BIN)/python -m pytest tests/live $(PYTEST_ARGS)

# Alert rules and scrape config alone (promtool check/test, metric names against
# the daemon's). `make test` runs them too: they are unit tests.
rules: test-setup
	$(BIN)/python -m pytest tests/unit/test_alert_rules.py $(PYTEST_ARGS)

# The Grafana dashboards (dashboards/*.json) from their code (dashboards/src); commit both.
# `make test` fails while the committed JSON differs from what the code generates.
dashboards: test-setup
	$(BIN)/python -m dashboards.generate

# The performance benchmark (about 15 minutes with its defaults; README "Performance").
#   sudo make bench ARGS="--compare-tcpstates"
bench: test-setup
	$(BIN)/tcpstate-tracer bench $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache

# On a systemd host, as root (sudo make install): the daemon in its own venv under
# $(PREFIX) (a copy, not this checkout), the unit, a commented configuration in /etc,
# the state and cache directories, the service user; enabled and started when systemd
# runs. DESTDIR installs into a scratch root instead (nothing is enabled, no user is
# made; the venv's scripts name their final paths, so run them from there only after
# moving the tree to /). uninstall keeps the configuration and the timeline unless PURGE=1.
PREFIX ?= /opt/tcpstate-tracer
SERVICE_USER ?= tcpstate-tracer
UNIT_DIR := $(DESTDIR)/etc/systemd/system
CONFIG := $(DESTDIR)/etc/tcpstate-tracer.yml
STATE_DIR := $(DESTDIR)/var/lib/tcpstate-tracer
CACHE_DIR := $(DESTDIR)/var/cache/tcpstate-tracer
SYSTEMD_RUNNING := $(shell [ -d /run/systemd/system ] && echo yes)

install: setup
	install -d $(DESTDIR)$(PREFIX)
	$(SYSTEM_PYTHON) -m venv --system-site-packages $(DESTDIR)$(PREFIX)/.venv
	$(DESTDIR)$(PREFIX)/.venv/bin/python -m pip install --quiet --disable-pip-version-check .
	@$(DESTDIR)$(PREFIX)/.venv/bin/python -c 'import bcc' || { echo "install: the venv cannot import bcc (python3-bpfcc)"; exit 1; }
	install -D -m 644 README.md $(DESTDIR)$(PREFIX)/README.md
	install -D -m 644 deploy/systemd/tcpstate-tracer.service $(UNIT_DIR)/tcpstate-tracer.service
	@if [ -e $(CONFIG) ]; then echo "install: keeping $(CONFIG)"; \
	else install -D -m 644 deploy/tcpstate-tracer.yml $(CONFIG); fi
	install -d -m 755 $(STATE_DIR) $(CACHE_DIR)
	@if [ -z "$(DESTDIR)" ]; then \
		id -u $(SERVICE_USER) >/dev/null 2>&1 || useradd --system --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin $(SERVICE_USER); \
		if [ "$(SYSTEMD_RUNNING)" = yes ]; then \
			systemctl daemon-reload && systemctl enable --now tcpstate-tracer && \
			echo "install: tcpstate-tracer enabled and started: systemctl status tcpstate-tracer"; \
		else \
			echo "install: systemd is not running here; start the daemon with:"; \
			echo "  $(PREFIX)/.venv/bin/tcpstate-tracer run --config.file /etc/tcpstate-tracer.yml --run-as $(SERVICE_USER)"; \
		fi; \
	else echo "install: installed into $(DESTDIR); nothing enabled"; fi

uninstall:
	@if [ -z "$(DESTDIR)" ] && [ "$(SYSTEMD_RUNNING)" = yes ]; then \
		systemctl disable --now tcpstate-tracer 2>/dev/null || true; fi
	rm -f $(UNIT_DIR)/tcpstate-tracer.service
	@if [ -z "$(DESTDIR)" ] && [ "$(SYSTEMD_RUNNING)" = yes ]; then systemctl daemon-reload; fi
	rm -rf $(DESTDIR)$(PREFIX) $(CACHE_DIR)
	@if [ "$(PURGE)" = 1 ]; then rm -rf $(STATE_DIR) $(CONFIG); \
	else echo "uninstall: kept $(CONFIG) and the timeline in $(STATE_DIR) (PURGE=1 removes them)"; fi

# The container image (deploy/container/), as root (sudo make image): a Debian 12 base
# built from Debian's packages (mmdebstrap, then podman import: no image registry is
# needed), kept and reused (FORCE_BASE=1 rebuilds it), then the Containerfile on it,
# tagged as the DaemonSet's image. How to run it: README, "Container image".
VERSION := $(shell sed -n 's/^__version__ = "\(.*\)"$$/\1/p' tracer/__init__.py)
IMAGE := tcpstate-tracer:$(VERSION)
BASE_IMAGE := localhost/tcpstate-tracer-base:bookworm
IMAGE_PACKAGES := mmdebstrap podman runc
FORCE_BASE ?= 0
# runc, not Debian 12's default crun (1.8), which refuses a host whose cgroups are in
# hybrid mode with a controller on the v2 side ("cgroups in hybrid mode not supported,
# drop all controllers from cgroupv2"), as on the project's machines; runc takes any.
PODMAN := podman --runtime runc
# Limits no higher than this shell's: otherwise podman asks for nofile=1048576 and
# more processes than it has itself, which root may not set without CAP_SYS_RESOURCE
# (absent from the project's machines: "error setting rlimit type 7: operation not permitted").
NOFILE := $(shell ulimit -Hn)
PODMAN_LIMITS := --ulimit nofile=$(NOFILE):$(NOFILE) --ulimit nproc=32768:32768
# The builder's CA store, lent to pip in the build as a secret (not kept in the image): a
# proxy that re-signs TLS, trusted here, is trusted there.
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt
comma := ,
CA_SECRET := $(if $(wildcard $(CA_BUNDLE)),--secret id=ca-certificates$(comma)src=$(CA_BUNDLE))

image-base:
	$(call install_missing,$(IMAGE_PACKAGES))
	$(SUDO) env FORCE=$(FORCE_BASE) PODMAN="$(PODMAN)" deploy/container/build-base.sh $(BASE_IMAGE)

image: image-base
	$(SUDO) $(PODMAN) build --network host $(PODMAN_LIMITS) $(CA_SECRET) \
		--build-arg BASE=$(BASE_IMAGE) --build-arg VERSION=$(VERSION) \
		-f deploy/container/Containerfile -t $(IMAGE) .
	@$(SUDO) $(PODMAN) image ls $(IMAGE)
