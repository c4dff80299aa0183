#!/usr/bin/env bash
# Set up (idempotent) and start ComfyUI with this pack loaded, on 127.0.0.1 (default port 8188).
# Extra arguments go to ComfyUI's main.py, e.g. `--port 8190`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
COMFY="$(cat "$ROOT/.venv/comfyui-path")"
device=()
"$ROOT/.venv/bin/python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || device=(--cpu)
cd "$COMFY"
exec "$ROOT/.venv/bin/python" main.py "${device[@]}" --listen 127.0.0.1 "$@"
