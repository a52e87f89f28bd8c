#!/usr/bin/env bash
# Seconds per image update of the DM / DSA reference scripts and of `mdk run`, on a quiet
# machine, interleaved (reference, toolkit, reference, toolkit), one thread each, at the
# side-by-side settings (Fashion-MNIST, ConvNet-64, 64 real images per class, IPC 1).
# Pause or stop every other process first: this script only times.
#
#   bash benchmarks/reference_timing.sh dm      # or dsa; ROUNDS, ITERS, REF_DIR, REF_DATA, OUT
#
# The reference's rate is read from its log (a line every 10 iterations, 1 s clock); the
# toolkit's from the wall_time field of losses.jsonl, over the same iterations (the first
# update, which includes warm-up on both sides, is left out of both).
set -euo pipefail
cd "$(dirname "$0")/.."
METHOD=${1:?dm or dsa}
ROUNDS=${ROUNDS:-2}
ITERS=${ITERS:-40}
REF_DIR=${REF_DIR:-/work/refs/DatasetCondensation}
REF_DATA=${REF_DATA:-/work/refs/data}
OUT=${OUT:-/work/refs/out/timing}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$PWD/.venv/bin/python
case $METHOD in
    dm) SCRIPT=main_DM.py; REF_ARGS=() ;;
    dsa) SCRIPT=main.py
         REF_ARGS=(--method DSA --init real --dsa_strategy color_crop_cutout_flip_scale_rotate) ;;
    *) echo "unknown method $METHOD (dm | dsa)" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
for ((r = 0; r < ROUNDS; r++)); do
    D=$OUT/${METHOD}_r$r
    mkdir -p "$D/ref"
    (cd "$REF_DIR" && "$PY" -W ignore "$SCRIPT" "${REF_ARGS[@]}" --dataset FashionMNIST \
        --model ConvNetW64 --ipc 1 --eval_mode F --num_exp 1 --num_eval 0 \
        --Iteration "$ITERS" --batch_real 64 --data_path "$REF_DATA" --save_path "$D/ref" \
        > "$D/ref.log" 2>&1)
    .venv/bin/mdk run "recipes/fashion_mnist_ipc1_$METHOD.yaml" --overwrite --set seed=$r \
        --set device=cpu --set backbone.width=64 --set synthetic.batch_real=64 \
        --set "synthetic.iterations=$((ITERS + 1))" --set 'evaluators=[]' \
        --set "output.dir=$D/mdk" > "$D/mdk.log" 2>&1
    "$PY" - "$D" "$ITERS" <<'EOF'
import json, re, sys
from datetime import datetime
d, iters = sys.argv[1], int(sys.argv[2])
stamps = {int(m.group(2)): datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")
          for m in re.finditer(r"\[(\S+ \S+)\] iter = (\d+)", open(f"{d}/ref.log").read())}
ref = (stamps[iters] - stamps[0]).total_seconds() / iters
rows = [json.loads(x) for x in open(f"{d}/mdk/losses.jsonl")]
wall = {r["iteration"]: r["wall_time"] for r in rows}
ours = (wall[iters + 1] - wall[1]) / iters
print(json.dumps({"folder": d, "updates_timed": iters, "reference_s_per_update": ref,
                  "toolkit_s_per_update": ours}))
EOF
done
