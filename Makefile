# Two commands for a fresh machine: `make demo` and `make test` (both set up .venv first).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

venv: $(STAMP)

# Re-installs only when the pinned requirements or setup.py change.
$(STAMP): requirements-ci.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-ci.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: venv
	$(PY) -m mometas_ds.demo

test: venv
	$(PY) -m pytest tests -q -ra

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) runs

# Sampler study (docs/sampler_study.md): 4 samplers x 5 seeds on the generated corpus, 2 runs at a time.
.PHONY: study
study: venv
	$(PY) -m mometas_ds.study --output_dir runs/study --jobs 2
