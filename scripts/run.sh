#!/usr/bin/env bash
# One entry point for a fresh machine: sets up (or reuses) .venv, then runs a job.
#   bash scripts/run.sh demo [ARGS]   set up, then run the end-to-end demo on an embedded default
#   bash scripts/run.sh test [ARGS]   set up (with test system packages), then run the whole test suite
#   bash scripts/run.sh setup         set up only
# Environment: MEDSEG_VENV (default .venv), MEDSEG_TORCH (default "torch==2.13.0"; on a GPU
# machine the same pin from PyPI is the CUDA build), MEDSEG_SKIP_APT=1 to never call apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${MEDSEG_VENV:-$ROOT/.venv}
TORCH_SPEC=${MEDSEG_TORCH:-torch==2.13.0}
PY=${PYTHON:-python3}
job=${1:-demo}; shift || true

log() { printf '[medseg setup] %s\n' "$*" >&2; }

apt_install() {  # apt_install CHECK_CMD PKG...: install Debian packages if CHECK_CMD fails
    local check=$1; shift
    if eval "$check" >/dev/null 2>&1; then return 0; fi
    if [ "${MEDSEG_SKIP_APT:-0}" = 1 ]; then log "skipping apt-get for: $*"; return 0; fi
    local sudo=""
    if ! command -v apt-get >/dev/null; then log "no apt-get: install $* yourself"; return 0; fi
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null; then log "not root and no sudo: install $* yourself"; return 0; fi
        sudo="sudo"
    fi
    log "installing system packages: $*"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

setup_python() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtual environment $VENV"
        "$PY" -m venv "$VENV"
        "$VENV/bin/pip" install -q --upgrade pip
    fi
    if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        log "installing $TORCH_SPEC (before the project, so pip never pulls another build)"
        "$VENV/bin/pip" install -q "$TORCH_SPEC"
    fi
    # Re-install the project only when pyproject.toml changed.
    local stamp="$VENV/.medseg-installed" want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing medseg and its dependencies into $VENV"
        "$VENV/bin/pip" install -q -e ".[napari,dev,distributed,fast-io]"
        echo "$want" > "$stamp"
    fi
}

setup_test_system() {
    # Xvfb + Mesa for the napari GUI tests; dicom3tools for the DICOM validator dciodvfy.
    apt_install "command -v xvfb-run && command -v dciodvfy && { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep libxcb-cursor.so.0" \
        xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-icccm4 \
        libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
        libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1 dicom3tools
}

case "$job" in
    setup)
        setup_python ;;
    demo)
        setup_python
        exec "$VENV/bin/medseg" demo "$@" ;;
    test)
        setup_test_system
        setup_python
        export QT_QPA_PLATFORM=xcb
        if command -v xvfb-run >/dev/null; then
            exec xvfb-run -a -s "-screen 0 1280x1024x24" "$VENV/bin/python" -m pytest "$@"
        fi
        exec "$VENV/bin/python" -m pytest "$@" ;;
    *)
        echo "usage: bash scripts/run.sh {demo|test|setup} [ARGS]" >&2; exit 2 ;;
esac
