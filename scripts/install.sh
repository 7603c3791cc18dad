#!/usr/bin/env bash
# One-command install: a virtual environment in .venv with torch and digitlab, every extra and the test
# tools (`.[all,dev]`; `pip install digitlab` alone is the lean core, see README).
#
# torch is installed FIRST and pinned (TORCH_SPEC, default torch==2.13.0) so that pip never picks
# a newer multi-GB build by itself. A torch already present in .venv is kept: on a GPU machine,
# install the CUDA build you want into .venv first (PyTorch's install selector tells the line),
# then run this script.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
if python -c "import torch" 2>/dev/null; then
  echo "keeping installed torch $(python -c 'import torch; print(torch.__version__)')"
else
  pip install --disable-pip-version-check -q "$TORCH_SPEC"
fi
pip install --disable-pip-version-check -q -e ".[all,dev]"
digitlab --version
echo "installed; activate with: . .venv/bin/activate"
