#!/usr/bin/env bash
# Sets up headstart on a fresh Debian/Ubuntu machine: Fashion-MNIST and Chromium (Debian packages; Chromium for the
# browser test of `headstart serve`), a virtualenv with the pinned torch/torchvision, and headstart with its test,
# serve and export extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/datasets/fashion-mnist ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq dataset-fashion-mnist || echo "warning: could not install dataset-fashion-mnist; the demo will try to download Fashion-MNIST"
fi
if ! command -v chromium >/dev/null; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq || true
    $SUDO apt-get install -y -qq chromium || echo "warning: could not install chromium; the browser test of headstart serve will be skipped"
fi
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -c constraints.txt torch torchvision
python -m pip install -q -c constraints.txt -e '.[test,serve,export]'
echo "headstart is installed in .venv (activate with: . .venv/bin/activate)"
