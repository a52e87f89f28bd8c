#!/usr/bin/env bash
# Side by side with the MTT and BPTT reference code: distil Fashion-MNIST with the authors'
# scripts (GeorgeCazenavette/mtt-distillation distill.py; princetonvisualai/
# RememberThePast-DatasetDistillation srcs/main.py) and with `mdk run` at the same budget,
# from the same initial images (and, for MTT, the same expert trajectories), export the
# reference's sets to the toolkit's format, score every set with `mdk evaluate --protocol
# METHOD` and the first seed's sets with the reference's own evaluator as well. See
# benchmarks/reference_compare.md for the set-up (reference copies, patches, data layout).
#
#   bash benchmarks/reference_compare_mtt_bptt.sh mtt 1      # method (mtt | bptt), IPC
#
# Environment (defaults in brackets):
#   MTT_DIR    patched copy of mtt-distillation              [/work/refs/sidebyside/mtt]
#   BPTT_DIR   patched copy of RememberThePast               [/work/refs/sidebyside/bptt]
#   REF_PYTHONPATH  extra modules the references import (wandb, kornia, tqdm)
#                                                            [/work/refs/sidebyside/pylib]
#   REF_DATA   torchvision root with FashionMNIST/raw        [/work/refs/data]
#   OUT        outputs (never inside the repository)         [/work/refs/sidebyside/out]
#   MDK_CACHE  the toolkit's cache (expert buffers)          [$OUT/cache]
#   ITERS      image updates on both sides                   [mtt 100, bptt 30]
#   WIDTH      ConvNet width on both sides                   [32]
#   EXPERTS    MTT expert trajectories (toolkit-trained, exported to the reference) [4]
#   MAX_START  MTT max_start_epoch on both sides             [the recipe's]
#   SEEDS      distillation seeds per side                   [2]
#   EPOCHS     evaluation epochs                             [the protocol's]
#   MODELS     evaluation networks                           [the protocol's]
#   XEVAL      seeds scored by the reference's evaluator too [1]
#   NICE       niceness of every process                     [15]
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/bptt_reference.sh

METHOD=${1:?method: mtt or bptt}
IPC=${2:?ipc}
MTT_DIR=${MTT_DIR:-/work/refs/sidebyside/mtt}
BPTT_DIR=${BPTT_DIR:-/work/refs/sidebyside/bptt}
REF_PYTHONPATH=${REF_PYTHONPATH:-/work/refs/sidebyside/pylib}
REF_DATA=${REF_DATA:-/work/refs/data}
OUT=${OUT:-/work/refs/sidebyside/out}
export MDK_CACHE=${MDK_CACHE:-$OUT/cache}
WIDTH=${WIDTH:-32}
EXPERTS=${EXPERTS:-4}
SEEDS=${SEEDS:-2}
XEVAL=${XEVAL:-1}
NICE=${NICE:-15}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$PWD/.venv/bin/python
MDK=$PWD/.venv/bin/mdk
RUN="nice -n $NICE"
RECIPE=recipes/fashion_mnist_ipc${IPC}_${METHOD}.yaml
BACKBONE="{name: convnet, width: $WIDTH}"
EVAL_ARGS=()
[ -n "${EPOCHS:-}" ] && EVAL_ARGS+=(--epochs "$EPOCHS")
[ -n "${MODELS:-}" ] && EVAL_ARGS+=(--models "$MODELS")
REF_EVAL_ARGS=()
[ -n "${EPOCHS:-}" ] && REF_EVAL_ARGS+=(--epochs "$EPOCHS")
[ -n "${MODELS:-}" ] && REF_EVAL_ARGS+=(--num-eval "$MODELS")

case $METHOD in
    mtt) ITERS=${ITERS:-100}; REF_DIR=$MTT_DIR; REF_MODEL=ConvNetW$WIDTH; SCRIPT=distill.py ;;
    bptt) ITERS=${ITERS:-30}; REF_DIR=$BPTT_DIR; REF_MODEL=ConvNet; SCRIPT=srcs/main.py ;;
    *) echo "unknown method $METHOD (mtt | bptt)" >&2; exit 2 ;;
