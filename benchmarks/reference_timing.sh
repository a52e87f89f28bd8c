#!/usr/bin/env bash
# Seconds per image update of the DM / DSA / MTT reference scripts and of `mdk run`, on a
# quiet machine, interleaved (reference, toolkit, reference, toolkit), one thread each, at
# the side-by-side settings (Fashion-MNIST IPC 1; DM and DSA: ConvNet-64, 64 real images
# per class; MTT: ConvNet-32, the side-by-side's four experts, which must exist: run
# reference_compare_mtt_bptt.sh mtt 1 first).
# Pause or stop every other process first: this script only times.
#
#   bash benchmarks/reference_timing.sh dm      # or dsa, mtt; ROUNDS, ITERS, REF_DIR, OUT
#
# The reference's rate is read from its log (a line every 10 iterations, 1 s clock); the
# toolkit's from the wall_time field of losses.jsonl, over the same iterations (the first
# update, which includes warm-up on both sides, is left out of both).
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${1:?dm or dsa}
ROUNDS=${ROUNDS:-2}
ITERS=${ITERS:-40}
REF_DATA=${REF_DATA:-/work/refs/data}
MTT_OUT=${MTT_OUT:-/work/refs/sidebyside/out}  # the MTT side-by-side: experts and cache
OUT=${OUT:-/work/refs/out/timing}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$PWD/.venv/bin/python
MODEL=ConvNetW64
MDK_ARGS=(--set backbone.width=64 --set synthetic.batch_real=64)
case $METHOD in
    dm) SCRIPT=main_DM.py; REF_ARGS=(--batch_real 64) ;;
    dsa) SCRIPT=main.py
         REF_ARGS=(--method DSA --init real --dsa_strategy color_crop_cutout_flip_scale_rotate
                   --batch_real 64) ;;
    mtt) SCRIPT=distill.py; MODEL=ConvNetW32
         REF_DIR=${REF_DIR:-/work/refs/sidebyside/mtt}
         export MDK_CACHE=$MTT_OUT/cache WANDB_MODE=disabled
         export PYTHONPATH=${REF_PYTHONPATH:-/work/refs/sidebyside/pylib}
         REF_ARGS=(--syn_steps 50 --expert_epochs 2 --max_start_epoch 2 --lr_img 1000
                   --lr_lr 1e-07 --lr_teacher 0.01 --eval_it "$ITERS"
                   --buffer_path "$MTT_OUT/mtt_ipc1/buffers")
         MDK_ARGS=(--set backbone.width=32 --set dd_loss.num_experts=4) ;;
    *) echo "unknown method $METHOD (dm | dsa | mtt)" >&2; exit 2 ;;
esac
REF_DIR=${REF_DIR:-/work/refs/DatasetCondensation}
# distill.py takes neither --eval_mode nor --num_exp
[ "$METHOD" = mtt ] && COMMON=() || COMMON=(--eval_mode F --num_exp 1)
mkdir -p "$OUT"
for ((r = 0; r < ROUNDS; r++)); do
    D=$OUT/${METHOD}_r$r
    mkdir -p "$D/ref"
    SAVE=(--save_path "$D/ref"); [ "$METHOD" = mtt ] && SAVE=()
    (cd "$D/ref" && "$PY" -W ignore "$REF_DIR/$SCRIPT" "${REF_ARGS[@]}" "${COMMON[@]}" \
        --dataset FashionMNIST --model "$MODEL" --ipc 1 --num_eval 0 --Iteration "$ITERS" \
        --data_path "$REF_DATA" "${SAVE[@]}" > "$D/ref.log" 2>&1)
    .venv/bin/mdk run "recipes/fashion_mnist_ipc1_$METHOD.yaml" --overwrite --set seed=$r \
        --set device=cpu "${MDK_ARGS[@]}" \
        --set "synthetic.iterations=$((ITERS + 1))" --set 'evaluators=[]' \
        --set "output.dir=$D/mdk" > "$D/mdk.log" 2>&1
    "$PY" - "$D" "$ITERS" <<'EOF'
import json, sys
sys.path.insert(0, "benchmarks")
from reference_compare_table import STAMP, _t  # the side-by-side table's log reading
d, iters = sys.argv[1], int(sys.argv[2])
stamps = {int(m.group(3)): _t(m.group(1)) for m in map(STAMP.match, open(f"{d}/ref.log"))
          if m and m.group(3)}
ref = (stamps[iters] - stamps[0]).total_seconds() / iters
rows = [json.loads(x) for x in open(f"{d}/mdk/losses.jsonl")]
wall = {r["iteration"]: r["wall_time"] for r in rows}
ours = (wall[iters + 1] - wall[1]) / iters
print(json.dumps({"folder": d, "updates_timed": iters, "reference_s_per_update": ref,
                  "toolkit_s_per_update": ours}))
EOF
done
