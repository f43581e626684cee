#!/usr/bin/env bash
# The README's evaluation table: `dino knn` (at 64 px and at the official 256 -> 224) and
# `dino linear` (64 px, 100 epochs, DINOv2's learning-rate grid) of the shipped demo model and
# of its random init (the class-demo command with --max-steps 1), on the class demo's
# held-out scenes; then two epochs of `dino linear` at 224 px for the time per epoch.
#
#   bash scripts/eval_demo.sh [OUT]      (default: runs/eval-demo; about 12 minutes on 2 cores)
#
# DINO_BIN (default: build and use target's dino) can be set. Prints one line per measurement
# with its wall time and JSON.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/eval-demo}
if [[ -z "${DINO_BIN:-}" ]]; then
    cargo build -q -p dino-trainer --bin dino
    DINO_BIN="$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debug/dino"
fi
mkdir -p "$out"
[[ -d "$out/eval-test" ]] || "$DINO_BIN" synth -o "$out/eval-test" --n 300 --size 128 --seed 99
[[ -d "$out/eval-bank" ]] || "$DINO_BIN" synth -o "$out/eval-bank" --n 600 --size 128 --seed 98
[[ -f "$out/rand/checkpoints/teacher.safetensors" ]] ||
    "$DINO_BIN" train -o "$out/rand" --device cpu --arch vit_tiny --depth 4 --patch-size 8 \
        --image-size 64 --local-size 32 --local-crops 4 --out-dim 4096 --batch-size 32 \
        --epochs 14 --warmup-epochs 2 --lr 0.002 --eval-every 100000 --max-steps 1 --quiet
timed() { # timed <label> <command...>: one line with the wall time and the command's JSON
    local label=$1 start json
    shift
    start=$(date +%s.%N)
    json=$("$@" 2>/dev/null)
    echo "$label $(python3 -c "import sys,time; print(f'{time.time() - float(sys.argv[1]):.1f}')" "$start") s: $json"
}
for m in demo:assets/demo/dino-vit-tiny8-shapes.safetensors rand:$out/rand/checkpoints/teacher.safetensors; do
    name=${m%%:*} ck=${m#*:}
    sets=(--train "$out/eval-bank" --val "$out/eval-test" --device cpu)
    timed "knn $name 64px" "$DINO_BIN" knn --checkpoint "$ck" "${sets[@]}" --image-size 64 --no-cache
    timed "knn $name 224px" "$DINO_BIN" knn --checkpoint "$ck" "${sets[@]}" --no-cache
    rm -rf "$out/linear-$name"
    timed "linear $name 64px 100 epochs" "$DINO_BIN" linear --checkpoint "$ck" "${sets[@]}" \
        -o "$out/linear-$name" --lr-grid --epochs 100 --resize 64 --crop 64
done
rm -rf "$out/linear-224"
timed "linear demo 224px 2 epochs" "$DINO_BIN" linear \
    --checkpoint assets/demo/dino-vit-tiny8-shapes.safetensors --train "$out/eval-bank" \
    --val "$out/eval-test" --device cpu -o "$out/linear-224" --epochs 2
