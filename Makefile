# Two commands for a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= demo-run

.PHONY: demo test lint bench venv chromium clean

venv: $(VENV)/.installed

# torch is pinned and installed first: an unpinned torch (asked for by peft/accelerate) pulls the CUDA stack.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==2.13.*"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium)

demo: venv
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash examples/quickstart.sh $(DEMO_DIR)

test: venv chromium
	HF_HUB_OFFLINE=1 PYTHONHASHSEED=0 $(VENV)/bin/pytest -q tests

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	$(PY) benchmarks/pipeline.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
