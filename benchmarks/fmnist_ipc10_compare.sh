#!/usr/bin/env bash
# Random real vs DM vs DM + MIM4DD on Fashion-MNIST IPC 10 (ConvNet-128, DSA), same seed,
# same evaluation protocol (5 networks x 300 epochs). The distillation budget is reduced
# for a CPU: ITERS iterations with BATCH_REAL real images per class (defaults 400 / 64;
# the published DM scale is 20000 / 256). Results land in runs/fm10_*/.
set -euo pipefail
cd "$(dirname "$0")/.."
ITERS=${ITERS:-400}
BATCH_REAL=${BATCH_REAL:-64}
MDK=.venv/bin/mdk
mkdir -p runs
common=(--set synthetic.batch_real="$BATCH_REAL" --set output.checkpoint_every=100 --overwrite)
$MDK run recipes/fashion_mnist_ipc10_dm.yaml --out runs/fm10_random --json \
    --set synthetic.iterations=0 "${common[@]}" > runs/fm10_random.json
$MDK run recipes/fashion_mnist_ipc10_dm.yaml --out runs/fm10_dm --json \
    --set synthetic.iterations="$ITERS" "${common[@]}" > runs/fm10_dm.json
$MDK run recipes/fashion_mnist_ipc10_dm_mim.yaml --out runs/fm10_dm_mim --json \
    --set synthetic.iterations="$ITERS" "${common[@]}" > runs/fm10_dm_mim.json
for r in random dm dm_mim; do
    .venv/bin/python - "$r" <<'PY'
import json, sys
d = json.load(open(f"runs/fm10_{sys.argv[1]}.json"))
e = d["evaluations"]["train_from_scratch"]
print(f"{sys.argv[1]:8s} {e['accuracy_mean']:.2f} ± {e['accuracy_std']:.2f}  {e['accuracies']}")
PY
done
