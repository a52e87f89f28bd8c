#!/usr/bin/env bash
# Side by side with the DC/DSA/DM reference code (VICO-UoE/DatasetCondensation): distil
# Fashion-MNIST with the reference scripts and with `mdk run` at the same budget, export
# the reference's sets to the toolkit's format, score every set with `mdk evaluate` and
# (on the first seed) with the reference's own evaluator. See
# benchmarks/reference_compare.md for the set-up (reference copy, patches, data layout).
#
#   bash benchmarks/reference_compare.sh dm 1      # method (dm | dsa), IPC (1 | 10)
#
# Environment (defaults in brackets):
#   REF_DIR    patched copy of the reference         [/work/refs/DatasetCondensation]
#   REF_DATA   torchvision root with FashionMNIST/raw [/work/refs/data]
#   OUT        outputs (never inside the repository) [/work/refs/out]
#   PATCH_DIR  the diffs applied to REF_DIR           [/work/refs/patches]
#   ITERS      reference --Iteration (the reference runs ITERS+1 outer iterations)
#   BATCH_REAL real images per class                 [64]
#   WIDTH      ConvNet width (reference ConvNetW<WIDTH>: 32, 64, 128, 256)   [64]
#   SEEDS      distillation seeds per side           [2]
#   EPOCHS     evaluation epochs                     [300]
#   MODELS     evaluation networks                   [5]
#   XEVAL      seeds scored by the other side's evaluator too [1]
#   NICE       niceness of every process             [15]
set -euo pipefail
cd "$(dirname "$0")/.."

METHOD=${1:?method: dm or dsa}
IPC=${2:?ipc: 1 or 10}
REF_DIR=${REF_DIR:-/work/refs/DatasetCondensation}
REF_DATA=${REF_DATA:-/work/refs/data}
OUT=${OUT:-/work/refs/out}
PATCH_DIR=${PATCH_DIR:-/work/refs/patches}
BATCH_REAL=${BATCH_REAL:-64}
WIDTH=${WIDTH:-64}
SEEDS=${SEEDS:-2}
EPOCHS=${EPOCHS:-300}
MODELS=${MODELS:-5}
XEVAL=${XEVAL:-1}
NICE=${NICE:-15}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
PY=$PWD/.venv/bin/python
MDK=$PWD/.venv/bin/mdk
RUN="nice -n $NICE"

case $METHOD in
    dm) ITERS=${ITERS:-199}; SCRIPT=main_DM.py; REF_ARGS=(); OUTER=1 ;;
    dsa) ITERS=${ITERS:-49}; SCRIPT=main.py
         REF_ARGS=(--method DSA --init real --dsa_strategy color_crop_cutout_flip_scale_rotate)
         OUTER=$([ "$IPC" = 1 ] && echo 1 || echo 10) ;;
    *) echo "unknown method $METHOD (dm | dsa)" >&2; exit 2 ;;
esac
# main.py / main_DM.py loop `for it in range(Iteration + 1)`: ITERS+1 outer iterations,
# each of OUTER image updates; mdk counts image updates
MDK_ITERS=$(( (ITERS + 1) * OUTER ))
TAG=${METHOD}_ipc${IPC}
D=$OUT/$TAG
mkdir -p "$D/sets" "$D/eval"
COMMIT=$(cat "$REF_DIR/COMMIT" 2>/dev/null || echo unknown)

# 1. the reference, SEEDS experiments in one process (it seeds itself from the clock)
REF_CMD=(python -W ignore "$SCRIPT" "${REF_ARGS[@]}" --dataset FashionMNIST
         --model "ConvNetW$WIDTH" --ipc "$IPC" --eval_mode F --num_exp "$SEEDS" --num_eval 0
         --Iteration "$ITERS" --batch_real "$BATCH_REAL" --data_path "$REF_DATA"
         --save_path "$D/ref")
echo "[$(date -u +%T)] reference: ${REF_CMD[*]}"
mkdir -p "$D/ref"
(cd "$REF_DIR" && /usr/bin/time -v -o "$D/ref.time" $RUN "$PY" "${REF_CMD[@]:1}" \
    > "$D/ref.log" 2>&1)
RES=$(ls "$D"/ref/res_*.pt)
PATCH_ARGS=()
for p in "$PATCH_DIR"/*.diff; do PATCH_ARGS+=(--patch "$p"); done
$RUN "$PY" benchmarks/export_reference_set.py "$RES" --out-dir "$D/sets" --prefix ref \
    --commit "$COMMIT" --script "$SCRIPT" --command "${REF_CMD[*]}" \
    --data-root "$REF_DATA" "${PATCH_ARGS[@]}"

# 2. the toolkit, one `mdk run` per seed, the recipe's defaults but for the budget
for ((s = 0; s < SEEDS; s++)); do
    echo "[$(date -u +%T)] mdk run seed $s"
    /usr/bin/time -v -o "$D/mdk_s$s.time" $RUN "$MDK" run \
        "recipes/fashion_mnist_ipc${IPC}_${METHOD}.yaml" --overwrite \
        --set seed=$s --set device=cpu --set "synthetic.iterations=$MDK_ITERS" \
        --set "synthetic.batch_real=$BATCH_REAL" --set "backbone.width=$WIDTH" \
        --set 'evaluators=[]' --set "output.dir=$D/mdk_s$s" > "$D/mdk_s$s.log" 2>&1
    cp "$D/mdk_s$s/synthetic.safetensors" "$D/sets/mdk_exp$s.safetensors"
done

# 3. one evaluator for every set: mdk evaluate, MODELS networks x EPOCHS (seed by seed)
for ((s = 0; s < SEEDS; s++)); do for side in ref mdk; do
    name=${side}_exp$s
    f=$D/sets/$name.safetensors
    echo "[$(date -u +%T)] mdk evaluate $name"
    $RUN "$MDK" evaluate "$f" --dataset fashion_mnist --device cpu --seed 0 \
        --evaluator train_from_scratch --models "$MODELS" --epochs "$EPOCHS" \
        --backbone "{name: convnet, width: $WIDTH}" --json > "$D/eval/$name.mdk.json"
done; done

# 4. each side's own evaluator on the other's set: the reference's evaluate_synset
for ((s = 0; s < XEVAL && s < SEEDS; s++)); do
    for side in ref mdk; do
        name=${side}_exp$s
        echo "[$(date -u +%T)] reference evaluate_synset $name"
        $RUN "$PY" benchmarks/reference_evaluate.py "$D/sets/$name.safetensors" \
            --ref-dir "$REF_DIR" --data-path "$REF_DATA" --model "ConvNetW$WIDTH" \
            --epochs "$EPOCHS" --num-eval "$MODELS" > "$D/eval/$name.ref.json" \
            2> "$D/eval/$name.ref.log"
    done
done
echo "[$(date -u +%T)] done: $D"
