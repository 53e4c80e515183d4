# qfleet: one test command (`make test`) that sets up everything it needs from this repository's own files.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv binaries runtime-env test test-operator test-runtime test-unit test-integration test-recalibration \
	chaos lint fleet-up fleet-down fleet-status demo demo-down bench bench-runtime clean

help:
	@echo "make test              set up the venv and the local fleet's binaries, run every test tier"
	@echo "make test-unit         pure tests only (no cluster)"
	@echo "make test-integration  tests on the local fleet (real control plane, KWOK, executor, Prometheus, gateway)"
	@echo "make test-recalibration  calibration refresh on the local fleet, with a real traffic shift and a schedule"
	@echo "make chaos             faults, bad input and two replicas on the local fleet, with a table (docs/reliability.md)"
	@echo "make test-runtime      the runtime's tests (ModelOpt, torch) in its own cached virtual environment"
	@echo "make fleet-up          start the local fleet (python -m localfleet up)"
	@echo "make fleet-down        stop it"
	@echo "make demo              the whole story on the local fleet (about 33 min warm), report in demo-report/"
	@echo "make demo-down         stop everything make demo started"
	@echo "make bench             the fleet race: qfleet and Argo Rollouts, N models on NODES simulated GPU nodes (N=1000 NODES=1000)"
	@echo "make bench-runtime     prefix-cache hit rate and TTFT by KV format and budget (CPU), in benchmarks/results/"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo]'
	touch $@

venv: $(VENV)/.installed

# Go-built binaries (etcd, kube-*, kwok, helm, kubectl, prometheus), cached by version outside the repo.
binaries: venv
	$(PY) -m localfleet build

# The runtime's virtual environment (torch, ModelOpt: ~6 GB) and the small test model, cached outside the repo by a
# hash of their pins; the operator's .venv never gets torch.
runtime-env:
	$(PYTHON) runtime_image/setup_env.py

lint: venv
	$(VENV)/bin/lint-imports

test: test-operator test-runtime

test-operator: venv binaries runtime-env lint
	$(PY) -m pytest --ignore=tests/runtime --durations=25 $(PYTEST_ARGS)

test-runtime: runtime-env
	$$($(PYTHON) runtime_image/setup_env.py --python) -m pytest tests/runtime --durations=10 $(PYTEST_ARGS)

test-unit: venv
	$(PY) -m pytest tests/unit tests/chart tests/argocd $(PYTEST_ARGS)

test-integration: venv binaries runtime-env
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

# The calibration refresh's tests with their long variants (a real traffic shift, a scheduled refresh: two real
# pipelines and a canary each, about 20 minutes apiece on 2 cores); `make test` runs only the short one (drift stood in
# for by the runtime's fault switch).
test-recalibration: venv binaries runtime-env
	QFLEET_RECALIBRATION=full $(PY) -m pytest -s tests/integration/test_recalibration.py $(PYTEST_ARGS)

# The chaos suite at full size (24 kill points, 1,000 fuzzed specs, ...); `make test` runs each scenario's short
# variant (the control-plane faults and the kill -9 under gateway traffic, about 20 minutes of real pipelines, run
# here only). QFLEET_CHAOS_SEED=<n> replays a run (the seed is printed).
CHAOS_TESTS := tests/integration/test_spec_fuzz.py tests/integration/test_ha.py tests/integration/test_chaos_kill.py \
	tests/integration/test_chaos_kill_traffic.py tests/integration/test_chaos_faults.py
chaos: venv binaries runtime-env
	QFLEET_CHAOS=full $(PY) -m pytest -s $(CHAOS_TESTS) $(PYTEST_ARGS)

fleet-up: venv binaries
	$(PY) -m localfleet up

fleet-down: venv
	$(PY) -m localfleet down

fleet-status: venv
	$(PY) -m localfleet status

demo: venv binaries runtime-env
	$(PY) -m localfleet.demo run

demo-down: venv
	$(PY) -m localfleet.demo down

# A benchmark, not a test: N, NODES, INTERVAL, LEGS, GROWTH_MODELS, GROWTH_NODES from the environment
# (docs/performance.md); builds Argo Rollouts' controller on first use, cached by version like the fleet's binaries.
bench: venv binaries
	$(PY) -m benchmarks.fleet

# A benchmark, not a test: the runtime's venv measures, the operator's venv (matplotlib) draws (docs/performance.md).
bench-runtime: venv runtime-env
	$$($(PYTHON) runtime_image/setup_env.py --python) benchmarks/runtime/bench.py
	$(PY) benchmarks/runtime/plot.py

clean:
	rm -rf $(VENV) .pytest_cache
