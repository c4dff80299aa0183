#!/usr/bin/env bash
# Set up (idempotent) and run the whole default test suite. Extra arguments go to pytest
# (e.g. `-m slow` for the long runs, `-k fidelity`, `-n 0` for one process).
# Two worker processes (PNP_TEST_WORKERS): the tests run single-threaded, and tests/conftest.py keeps
# each module on one worker and every test on the real server on one worker.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --test
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest -n "${PNP_TEST_WORKERS:-2}" --dist loadfile "$@"