esac
TAG=${METHOD}_ipc${IPC}
D=$OUT/$TAG
mkdir -p "$D/sets" "$D/eval"
COMMIT=$(cat "$REF_DIR/COMMIT" 2>/dev/null || echo unknown)
MDK_SET=(--set device=cpu --set "backbone.width=$WIDTH" --set 'evaluators=[]')
MDK_EXTRA=()
if [ "$METHOD" = mtt ]; then
    OVERRIDES=("dd_loss.num_experts=$EXPERTS")
    # MAX_START: a smaller max_start_epoch on both sides (experts then train
    # MAX_START - 1 + expert_epochs epochs instead of the recipe's 21-22)
    [ -n "${MAX_START:-}" ] && OVERRIDES+=("dd_loss.max_start_epoch=$MAX_START")
    for o in "${OVERRIDES[@]}"; do MDK_EXTRA+=(--set "$o"); done
    # the reference's arguments from the recipe as the toolkit resolves it (overrides too)
    read -r SYN_STEPS EXPERT_EPOCHS MAX_START_EPOCH LR_IMG LR_LR LR_TEACHER < <("$PY" -c "
import sys
from mim4dd_kit.config.recipe import load_recipe
r = load_recipe(sys.argv[1], sys.argv[2:])
d = r.dd_loss.model_dump()
print(d['syn_steps'], d['expert_epochs'], d['max_start_epoch'], r.synthetic.lr,
      r.synthetic.lr_lr, d['lr_teacher'])" "$RECIPE" "${OVERRIDES[@]}")
fi

# 0. MTT: the toolkit's experts, exported to the reference's replay-buffer format
if [ "$METHOD" = mtt ]; then
    echo "[$(date -u +%T)] mdk buffer ($EXPERTS experts)"
    $RUN "$MDK" buffer "$RECIPE" --device cpu --set "backbone.width=$WIDTH" \
        "${MDK_EXTRA[@]}" --json > "$D/buffer.json"
    BUF=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['path'])" "$D/buffer.json" \
          2>/dev/null || true)
    [ -n "$BUF" ] || BUF=$(ls -d "$MDK_CACHE"/buffers/*/ | head -1)
    $RUN "$PY" benchmarks/export_expert_buffer.py "$BUF" --experts "$EXPERTS" \
        --out "$D/buffers/FashionMNIST/$REF_MODEL" > "$D/buffer_export.json"
fi

for ((s = 0; s < SEEDS; s++)); do
    # 1. the toolkit's initial images for this seed (a run of 0 iterations)
    $RUN "$MDK" run "$RECIPE" --overwrite --set seed=$s "${MDK_SET[@]}" "${MDK_EXTRA[@]}" \
        --set synthetic.iterations=0 --set "output.dir=$D/init_s$s" > "$D/init_s$s.log" 2>&1
    "$PY" -c "import sys, torch; from mim4dd_kit.io.synthetic import load_synthetic; \
torch.save(load_synthetic(sys.argv[1]).images.clone(), sys.argv[2])" \
        "$D/init_s$s/synthetic.safetensors" "$D/init_s$s.pt"

    # 2. the reference from those images
    mkdir -p "$D/ref_s$s"
    if [ "$METHOD" = mtt ]; then
        REF_CMD=(python -W ignore "$SCRIPT" --dataset FashionMNIST --model "$REF_MODEL"
                 --ipc "$IPC" --syn_steps "$SYN_STEPS" --expert_epochs "$EXPERT_EPOCHS"
                 --max_start_epoch "$MAX_START_EPOCH" --lr_img "$LR_IMG" --lr_lr "$LR_LR"
                 --lr_teacher "$LR_TEACHER" --Iteration "$ITERS"
                 --eval_it "$ITERS" --num_eval 0 --buffer_path "$D/buffers"
                 --data_path "$REF_DATA")
        echo "[$(date -u +%T)] reference seed $s: ${REF_CMD[*]}"
        (cd "$D/ref_s$s" && /usr/bin/time -v -o "$D/ref_s$s.time" env WANDB_MODE=disabled \
            INIT_IMAGES="$D/init_s$s.pt" PYTHONPATH="$REF_PYTHONPATH" \
            $RUN "$PY" "${REF_CMD[@]:1:2}" "$REF_DIR/$SCRIPT" "${REF_CMD[@]:4}" \
            > "$D/ref_s$s.log" 2>&1)
        RES=$(ls "$D"/ref_s$s/logged_files/FashionMNIST/*/images_"$ITERS".pt)
        INIT0=$(ls "$D"/ref_s$s/logged_files/FashionMNIST/*/images_0.pt)
        "$PY" -c "import sys, torch; a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2]); \
print('reference start == toolkit init: max |diff| =', float((a - b).abs().max()))" \
            "$INIT0" "$D/init_s$s.pt" | tee "$D/ref_s$s.init_check"
    else
        bptt_reference_config "$REF_DIR" "$REF_DATA" "$ITERS" "cmp_${ITERS}"
        bptt_reference_args cmp "cmp_${ITERS}" "$IPC"
        REF_CMD=(python -W ignore "$SCRIPT" "${BPTT_REF_ARGS[@]}")
        echo "[$(date -u +%T)] reference seed $s: ${REF_CMD[*]}"
        RES=$D/ref_s$s/images.pt
        (cd "$REF_DIR" && /usr/bin/time -v -o "$D/ref_s$s.time" env NET_WIDTH="$WIDTH" \
            INIT_IMAGES="$D/init_s$s.pt" SAVE_IMAGES="$RES" PYTHONPATH=".:$REF_PYTHONPATH" \
            $RUN "$PY" "${REF_CMD[@]:1}" > "$D/ref_s$s.log" 2>&1)
    fi
    $RUN "$PY" benchmarks/export_reference_set.py "$RES" --format "$METHOD" \
        --out-dir "$D/sets" --prefix "ref_s$s" --commit "$COMMIT" --script "$SCRIPT" \
        --command "${REF_CMD[*]}" --data-root "$REF_DATA" > /dev/null
    mv "$D/sets/ref_s${s}_exp0.safetensors" "$D/sets/ref_exp$s.safetensors"

    # 3. the toolkit, the recipe's settings but for the budget
    echo "[$(date -u +%T)] mdk run seed $s"
    /usr/bin/time -v -o "$D/mdk_s$s.time" $RUN "$MDK" run "$RECIPE" --overwrite \
        --set seed=$s "${MDK_SET[@]}" --set "synthetic.iterations=$ITERS" \
        "${MDK_EXTRA[@]}" --set "output.dir=$D/mdk_s$s" > "$D/mdk_s$s.log" 2>&1
    cp "$D/mdk_s$s/synthetic.safetensors" "$D/sets/mdk_exp$s.safetensors"
done

# 4. one evaluator for every set: mdk evaluate with the method's own protocol
for ((s = 0; s < SEEDS; s++)); do for side in ref mdk; do
    name=${side}_exp$s
    echo "[$(date -u +%T)] mdk evaluate $name"
    $RUN "$MDK" evaluate "$D/sets/$name.safetensors" --dataset fashion_mnist --device cpu \
        --seed 0 --protocol "$METHOD" "${EVAL_ARGS[@]}" --backbone "$BACKBONE" --json \
        > "$D/eval/$name.mdk.json"
done; done

# 5. the reference's own evaluator on the first seeds' sets of both sides
for ((s = 0; s < XEVAL && s < SEEDS; s++)); do for side in ref mdk; do
    name=${side}_exp$s
    echo "[$(date -u +%T)] reference evaluator $name"
    env NET_WIDTH="$WIDTH" PYTHONPATH="$REF_PYTHONPATH" $RUN "$PY" -W ignore \
        benchmarks/reference_evaluate_mtt_bptt.py "$D/sets/$name.safetensors" \
        --ref "$METHOD" --ref-dir "$REF_DIR" --data-path "$REF_DATA" --model "$REF_MODEL" \
        "${REF_EVAL_ARGS[@]}" > "$D/eval/$name.ref.json" 2> "$D/eval/$name.ref.log"
done; done
echo "[$(date -u +%T)] done: $D"
