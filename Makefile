# Two commands for a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Each venv keeps the DeepSpeed ops it JIT-builds (torch keys ~/.cache/torch_extensions by the venv's path, so
# two venvs sharing it rebuild each other's CPU comm op and fused Adam, ~75 s, at every switch).
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions

.PHONY: venv system-deps demo lint test test-fast bench clean

venv: $(STAMP)

# Re-installs only when the pinned requirements or setup.py change. pip byte-compiles every package here
# (~60 s of a fresh install): not --no-compile, because with PYTHONDONTWRITEBYTECODE=1 (set on the machines
# this was measured on) every process would then compile torch and transformers again at each import.
$(STAMP): requirements-ci.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

# SLURM (munge, slurm-wlm) and OpenMPI for the cluster tests: nothing to do when present; installed as root;
# otherwise it stops, printing the one command to run.
system-deps:
	@bash .ci/install_system_deps.sh

demo: venv
	$(PY) -m mometas_ds.cli.demo --overwrite

lint: venv
	$(PY) -m ruff check .

# Everything (20-22 minutes on 2 CPU cores): system packages, lint, every test.
test: system-deps lint
	$(PY) -m pytest tests -q -ra --durations=20

# Unit tests only: no real pre-training, launchers, SLURM or package builds (pytest -m "not integration").
test-fast: lint
	$(PY) -m pytest tests -q -ra -m "not integration"

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs

# Sampler study (docs/sampler_study.md): 4 samplers x 5 seeds on the generated corpus, 2 runs at a time.
.PHONY: study
study: venv
	$(PY) -m mometas_ds.cli.study --output_dir runs/study --jobs 2
