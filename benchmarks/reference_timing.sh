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
#
#   bash benchmarks/reference_timing.sh bptt    # LO, HI: the two budgets [2, 12]
#
# BPTT's reference prints no clock per update, so each side runs twice, LO and HI updates,
# and its rate is the difference of the two whole-process wall times over HI - LO (start-up
# and data loading cancel). ConvNet-32, 150 inner steps, 64 real images per class; the
# toolkit both as its recipe (checkpointed unroll) and with dd_loss.checkpoint=false (the
# reference keeps every inner step's activations). Peak RSS from /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${1:?dm, dsa, mtt or bptt}
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
    bptt) ;;
    *) echo "unknown method $METHOD (dm | dsa | mtt | bptt)" >&2; exit 2 ;;
esac
if [ "$METHOD" = bptt ]; then
    REF_DIR=${REF_DIR:-/work/refs/sidebyside/bptt}
    LO=${LO:-2}
    HI=${HI:-12}
    REF_PP=.:${REF_PYTHONPATH:-/work/refs/sidebyside/pylib}
    source benchmarks/bptt_reference.sh
    for n in "$LO" "$HI"; do  # the reference's config at each budget (outside the repository)
        bptt_reference_config "$REF_DIR" "$REF_DATA" "$n" "timing_$n"
    done
    timed() {  # timed NAME CMD...: wall clock around one process and its peak RSS (KiB)
        local t0 t1
        t0=$(date +%s.%N)
        /usr/bin/time -f %M -o "$1.rss" "${@:2}" > "$1.log" 2>&1
        t1=$(date +%s.%N)
        echo "$t0 $t1 $(tail -n 1 "$1.rss")" > "$1.wall"
    }
    for ((r = 0; r < ROUNDS; r++)); do
        D=$OUT/bptt_r$r
        mkdir -p "$D"
        for n in "$LO" "$HI"; do
            bptt_reference_args timing "timing_$n" 1
            (cd "$REF_DIR" && timed "$D/ref_$n" env NET_WIDTH=32 PYTHONPATH="$REF_PP" \
                "$PY" -W ignore srcs/main.py "${BPTT_REF_ARGS[@]}")
            for ck in true false; do
                timed "$D/mdk_ck${ck}_$n" .venv/bin/mdk run recipes/fashion_mnist_ipc1_bptt.yaml \
                    --overwrite --set seed=$r --set device=cpu --set backbone.width=32 \
                    --set "dd_loss.checkpoint=$ck" --set "synthetic.iterations=$n" \
                    --set 'evaluators=[]' --set "output.dir=$D/mdk_ck${ck}_$n"
            done
        done
        "$PY" - "$D" "$LO" "$HI" <<'EOF'
import json, sys
d, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
out = {"folder": d, "updates_timed": hi - lo}
for side in ("ref", "mdk_cktrue", "mdk_ckfalse"):
    (a0, a1, _), (b0, b1, rss) = ([float(x) for x in open(f"{d}/{side}_{n}.wall").read().split()]
                                  for n in (lo, hi))
    out[f"{side}_s_per_update"] = round(((b1 - b0) - (a1 - a0)) / (hi - lo), 3)
    out[f"{side}_peak_rss_mib"] = round(rss / 1024)
print(json.dumps(out))
EOF
    done
    exit 0
fi
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
