# Every target sets up .venv first (torch CPU wheel before everything else, so no
# dependency can pull a multi-GB CUDA build), then runs the project's own commands.
VENV   ?= .venv
# The first supported interpreter that runs (a pyenv shim of an inactive version does not);
# `make PYTHON=/path/to/python3.x` picks one by hand.
SUPPORTED_PYTHONS := python3.12 python3.11 python3
PYTHON ?= $(shell for p in $(SUPPORTED_PYTHONS); do \
    $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 13))' \
    2>/dev/null && { command -v $$p; break; }; done)
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: install run test test-fast lint docs repro bench ui serve clean

$(VENV)/.installed: pyproject.toml
	@[ -n "$(PYTHON)" ] || { echo "No Python 3.11 or 3.12 found (tried: $(SUPPORTED_PYTHONS))." \
	    "Install one (Debian/Ubuntu: apt-get install python3.11-venv) or run" \
	    "make install PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; (3, 11) <= v < (3, 13) or \
	    sys.exit("$(PYTHON) is Python %d.%d: tuneline needs 3.11 or 3.12" % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[dev,openvino]"  # tests exercise the OpenVINO runtime
	touch $@

install: $(VENV)/.installed  ## create .venv and install tuneline with its dependencies

run: install  ## the main job: retrain on params.yaml defaults (demo corpus), gate, promote
	tuneline run

# Two workers, one test file each at a time (a file's tests share its fixtures and servers):
# the suite is mostly waiting on subprocesses and servers, so this halves its wall time.
test: install  ## the whole test suite
	$(PY) -m pytest -n 2 --dist loadfile

test-fast: install  ## tests without the slow and integration ones
	$(PY) -m pytest -m "not slow and not integration"

lint: install
	$(VENV)/bin/ruff check .

docs: install  ## regenerate the reference pages and the benchmark table, then build the docs site (fails on a broken link)
	$(PY) tools/render_docs.py
	$(PY) tools/render_bench.py
	$(VENV)/bin/mkdocs build --strict

repro: install  ## the same pipeline without Prefect: dvc repro, then push the data
	dvc repro
	dvc push

bench: install  ## every benchmark; results in bench/results/*.json
	for b in bench/bench_*.py; do $(PY) -m bench.$$(basename $$b .py) || exit 1; done

ui: install  ## Prefect and MLflow UIs on 127.0.0.1
	tuneline ui

serve: install  ## serve @champion over HTTP
	tuneline serve

clean:
	rm -rf artifacts data/input data/prepared metrics mlartifacts mlflow.db .pytest_cache
