#!/usr/bin/env bash
# Installs everything (system packages, .venv, test tools) and runs the tests.
# Extra arguments go to pytest, e.g. scripts/test.sh -k beats -x
#
# Two passes: the tests that only compute run on both cores (pytest-xdist, a file per worker, so a
# module's fixtures are built once); the ones that judge realtime behaviour (late callbacks over JACK,
# MIDI round trips, the TUI's timing: marked "realtime") then run alone, as the engine runs on a DJ's
# machine. The exit status is the first failing pass's; a pass that selects no test is not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --test
status=0
.venv/bin/python -m pytest -n 2 --dist loadfile -m "not realtime" "$@" || status=$?
[ "$status" -eq 5 ] && status=0
realtime=0
.venv/bin/python -m pytest -p no:xdist -m realtime "$@" || realtime=$?
[ "$realtime" -eq 5 ] && realtime=0
[ "$status" -ne 0 ] && exit "$status"
exit "$realtime"
