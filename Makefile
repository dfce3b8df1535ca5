# Two commands do all the set-up on a fresh machine with Python 3.11+ and make:
#   make report   create .venv if needed, run the demo study, render the HTML report
#                 on a local Dask cluster of 2 worker processes (WORKERS=: serially)
#   make test     create .venv if needed, run ruff and pytest
# Without TensorFlow, on the JAX backend:
#   make venv-jax create .venv-jax (requirements.txt minus tensorflow, requirements-jax.txt)
#                 with the Jupyter kernel 'facetransfer-jax' (KERAS_BACKEND=jax) inside it
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp's name carries a hash of the files that define the environment: when either
# changes, the stamp is missing and .venv is brought up to date; otherwise nothing runs.
# glibc's malloc for TensorFlow's CPU training: grow the heap 256 MB at a time, on transparent huge
# pages, so that a training step stops faulting in fresh pages for every batch's tensors (the demo's
# scratch run on 300 images, one thread: 46 s -> 30 s, system time 17 s -> 4 s, the same numbers;
# benchmarks/malloc.py measures it). Exported to every command below and written into the
# kernel spec, so notebook kernels get it too; a GLIBC_TUNABLES of your own wins.
export GLIBC_TUNABLES ?= glibc.malloc.top_pad=268435456:glibc.malloc.hugetlb=1
ENV_HASH := $(shell (cat requirements.txt pyproject.toml; echo '$(GLIBC_TUNABLES)') | sha1sum | cut -c1-12)
STAMP := $(VENV)/.facetransfer-env-$(ENV_HASH)
VENV_JAX := .venv-jax
PY_JAX := $(VENV_JAX)/bin/python
ENV_JAX_HASH := $(shell (cat requirements.txt requirements-jax.txt pyproject.toml; echo '$(GLIBC_TUNABLES)') | sha1sum | cut -c1-12)
STAMP_JAX := $(VENV_JAX)/.facetransfer-env-$(ENV_JAX_HASH)
# uv installs requirements.txt (the same pinned versions pip resolves) in about 30 s where
# pip takes 2-3 min on 2 cores: most of a fresh clone's `make test` / `make report` set-up.
UV := uv==0.13.9
STUDY ?= params/demo.yaml
# `make report` runs the study on a local Dask cluster of WORKERS worker processes (the runs'
# notebook kernels start and train side by side); `make report WORKERS=` runs it serially in
# this process, with no Dask process. The demo gives every run one CPU thread, so both give the
# same numbers.
WORKERS ?= 2
PYTEST_ARGS ?= -n 3 --dist loadfile --no-loadscope-reorder --durations=25  # three pytest workers, one module per worker at a time (module fixtures built once), the slowest modules first (tests/conftest.py); the 25 slowest tests are listed at the end

.PHONY: venv venv-jax test lint report clean-results

venv: $(STAMP)

venv-jax: $(STAMP_JAX)

$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "facetransfer needs Python 3.11+ (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip $(UV)
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name facetransfer --display-name "Python (facetransfer)" --env GLIBC_TUNABLES "$(GLIBC_TUNABLES)" >/dev/null
	rm -f $(VENV)/.facetransfer-env-*
	touch $@
	@echo "facetransfer: .venv is ready (kernel 'facetransfer' registered inside it)"

# The package is installed WITH build isolation here: without TensorFlow nothing brings
# 'wheel', which the venv's own setuptools needs for an editable install.
$(STAMP_JAX): requirements.txt requirements-jax.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "facetransfer needs Python 3.11+ (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	test -x $(PY_JAX) || $(PYTHON) -m venv $(VENV_JAX)
	$(PY_JAX) -m pip install --quiet --upgrade pip
	grep -v '^tensorflow' requirements.txt > $(VENV_JAX)/requirements-without-tensorflow.txt
	$(PY_JAX) -m pip install --quiet -r $(VENV_JAX)/requirements-without-tensorflow.txt -r requirements-jax.txt
	$(PY_JAX) -m pip install --quiet --no-deps -e .
	$(PY_JAX) -m ipykernel install --sys-prefix --name facetransfer-jax --display-name "Python (facetransfer, JAX)" --env KERAS_BACKEND jax --env GLIBC_TUNABLES "$(GLIBC_TUNABLES)" >/dev/null
	rm -f $(VENV_JAX)/.facetransfer-env-*
	touch $@
	@echo "facetransfer: .venv-jax is ready (kernel 'facetransfer-jax' registered inside it); run: KERAS_BACKEND=jax $(VENV_JAX)/bin/facetransfer ..."

lint: $(STAMP)
	$(VENV)/bin/ruff check lib tests notebooks benchmarks

test: lint
	$(VENV)/bin/pytest $(PYTEST_ARGS)

# `facetransfer run` renders the report itself as its last step and prints its path.
report: $(STAMP)
	$(VENV)/bin/facetransfer run $(STUDY) $(if $(WORKERS),--workers $(WORKERS))

clean-results:
	find results -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +
