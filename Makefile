# hasync: everything a fresh Debian 12 machine needs, as root.
#   make demo   set up, run the failover lab with keepalived alone and with hasync, print both
#               side by side
#   make test   set up, run every test (unit, security, and lab tests in the VM)
# The venv holds hasync (this directory, with its test and bench extras) and the lab, its own
# distribution hasync-lab (bench/lab/: commands `hasync lab ...` or `hasync-lab ...`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
OUT ?= out

# libreswan, the lab's second IKE implementation (a road warrior: hasync_lab/libreswan.py),
# conflicts with strongswan-charon as a package: `make setup` unpacks it into LIBRESWAN_ROOT
# and installs only the libraries pluto links against (`apt-cache depends libreswan`, less
# those every Debian 12 has).
LIBRESWAN_ROOT := /opt/hasync-lab/libreswan
LIBRESWAN_LIBS := libnss3-tools libnss3 libnspr4 libldns3 libunbound8 libevent-core-2.1-7 \
	libevent-pthreads-2.1-7 libcurl3-nss libldap-2.5-0 libcap-ng0
# Debian packages: the lab kernel and QEMU (our host kernel has no ESP), strongSwan with the ha
# plugin, keepalived, the tools the lab drives, and Prometheus (the lab's monitoring server;
# its promtool tests deploy/hasync-alerts.yml).
APT_PACKAGES := linux-image-amd64 qemu-system-x86 strongswan-charon strongswan-swanctl \
	libcharon-extra-plugins libstrongswan-standard-plugins keepalived iproute2 nftables \
	tcpdump iputils-ping arping kmod udev procps psmisc util-linux busybox-static python3-venv \
	prometheus $(LIBRESWAN_LIBS)

.PHONY: setup apt libreswan venv bytecode demo test test-unit test-lab test-lab-extended lint clean

setup: apt libreswan venv bytecode

libreswan: $(LIBRESWAN_ROOT)/usr/libexec/ipsec/pluto

$(LIBRESWAN_ROOT)/usr/libexec/ipsec/pluto: | apt
	@if [ "$$(id -u)" != 0 ]; then echo "make setup needs root to unpack libreswan into $(LIBRESWAN_ROOT)" >&2; exit 1; fi
	set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && apt-get -q -o APT::Sandbox::User=root download libreswan); \
	rm -rf $(LIBRESWAN_ROOT).new; mkdir -p $(dir $(LIBRESWAN_ROOT)); dpkg-deb -x "$$tmp"/libreswan_*.deb $(LIBRESWAN_ROOT).new; \
	if ldd $(LIBRESWAN_ROOT).new/usr/libexec/ipsec/pluto | grep 'not found'; then \
		echo "pluto lacks the libraries above: add their packages to LIBRESWAN_LIBS" >&2; exit 1; fi; \
	rm -rf $(LIBRESWAN_ROOT); mv $(LIBRESWAN_ROOT).new $(LIBRESWAN_ROOT)

# The lab VM runs Python with PYTHONDONTWRITEBYTECODE: compile here, once, what every daemon
# and probe it starts would otherwise compile again under emulation.
bytecode: venv
	$(BIN)/python -m compileall -q hasync bench bench/lab/hasync_lab >/dev/null

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make setup needs root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

venv: $(VENV)/.stamp

$(VENV)/.stamp: pyproject.toml bench/lab/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel  # the build backend: tests/test_wheel.py
	$(BIN)/pip install -q -e '.[test,bench]' -e bench/lab
	touch $@

lint: venv
	$(BIN)/ruff check hasync tests bench

test: setup lint
	$(BIN)/python -m pytest -v --durations=15 -m 'not lab_extended' tests

test-unit: venv
	$(BIN)/python -m pytest -v -m 'not lab' tests

test-lab: setup
	$(BIN)/python -m pytest -v -m 'lab and not lab_extended' tests

test-lab-extended: setup
	$(BIN)/python -m pytest -v -m lab_extended tests

demo: setup
	@mkdir -p $(OUT)
	$(BIN)/hasync lab failover --baseline --json $(OUT)/baseline.json --out $(OUT)/lab-baseline
	$(BIN)/hasync lab failover --json $(OUT)/hasync.json --out $(OUT)/lab-hasync
	$(BIN)/hasync lab compare $(OUT)/baseline.json $(OUT)/hasync.json

clean:
	rm -rf $(VENV) $(OUT) *.egg-info bench/lab/*.egg-info
