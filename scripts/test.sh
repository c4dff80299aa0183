#!/usr/bin/env bash
# Set up (idempotent) and run the whole default test suite. Extra arguments go to pytest
# (e.g. `-m slow` for the long runs, `-k fidelity`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh" --test
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
