#!/usr/bin/env bash
# Side by side with the DC/DSA/DM reference code (VICO-UoE/DatasetCondensation) and the
# CAFE reference code (kaiwang960112/CAFE, built on it): distil
# Fashion-MNIST with the reference scripts and with `mdk run` at the same budget, export
# the reference's sets to the toolkit's format, score every set with `mdk evaluate` and
# (on the first seed) with the reference's own evaluator. See
# benchmarks/reference_compare.md for the set-up (reference copy, patches, data layout).
#
#   bash benchmarks/reference_compare.sh dm 1      # method (dm | dc | dsa | cafe), IPC (1 | 10)
#
# Environment (defaults in brackets):
#   REF_DIR    patched copy of the reference         [/work/refs/DatasetCondensation;
#              cafe: /work/refs/sidebyside/cafe]
#   REF_DATA   torchvision root with FashionMNIST/raw [/work/refs/data]
#   OUT        outputs (never inside the repository) [/work/refs/out]
#   PATCH_DIR  the diffs applied to REF_DIR           [/work/refs/patches]
#   ITERS      reference --Iteration (the reference runs ITERS+1 outer iterations; CAFE:
#              ITERS+1 networks, each serving as many image updates as its accuracy
#              watcher allows, and the toolkit then runs the reference's total of updates)
#   BATCH_REAL real images per class                 [64]
#   WIDTH      ConvNet width (reference ConvNetW<WIDTH>: 32, 64, 128, 256)   [64]
#   SEEDS      distillation seeds per side           [2]
#   SEED0      the first seed (SAME_INIT: seeds SEED0 .. SEED0+SEEDS-1, so that more
#              seeds can be added to an output folder later)          [0]
#   EPOCHS     evaluation epochs                     [300]
#   MODELS     evaluation networks                   [5]
#   XEVAL      seeds scored by the other side's evaluator too [1]
#   NICE       niceness of every process             [15]
#   SAME_INIT  1: both sides start from the toolkit's starting images for each seed (one
#              reference process per seed, --num_exp 1, given them by INIT_IMAGES; needs
#              a copy with the init patch, REF_DIR default /work/refs/sidebyside/dsa);
#              dc, dsa (main.py) and cafe (required); outputs go to
#              <method>_ipc<N>_sameinit   [0]
set -euo pipefail
cd "$(dirname "$0")/.."

METHOD=${1:?method: dm, dc, dsa or cafe}
IPC=${2:?ipc: 1 or 10}
SAME_INIT=${SAME_INIT:-0}
if [ "$METHOD" = cafe ]; then
    # CAFE: the reference starts from an unseeded draw and counts networks, not updates;
    # only the seed-by-seed path (same start, the toolkit matching its update count) fits
    [ "$SAME_INIT" = 1 ] || { echo "cafe needs SAME_INIT=1" >&2; exit 2; }
    REF_DIR=${REF_DIR:-/work/refs/sidebyside/cafe}
    PATCH_DIR=${PATCH_DIR:-/work/refs/sidebyside/patches/cafe}
    INIT_PATCH=${INIT_PATCH:-}
elif [ "$SAME_INIT" = 1 ]; then
    REF_DIR=${REF_DIR:-/work/refs/sidebyside/dsa}
else
    REF_DIR=${REF_DIR:-/work/refs/DatasetCondensation}
fi
REF_DATA=${REF_DATA:-/work/refs/data}
OUT=${OUT:-/work/refs/out}
PATCH_DIR=${PATCH_DIR:-/work/refs/patches}
INIT_PATCH=${INIT_PATCH-/work/refs/sidebyside/patches/dsa_init_images.diff}
BATCH_REAL=${BATCH_REAL:-64}
WIDTH=${WIDTH:-64}
SEEDS=${SEEDS:-2}
SEED0=${SEED0:-0}
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
    # DC: main.py's defaults (--init noise, no augmentation), as the dc recipes
    dc) ITERS=${ITERS:-49}; SCRIPT=main.py; REF_ARGS=(--method DC --init noise)
        OUTER=$([ "$IPC" = 1 ] && echo 1 || echo 10) ;;
    # CAFE: distill.py's defaults (--method DC: no augmentation, --init noise), as the
    # cafe recipes; the toolkit's update count is read from each reference run's log
    cafe) ITERS=${ITERS:-4}; SCRIPT=distill.py; REF_ARGS=(--init noise) ;;
    *) echo "unknown method $METHOD (dm | dc | dsa | cafe)" >&2; exit 2 ;;
