#!/usr/bin/env bash
# Issue 14's Measure: DINO, DINOv2 (with and without registers) and DINOv3 trained with the
# same recipe and the same number of steps on the synthetic objects set, each against its own
# random init, evaluated on the same held-out scenes (best-head / head-mean Jaccard, k-NN).
#
#   bash scripts/compare_methods.sh [STEPS] [OUT]      (defaults: 200, runs/compare)
#
# STEPS 200 with the default EPOCHS=20 is the README's main job; STEPS=896 EPOCHS=14 is the
# class demo. Prints a markdown table and writes it to OUT/table.md; each run's attention
# pictures are in OUT/<variant>/attention/, its curves in loss.png and eval.png.
# DINO_BIN (default: build and use target's dino), VARIANTS (a subset of the four, in quotes)
# and EXTRA (more train flags) can be set.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-200}
out=${2:-runs/compare}
epochs=${EPOCHS:-20}
if [[ -z "${DINO_BIN:-}" ]]; then
    cargo build -q -p dino-trainer --bin dino
    DINO_BIN="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/dino"
fi
mkdir -p "$out"
[[ -d "$out/eval-test" ]] || "$DINO_BIN" synth -o "$out/eval-test" --n 300 --size 128 --seed 99
[[ -d "$out/eval-bank" ]] || "$DINO_BIN" synth -o "$out/eval-bank" --n 600 --size 128 --seed 98

# The main job's recipe (README, "The two commands"); the epochs set the schedules' length.
recipe=(--device cpu --arch vit_tiny --depth 4 --patch-size 8 --image-size 64 --local-size 32
    --local-crops 4 --out-dim 4096 --batch-size 32 --epochs "$epochs" --warmup-epochs 2 --lr 0.002
    --eval-every 64 --quiet)
# The recipe's anchoring from 5/6 of the run: its default is 5/6 of the epochs' schedule
# (2048 scenes, 64 steps an epoch), which --max-steps may cut short; the ramp and the
# refreshes keep the schedule's proportions.
gram=""
if (( steps < epochs * 64 )); then gram="--gram-from-step $((steps * 5 / 6))"; fi
declare -A flags=(
    [dino]="--method dino"
    [dinov2]="--method dinov2"
    [dinov2-reg4]="--method dinov2 --registers 4"
    [dinov3]="--method dinov3 --registers 4 $gram"
)
read -ra variants <<< "${VARIANTS:-dino dinov2 dinov2-reg4 dinov3}"

# eval <run dir> <label> <px>: one table row from dino eval-seg and dino knn.
eval_row() {
    local ckpt=$1/checkpoints/teacher.safetensors label=$2 px=$3 seg knn
    seg=$("$DINO_BIN" eval-seg --checkpoint "$ckpt" --data "$out/eval-test" --image-size "$px")
    knn=$("$DINO_BIN" knn --checkpoint "$ckpt" --train "$out/eval-bank" --val "$out/eval-test" \
        --image-size "$px")
    python3 - "$label" "$px" "$seg" "$knn" "${4:-}" <<'EOF'
import json, sys
label, px, seg, knn, secs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4]), sys.argv[5]
minutes = f"{float(secs) / 60:.1f}" if secs else ""
print(f"| {label} | {px} | {seg['jaccard_best_head']:.3f} | {seg['jaccard_head_mean_map']:.3f} "
      f"| {seg['jaccard_mean_heads']:.3f} | {knn['knn_top1']:.1f} % | {minutes} |")
EOF
}

# run_variant <name>: its random init, its training, and its four table rows in OUT/<name>/rows.md.
run_variant() {
    local v=$1 f secs t0
    read -ra f <<< "${flags[$v]}"
    # Step 0's learning rate is 0, so a 1-step run's teacher is the random init.
    [[ -f "$out/$v-init/checkpoints/teacher.safetensors" ]] ||
        "$DINO_BIN" train -o "$out/$v-init" "${recipe[@]}" "${f[@]}" ${EXTRA:-} --max-steps 1
    if [[ ! -f "$out/$v/train_seconds" ]]; then
        t0=$(date +%s)
        "$DINO_BIN" train -o "$out/$v" "${recipe[@]}" "${f[@]}" ${EXTRA:-} --max-steps "$steps"
        echo $(( $(date +%s) - t0 )) > "$out/$v/train_seconds"
    fi
    secs=$(cat "$out/$v/train_seconds")
    for px in 64 256; do
        eval_row "$out/$v-init" "$v, random init" "$px"
        eval_row "$out/$v" "$v, $steps steps" "$px" "$secs"
    done > "$out/$v/rows.md"
}

# JOBS=2 trains two variants side by side, one compute thread each (the minutes are then one
# core's); the default trains one at a time on every core.
jobs=${JOBS:-1}
if (( jobs > 1 )); then export RAYON_NUM_THREADS=1; recipe+=(--workers 1); fi
for v in "${variants[@]}"; do
    run_variant "$v" &
    while (( $(jobs -rp | wc -l) >= jobs )); do wait -n; done
done
wait

table="$out/table.md"
{
    echo "| model | px | Jaccard, best head | head-mean mask | mean over heads | k-NN top-1 | train minutes |"
    echo "|---|---|---|---|---|---|---|"
    for v in "${variants[@]}"; do cat "$out/$v/rows.md"; done
} > "$table"
cat "$table"
