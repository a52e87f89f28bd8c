#!/usr/bin/env bash
# One MTT image update from the reference code and from the toolkit, on the same inputs.
#
# Without augmentation, with one expert and max_start_epoch 1, an MTT iteration has no
# random draw that changes its result (the start epoch is 0, the expert is expert 0, and
# with batch_syn = the whole set every student step sees all images, only in another
# order), so the first image update of the two sides must agree up to float rounding.
# The first SGD step (momentum 0.5, empty buffer) moves the images by -lr_img x gradient:
# comparing image_1 - image_0 compares the gradients of the two implementations. The
# learned lr's first step is compared the same way. The reference's student steps go
# unaugmented by `--no_aug True` (distill.py:358); `--dsa False` would do the same but
# stops at its evaluation print, which then reads an unset `args.dc_aug_param`.
#
#   bash benchmarks/mtt_step_check.sh        # environment as reference_compare_mtt_bptt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MTT_DIR=${MTT_DIR:-/work/refs/sidebyside/mtt}
REF_PYTHONPATH=${REF_PYTHONPATH:-/work/refs/sidebyside/pylib}
REF_DATA=${REF_DATA:-/work/refs/data}
OUT=${OUT:-/work/refs/sidebyside/out}
export MDK_CACHE=${MDK_CACHE:-$OUT/cache}
WIDTH=${WIDTH:-32}
SEED=${SEED:-0}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$PWD/.venv/bin/python
MDK=$PWD/.venv/bin/mdk
RECIPE=recipes/fashion_mnist_ipc1_mtt.yaml
D=$OUT/mtt_step_check
mkdir -p "$D/ref"
SETS=(--set device=cpu --set "backbone.width=$WIDTH" --set augmentation=null
      --set dd_loss.num_experts=1 --set dd_loss.max_start_epoch=1 --set dd_loss.train_epochs=3)

"$MDK" buffer "$RECIPE" "${SETS[@]}" --json > "$D/buffer.json"
BUF=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['path'])" "$D/buffer.json")
"$PY" benchmarks/export_expert_buffer.py "$BUF" --experts 1 \
    --out "$D/buffers/FashionMNIST/ConvNetW$WIDTH" > /dev/null

"$MDK" run "$RECIPE" --overwrite --set seed=$SEED "${SETS[@]}" --set 'evaluators=[]' \
    --set synthetic.iterations=1 --set "output.dir=$D/mdk" > "$D/mdk.log" 2>&1
"$PY" -c "import sys, torch; from mim4dd_kit.io.synthetic import load_synthetic; \
torch.save(load_synthetic(sys.argv[1]).images.clone(), sys.argv[2])" \
    "$D/mdk/synthetic.safetensors" "$D/mdk_after.pt"
# the starting images: the same seed's draw with 0 updates
"$MDK" run "$RECIPE" --overwrite --set seed=$SEED "${SETS[@]}" --set 'evaluators=[]' \
    --set synthetic.iterations=0 --set "output.dir=$D/init" > "$D/init.log" 2>&1
"$PY" -c "import sys, torch; from mim4dd_kit.io.synthetic import load_synthetic; \
torch.save(load_synthetic(sys.argv[1]).images.clone(), sys.argv[2])" \
    "$D/init/synthetic.safetensors" "$D/init.pt"

(cd "$D/ref" && env WANDB_MODE=disabled INIT_IMAGES="$D/init.pt" PYTHONPATH="$REF_PYTHONPATH" \
    "$PY" -W ignore "$MTT_DIR/distill.py" --dataset FashionMNIST --model "ConvNetW$WIDTH" \
    --ipc 1 --syn_steps 50 --expert_epochs 2 --max_start_epoch 1 --lr_img 1000 \
    --lr_lr 1e-07 --lr_teacher 0.01 --no_aug True --Iteration 1 --eval_it 1 --num_eval 0 \
    --buffer_path "$D/buffers" --data_path "$REF_DATA" > "$D/ref.log" 2>&1)

"$PY" - "$D" <<'EOF'
import glob, json, sys
import torch
import torch.nn.functional as F
from mim4dd_kit.io.synthetic import load_synthetic
d = sys.argv[1]
run = glob.glob(f"{d}/ref/logged_files/FashionMNIST/*/")[0]
x0 = torch.load(f"{d}/init.pt")
r0, r1 = torch.load(run + "images_0.pt"), torch.load(run + "images_1.pt")
m1 = torch.load(f"{d}/mdk_after.pt")
dr, dm = (r1 - r0).flatten(1), (m1 - x0).flatten(1)
lr_ref = float(torch.load(run + "syn_lr_1.pt"))
lr_mdk = load_synthetic(f"{d}/mdk/synthetic.safetensors").lr
print(json.dumps({
    "same_start": float((r0 - x0).abs().max()),
    "update_norm_reference": float(dr.norm()), "update_norm_toolkit": float(dm.norm()),
    "relative_difference": float((dm - dr).norm() / dr.norm()),
    "cosine": float(F.cosine_similarity(dm.flatten(), dr.flatten(), dim=0)),
    "cosine_per_image": [round(float(c), 6) for c in F.cosine_similarity(dm, dr, dim=1)],
    "lr_after_reference": lr_ref, "lr_after_toolkit": lr_mdk,
    "lr_step_reference": lr_ref - 0.01, "lr_step_toolkit": lr_mdk - 0.01,
}))
EOF
