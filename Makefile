# kata-py: two set-up commands for a fresh Debian machine: `make demo` and `make test`.
# Both install what they need (apt packages, then a venv from setup.cfg).

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qemu-system-x86 linux-image-amd64 busybox-static runc containerd containernetworking-plugins \
	mmdebstrap e2fsprogs golang-go golang-github-hashicorp-yamux-dev systemd kmod cpio \
	util-linux procps iproute2
PROTO_SOURCES := $(wildcard proto/katapb/*.proto)

.PHONY: test demo apt venv proto check-proto bench-smoke install-systemd clean

test: apt venv check-proto
	$(PY) -m pytest -q tests

# A busybox container in a VM through kata-runtime (bench/demo.py): the guest image is built once
# into /var/cache/kata-py/images ($KATA_PY_IMAGE_CACHE elsewhere), then cached.
demo: apt venv
	$(PY) -m bench.demo

# Install only the Debian packages that are missing (apt-get update first, as apt wants).
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "apt: installing" $$missing; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

venv: $(VENV)/.installed

# Editable as a static .pth of the checkout and proto/ (katapb), not setuptools' default import
# finder: the finder imports pathlib, re and urllib in every interpreter the venv starts, ~10 ms
# of each kata-runtime command (a `pip install .` has no finder either). If a setuptools without
# the compat mode refuses it, the default editable install is used. Then the console scripts are
# rewritten to start without the site module (tools/launchers.py: ~4 ms of every command).
$(VENV)/.installed: setup.cfg pyproject.toml tools/launchers.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]' --config-settings editable_mode=compat || $(PY) -m pip install -q -e '.[dev]'
	echo '$(CURDIR)/proto' > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/kata_py_proto.pth"
	$(PY) tools/launchers.py
	touch $@

# Regenerate the Python modules of the agent API from proto/katapb/*.proto.
proto: venv
	$(PY) -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto $(PROTO_SOURCES)

# CI: the generated modules must be exactly what the sources produce.
check-proto: venv
	@if [ -n "$(PROTO_SOURCES)" ]; then \
		tmp=$$(mktemp -d) && \
		$(PY) -m grpc_tools.protoc -Iproto --python_out=$$tmp --grpc_python_out=$$tmp $(PROTO_SOURCES) && \
		for f in $$tmp/katapb/*.py; do cmp -s $$f proto/katapb/$$(basename $$f) || { echo "check-proto: proto/katapb/$$(basename $$f) is stale: run 'make proto'"; rm -rf $$tmp; exit 1; }; done; \
		rm -rf $$tmp; echo "check-proto: generated code matches proto/katapb"; \
	fi

bench-smoke: venv
	$(PY) -m pytest -q tests -k bench_smoke

install-systemd:
	install -m 0644 systemd/kata-proxy@.socket systemd/kata-proxy@.service /etc/systemd/system/
	systemctl daemon-reload

clean:
	rm -rf $(VENV) build *.egg-info
