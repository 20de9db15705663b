# The two commands a new user needs: `make serve` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DATA   ?= ./fleetd-data
# make serve PORT=8443 HOST=127.0.0.1: taken from make's command line only (a PORT or HOST in the environment
# often means something else, e.g. zsh sets HOST); fleetd itself reads FLEETD_PORT and FLEETD_HOST.
SERVE_ARGS := $(if $(filter command line,$(origin PORT)),--port $(PORT)) \
              $(if $(filter command line,$(origin HOST)),--host $(HOST))

.PHONY: serve test lint bench binary smoke clean agent proto

# Two stamps: .installed is what the server needs (make serve), .installed-test adds the test toolchain (ruff,
# mypy, pytest, playwright, ...: make test, make lint). Either order works; a changed pyproject.toml redoes both.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "fleetd needs Python 3.11 or newer")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

serve: $(VENV)/.installed agent
	$(VENV)/bin/fleetd serve --data-dir $(DATA) $(strip $(SERVE_ARGS))

# The server and the device agent alike; pyproject.toml holds the agent's code to Python 3.9 syntax. Devices
# run 3.9+, so the agent is type-checked again against the oldest standard library mypy knows (3.10): a name
# added in 3.11 (datetime.UTC, hashlib.file_digest) fails here, not on a device.
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests agent
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --python-version 3.10 --cache-dir .mypy_cache/py310 -p fleet_agent

test: lint agent
	$(PY) -m pytest -q
	$(MAKE) smoke

$(VENV)/.installed-build: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[build]'
	@touch $@

# The device agent: dist/fleet-agent.pyz and dist/fleet-agent-launcher.py, which fleetd serves at /agent/
# (reproducible: the same source gives the same bytes; see agent/build_zipapp.py).
agent:
	$(PYTHON) agent/build_zipapp.py

# The single binary, dist/fleetd (PyInstaller one-file; see fleetd.spec and packaging/README.md).
binary: $(VENV)/.installed-build agent
	$(VENV)/bin/pyinstaller --noconfirm --log-level WARN fleetd.spec
	@ls -l dist/fleetd

# The binary's smoke test: no Python on the PATH, HTTPS, a simulated fleet takes an update, numbers.
smoke: binary $(VENV)/.installed-test
	FLEETD_BIN=dist/fleetd $(PY) -m pytest -q tests/e2e/test_binary.py

# Benchmarks, each against a baseline measured in the same run (docs/performance.md); needs wrk and nginx
# (py-spy for the profile) and says how to install what is missing. Not part of `make test`.
# Options: make bench BENCH_ARGS="--quick"   (python -m tests.bench --help lists them all)
bench: $(VENV)/.installed-test
	$(PY) -m tests.bench $(BENCH_ARGS)

# The protobuf code in src/fleetd/protobuf, from the .proto files in src/fleetd/proto (commit the result).
proto: $(VENV)/.installed-test
	$(PY) -m tests.support.protogen

clean:
	rm -rf $(VENV) build dist .pytest_cache .ruff_cache .mypy_cache
