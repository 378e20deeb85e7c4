# `make test` and `make demo` work on a fresh machine: each creates .venv and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch (present on disk on the CI machines); override on a GPU box, e.g. TORCH_SPEC="torch".
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TRL_EXPERIMENTAL_SILENCE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-fast demo lint toy gpu-check clean help-snapshots

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,math]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow and not gpu and not vllm"

demo: $(VENV)/.installed
	$(PY) -m trl_reasoning_distill.cli demo

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

help-snapshots: $(VENV)/.installed  # after changing a script's arguments or a config's fields: the shipped --help texts
	$(PY) -c "from trl_reasoning_distill.scripts import write_help_snapshots; write_help_snapshots()"

toy: $(VENV)/.installed
	$(PY) -m trl_reasoning_distill.toy.build

gpu-check: $(VENV)/.installed
	$(PY) benchmarks/gpu_check.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
