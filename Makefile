# Everything a newcomer needs: `make demo` (set up + main job) and `make test` (set up + all tests).
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.10 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned only here: these wheels install from local disk on the course machines.
# On Colab or your own machine any torch >= 2.4 works (see pyproject.toml).
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads slowed torch ~10x.
export OMP_WAIT_POLICY ?= PASSIVE
PIP_QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: help install demo test lint unit nbtest notebooks lab clean

help:
	@echo "make demo       set up .venv, then train + evaluate on the offline sample data (quick preset) -> runs/"
	@echo "make test       set up .venv, then ruff + unit tests + every notebook with nbval (quick preset, CPU)"
	@echo "make lab        start JupyterLab in notebooks/"
	@echo "make notebooks  re-execute every notebook in place (quick preset) so stored outputs match the code"

# numpy<2 (imgaug 0.4) has no wheels for Python 3.13, and torch>=2.4 none for 3.9.
PY_SUPPORTED := import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))
PY_VERSION := import platform; print(platform.python_version())

$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(PY) ]; then \
		$(PYTHON) -c '$(PY_SUPPORTED)' || { echo "error: $(PYTHON) is Python $$($(PYTHON) -c '$(PY_VERSION)'); this project needs 3.10 to 3.12 (3.11 preferred): install one and run make PYTHON=python3.11" >&2; exit 1; }; \
		$(PYTHON) -m venv $(VENV); \
	fi
	@$(PY) -c '$(PY_SUPPORTED)' || { echo "error: $(VENV) has Python $$($(PY) -c '$(PY_VERSION)'), this project needs 3.10 to 3.12: delete $(VENV) and run make PYTHON=python3.11" >&2; exit 1; }
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip $(PIP_QUIET)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN) $(PIP_QUIET)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[lab,dev]" $(PIP_QUIET)
	@touch $@

install: $(VENV)/.installed

demo: install
	MEMSEG_PRESET=$${MEMSEG_PRESET:-quick} $(PY) -m memseg_tutorial demo

lint: install
	$(VENV)/bin/ruff check memseg_tutorial tests benchmarks notebooks tools

unit: install
	MEMSEG_PRESET=quick $(PY) -m pytest tests

nbtest: install
	MEMSEG_PRESET=quick $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

test: lint unit nbtest

notebooks: install
	for nb in notebooks/*.ipynb; do \
		echo "executing $$nb"; \
		MEMSEG_PRESET=quick $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
			--ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=python3 "$$nb"; \
		$(PY) tools/clean_notebooks.py "$$nb"; \
	done

lab: install
	$(VENV)/bin/jupyter lab notebooks

clean:
	rm -rf runs predictions .pytest_cache
