#!/usr/bin/env bash
# Set up (idempotent) and start ComfyUI with this pack loaded, on 127.0.0.1 (default port 8188),
# with live previews of the sampling (--preview-method auto).
# Extra arguments go to ComfyUI's main.py, e.g. `--port 8190` or `--preview-method none`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
COMFY="$(cat "$ROOT/.venv/comfyui-path")"
PY="$ROOT/.venv/bin/python"
device=()
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null || device=(--cpu)
# Live previews unless the user chose a method (then theirs alone; ours also goes first, so that one they
# abbreviate, which ComfyUI's argument parser accepts, still comes later and wins).
preview=(--preview-method auto)
for arg in "$@"; do
  case "$arg" in --preview-method|--preview-method=*) preview=() ;; esac
done
# torchaudio has no build for the pinned torch: ComfyUI's audio nodes will not load. Say so before the host
# logs IMPORT FAILED and suggests `pip install -r requirements.txt` (which would not fix it).
if ! "$PY" -c "import torchaudio" 2>/dev/null; then
  echo "[start] torchaudio is not installed (no release for torch $("$PY" -c 'import torch; print(torch.__version__.split("+")[0])') yet):" \
       "ComfyUI will log 'IMPORT FAILED: nodes_audio.py' and 'nodes_audio_encoder.py' (its audio nodes)." \
       "This pack does not use them; nothing to install." >&2
fi
cd "$COMFY"
exec "$PY" main.py "${device[@]}" "${preview[@]}" --listen 127.0.0.1 "$@"
