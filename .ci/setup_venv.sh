#!/usr/bin/env bash
# Create a virtual environment with everything the package, its tests and the demo need.
# Usage: bash .ci/setup_venv.sh [VENV_DIR]   (default .venv)
set -euo pipefail
venv="${1:-.venv}"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: it is the CPU build on this machine's disk; the package's own
# `torch>=2.1` is then satisfied and pip never pulls a multi-GB CUDA build.
"$venv/bin/python" -m pip install -q torch==2.13.0
"$venv/bin/python" -m pip install -q -e ".[ros,test,mde,onnx]"
