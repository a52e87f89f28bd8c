#!/usr/bin/env bash
# Idempotent set-up of a fresh machine: virtual environment, the tested torch
# (constraints.txt), the toolkit with its test extras and the example plugins (every package
# under plugins/: mdk-plugin-example, mdk-plugin-moments), and Debian's
# Fashion-MNIST where apt is available.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip
# torch first, at the tested versions of constraints.txt (the package itself accepts a
# range, so installing it into an environment that has torch leaves that torch alone)
"$VPY" -m pip install -q -c constraints.txt torch torchvision
# the trackers the tests run for real (TensorBoard, MLflow) come with the toolkit
"$VPY" -m pip install -q -c constraints.txt -e ".[dev,plot,tensorboard,mlflow]"
for p in plugins/*/; do
    "$VPY" -m pip install -q -c constraints.txt -e "$p"
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