esac
# main.py / main_DM.py loop `for it in range(Iteration + 1)`: ITERS+1 outer iterations,
# each of OUTER image updates; mdk counts image updates (CAFE: read from its log below)
[ -n "${OUTER:-}" ] && MDK_ITERS=$(( (ITERS + 1) * OUTER ))
TAG=${METHOD}_ipc${IPC}
if [ "$SAME_INIT" = 1 ]; then
    [ "$SCRIPT" = main_DM.py ] && { echo "SAME_INIT=1 is for dc, dsa and cafe (the scripts with the init patch)" >&2; exit 2; }
    TAG=${TAG}_sameinit
else
    [ "$SEED0" = 0 ] || { echo "SEED0 is for SAME_INIT=1 (the reference seeds itself)" >&2; exit 2; }
fi
D=$OUT/$TAG
mkdir -p "$D/sets" "$D/eval"
COMMIT=$(cat "$REF_DIR/COMMIT" 2>/dev/null || echo unknown)

PATCH_ARGS=()
for p in "$PATCH_DIR"/*.diff; do PATCH_ARGS+=(--patch "$p"); done
[ "$SAME_INIT" = 1 ] && [ -n "$INIT_PATCH" ] && PATCH_ARGS+=(--patch "$INIT_PATCH")

toolkit_run() {  # seed updates: one `mdk run`, the recipe's defaults but for the budget
    echo "[$(date -u +%T)] mdk run seed $1"
    /usr/bin/time -v -o "$D/mdk_s$1.time" $RUN "$MDK" run \
        "recipes/fashion_mnist_ipc${IPC}_${METHOD}.yaml" --overwrite \
        --set seed=$1 --set device=cpu --set "synthetic.iterations=$2" \
        --set "synthetic.batch_real=$BATCH_REAL" --set "backbone.width=$WIDTH" \
        --set 'evaluators=[]' --set "output.dir=$D/mdk_s$1" > "$D/mdk_s$1.log" 2>&1
    cp "$D/mdk_s$1/synthetic.safetensors" "$D/sets/mdk_exp$1.safetensors"
}

if [ "$SAME_INIT" != 1 ]; then
    # 1. the reference, SEEDS experiments in one process (it seeds itself from the clock)
    REF_CMD=(python -W ignore "$SCRIPT" "${REF_ARGS[@]}" --dataset FashionMNIST
             --model "ConvNetW$WIDTH" --ipc "$IPC" --eval_mode F --num_exp "$SEEDS"
             --num_eval 0 --Iteration "$ITERS" --batch_real "$BATCH_REAL"
             --data_path "$REF_DATA" --save_path "$D/ref")
    echo "[$(date -u +%T)] reference: ${REF_CMD[*]}"
    mkdir -p "$D/ref"
    (cd "$REF_DIR" && /usr/bin/time -v -o "$D/ref.time" $RUN "$PY" "${REF_CMD[@]:1}" \
        > "$D/ref.log" 2>&1)
    RES=$(ls "$D"/ref/res_*.pt)
    $RUN "$PY" benchmarks/export_reference_set.py "$RES" --out-dir "$D/sets" --prefix ref \
        --commit "$COMMIT" --script "$SCRIPT" --command "${REF_CMD[*]}" \
        --data-root "$REF_DATA" "${PATCH_ARGS[@]}"

    # 2. the toolkit, one `mdk run` per seed
    for ((s = SEED0; s < SEED0 + SEEDS; s++)); do toolkit_run $s "$MDK_ITERS"; done
else
    # 1-2. per seed: the toolkit's starting images (a run of 0 updates), the reference
    # from them (one process, one experiment), then the toolkit
    for ((s = SEED0; s < SEED0 + SEEDS; s++)); do
        $RUN "$MDK" run "recipes/fashion_mnist_ipc${IPC}_${METHOD}.yaml" --overwrite \
            --set seed=$s --set device=cpu --set synthetic.iterations=0 \
            --set "synthetic.batch_real=$BATCH_REAL" --set "backbone.width=$WIDTH" \
            --set 'evaluators=[]' --set "output.dir=$D/init_s$s" > "$D/init_s$s.log" 2>&1
        # the reference's label order is class-major ([0]*ipc + [1]*ipc + ...): check it
        "$PY" -c "import sys, torch; from mim4dd_kit.io.synthetic import load_synthetic; \
s = load_synthetic(sys.argv[1]); c = int(s.labels.max()) + 1; \
assert torch.equal(s.labels.cpu(), torch.arange(c).repeat_interleave(len(s.labels) // c)), \
'labels not class-major'; torch.save(s.images.clone(), sys.argv[2])" \
            "$D/init_s$s/synthetic.safetensors" "$D/init_s$s.pt"
        REF_CMD=(python -W ignore "$SCRIPT" "${REF_ARGS[@]}" --dataset FashionMNIST
                 --model "ConvNetW$WIDTH" --ipc "$IPC" --eval_mode F --num_exp 1
                 --num_eval 0 --Iteration "$ITERS" --batch_real "$BATCH_REAL"
                 --data_path "$REF_DATA" --save_path "$D/ref_s$s")
        echo "[$(date -u +%T)] reference seed $s: INIT_IMAGES=$D/init_s$s.pt ${REF_CMD[*]}"
        mkdir -p "$D/ref_s$s"
        (cd "$REF_DIR" && /usr/bin/time -v -o "$D/ref_s$s.time" env \
            INIT_IMAGES="$D/init_s$s.pt" $RUN "$PY" "${REF_CMD[@]:1}" \
            > "$D/ref_s$s.log" 2>&1)
        "$PY" -c "import sys, torch; a, b = torch.load(sys.argv[1]), torch.load(sys.argv[2]); \
print('reference start == toolkit init: max |diff| =', float((a - b).abs().max()))" \
            "$D/ref_s$s/init_images_exp0.pt" "$D/init_s$s.pt" | tee "$D/ref_s$s.init_check"
        RES=$(ls "$D"/ref_s$s/res_*.pt)
        $RUN "$PY" benchmarks/export_reference_set.py "$RES" --out-dir "$D/sets" \
            --prefix "ref_s$s" --commit "$COMMIT" --script "$SCRIPT" \
            --command "INIT_IMAGES=init_s$s.pt ${REF_CMD[*]}" --data-root "$REF_DATA" \
            "${PATCH_ARGS[@]}" > /dev/null
        mv "$D/sets/ref_s${s}_exp0.safetensors" "$D/sets/ref_exp$s.safetensors"
        if [ "$METHOD" = cafe ]; then
            # the reference's image updates, network by network (the logging patch)
            UPDATES=$(grep -o 'side-by-side: iteration [0-9]*: [0-9]* image updates' \
                "$D/ref_s$s.log" | awk '{n += $4} END {print n}')
            echo "reference seed $s: $UPDATES image updates" | tee "$D/ref_s$s.updates"
        else
            UPDATES=$MDK_ITERS
        fi
        toolkit_run $s "$UPDATES"
    done
fi

# 3. one evaluator for every set: mdk evaluate, MODELS networks x EPOCHS (seed by seed)
for ((s = SEED0; s < SEED0 + SEEDS; s++)); do for side in ref mdk; do
    name=${side}_exp$s
    f=$D/sets/$name.safetensors
    echo "[$(date -u +%T)] mdk evaluate $name"
    $RUN "$MDK" evaluate "$f" --dataset fashion_mnist --device cpu --seed 0 \
        --evaluator train_from_scratch --models "$MODELS" --epochs "$EPOCHS" \
        --backbone "{name: convnet, width: $WIDTH}" --json > "$D/eval/$name.mdk.json"
done; done

# 4. each side's own evaluator on the other's set: the reference's evaluate_synset
for ((s = SEED0; s < SEED0 + XEVAL && s < SEED0 + SEEDS; s++)); do
    for side in ref mdk; do
        name=${side}_exp$s
        echo "[$(date -u +%T)] reference evaluate_synset $name"
        $RUN "$PY" benchmarks/reference_evaluate.py "$D/sets/$name.safetensors" \
            --ref-dir "$REF_DIR" --data-path "$REF_DATA" --model "ConvNetW$WIDTH" \
            --epochs "$EPOCHS" --num-eval "$MODELS" > "$D/eval/$name.ref.json" \
            2> "$D/eval/$name.ref.log"
    done
done
# 5. SAME_INIT: the starting images themselves, by the same evaluator
if [ "$SAME_INIT" = 1 ]; then
    for ((s = SEED0; s < SEED0 + SEEDS; s++)); do
        echo "[$(date -u +%T)] mdk evaluate init_s$s"
        $RUN "$MDK" evaluate "$D/init_s$s/synthetic.safetensors" --dataset fashion_mnist \
            --device cpu --seed 0 --evaluator train_from_scratch --models "$MODELS" \
            --epochs "$EPOCHS" --backbone "{name: convnet, width: $WIDTH}" --json \
            > "$D/eval/init_s$s.mdk.json"
    done
fi
echo "[$(date -u +%T)] done: $D"
