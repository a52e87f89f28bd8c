#!/usr/bin/env bash
# Set up, then distill Fashion-MNIST with DM + MIM4DD on the quickstart recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/mdk run recipes/quickstart.yaml --overwrite "$@"
