# corral: `make demo` sets up a fresh Debian 12 machine (as root) and runs a
# one-member cluster with two containers; `make test` runs the whole suite.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := lxc lxc-dev busybox-static dnsmasq-base iptables iproute2 pkg-config \
	squashfs-tools uidmap gcc python3 python3-venv python3-dev \
	qemu-system-x86 qemu-utils e2fsprogs cpio \
	ovmf systemd-boot-efi binutils fdisk dosfstools mtools btrfs-progs debootstrap
# Installed without recommends (prometheus would pull in prometheus-node-exporter): the
# tests start their own Prometheus (devtools/prometheus.py) and use promtool.
APT_PACKAGES_BARE := prometheus
export CORRAL_DIR ?= /var/lib/corral

.PHONY: deps demo demo-clean test test-compose lint bench chaos install-systemd wheels \
	test-ansible

# `make install-systemd`: corral.service, its stop helper and the `corral` group
# (deploy/systemd/README.md). CORRAL_VENV is where corral is pip-installed; with DESTDIR
# (a staged install, for packaging) no group is made and systemd is not reloaded.
CORRAL_VENV ?= /opt/corral/venv
CORRAL_LIBEXEC ?= /usr/local/lib/corral
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
SYSUSERS_DIR ?= /etc/sysusers.d
DESTDIR ?=

# Debian's prometheus package enables and starts a server on :9090 when it is installed;
# the tests need only the binaries, so a fresh install is stopped and disabled at once.
$(VENV)/.apt-stamp:
	@set -e; missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	bare=$$(for p in $(APT_PACKAGES_BARE); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing$$bare" ]; then apt-get update -q; fi; \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi; \
	if [ -n "$$bare" ]; then \
		echo "installing apt packages without recommends: $$bare"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$bare; \
		for s in $$bare; do systemctl disable --now $$s 2>/dev/null || true; done; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV)/.pip-stamp: $(VENV)/.apt-stamp pyproject.toml
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# CRIU (stateful stop and moves of containers): Debian 12's 3.17 fails on newer kernels.
$(VENV)/.criu-stamp: $(VENV)/.apt-stamp scripts/build-criu.sh
	sh scripts/build-criu.sh
	@touch $@

deps: $(VENV)/.pip-stamp $(VENV)/.criu-stamp

# The docker-compose test (tests/deploy/test_compose.py) needs an engine and compose v1.
# Without recommends: runc recommends Debian's criu 3.17, which fails on this kernel. A fresh
# install's services are stopped and disabled: the test starts a private dockerd when none
# answers, without Docker's iptables rules (its FORWARD policy DROP would cut every other
# test's bridges).
DOCKER_PACKAGES := docker.io docker-compose
$(VENV)/.docker-stamp: $(VENV)/.apt-stamp
	@set -e; missing=$$(for p in $(DOCKER_PACKAGES); do \
		dpkg-query -W -f '$${Status}\n' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing apt packages without recommends: $$missing"; \
		apt-get update -q; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		systemctl disable --now docker.socket docker.service containerd.service 2>/dev/null || true; \
	fi
	@touch $@

demo: deps
	@bash scripts/demo.sh

demo-clean: deps
	@$(VENV)/bin/corral dev-cluster down --dir "$${CORRAL_DEV_DIR:-/var/lib/corral-dev}" || true
	@$(PY) -m devtools.teardown "$(CORRAL_DIR)"

install-systemd:
	@set -e; \
	unit=$(DESTDIR)$(SYSTEMD_UNIT_DIR)/corral.service; \
	install -d -m 0755 $(DESTDIR)$(SYSTEMD_UNIT_DIR) $(DESTDIR)$(CORRAL_LIBEXEC) $(DESTDIR)$(SYSUSERS_DIR); \
	install -m 0755 deploy/systemd/corral-stop $(DESTDIR)$(CORRAL_LIBEXEC)/corral-stop; \
	install -m 0644 deploy/systemd/corral.sysusers.conf $(DESTDIR)$(SYSUSERS_DIR)/corral.conf; \
	sed -e 's#/opt/corral/venv#$(CORRAL_VENV)#g' -e 's#/usr/local/lib/corral#$(CORRAL_LIBEXEC)#g' \
		deploy/systemd/corral.service > "$$unit.tmp"; \
	chmod 0644 "$$unit.tmp"; mv "$$unit.tmp" "$$unit"; \
	echo "installed $$unit, $(DESTDIR)$(CORRAL_LIBEXEC)/corral-stop, $(DESTDIR)$(SYSUSERS_DIR)/corral.conf"; \
	if [ -z "$(DESTDIR)" ]; then \
		[ -x $(CORRAL_VENV)/bin/corral ] || echo "warning: $(CORRAL_VENV)/bin/corral is missing (deploy/systemd/README.md)"; \
		if ! getent group corral >/dev/null; then \
			systemd-sysusers $(SYSUSERS_DIR)/corral.conf 2>/dev/null || groupadd --system corral; \
			echo "made group corral (its members may use the unix socket: root-equivalent)"; \
		fi; \
		if [ -d /run/systemd/system ]; then systemctl daemon-reload; \
		else echo "systemd is not running: no daemon-reload"; fi; \
	fi

# lint-imports checks the import contracts in pyproject.toml ([tool.importlinter]).
lint: deps
	$(VENV)/bin/ruff check corral_cli cluster node_agent scheduler simulator corral_shared devtools tests bench
	$(VENV)/bin/mypy corral_cli cluster node_agent scheduler simulator corral_shared devtools tests bench
	$(VENV)/bin/lint-imports --no-cache

test: deps $(VENV)/.docker-stamp
	$(VENV)/bin/ruff check corral_cli cluster node_agent scheduler simulator corral_shared devtools tests bench
	$(VENV)/bin/mypy corral_cli cluster node_agent scheduler simulator corral_shared devtools tests bench
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q -p no:cacheprovider --timeout=600 tests

# docker-compose.test.yml for real; prints the image build, up-to-ready and failover times.
test-compose: deps $(VENV)/.docker-stamp
	$(PY) -m pytest -q -s -p no:cacheprovider --timeout=900 tests/deploy/test_compose.py

bench: deps
	$(PY) bench/lifecycle.py

# The chaos suite's long profile (the short one runs in `make test`).
chaos: deps
	CORRAL_CHAOS=long $(PY) -m pytest -q -s -p no:cacheprovider --timeout=1800 tests/chaos

# The Ansible playbook (ansible/): build/corral-wheels.tar, corral and its dependencies as
# wheels built from this checkout, which the playbook ships to hosts without internet.
wheels: deps
	$(PY) -m devtools.wheels

# Only the playbook's real test: three ssh hosts in namespaces, deployed, run again, grown.
test-ansible: deps
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests/deploy/test_ansible.py
