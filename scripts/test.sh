#!/usr/bin/env bash
# Install etr-hub with its test extras into ./.venv and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q -e '.[test]'
python -m pytest -n 2 -q "$@"
