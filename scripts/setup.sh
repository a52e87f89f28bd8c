#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: virtual environment, pinned torch, the toolkit
# and the example plugin, and Debian's Fashion-MNIST where apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# torch first, pinned: these releases are what the project's machines provide
"$VPY" -m pip install -q torch==2.14.1 torchvision==0.29.1
"$VPY" -m pip install -q -e ".[dev,plot]"
for p in plugins/*/; do
    "$VPY" -m pip install -q -e "$p"
done

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] \
        && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=$(command -v sudo || true); fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
        echo "installing Debian's dataset-fashion-mnist" >&2
        $SUDO apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null
    else
        echo "note: cannot install dataset-fashion-mnist without root; tests that need it skip" >&2
    fi
fi
