#!/usr/bin/env bash
# Installs everything (system packages, .venv, test tools) and runs the tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k beats -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
exec .venv/bin/python -m pytest "$@"
