#!/usr/bin/env bash
# Scaling of data-parallel training under mpirun, for each method of METHODS: the README's
# configuration (ViT-tiny/8, depth 4, 2×64 + 4×32 crops, out_dim 4096) with BATCH images per
# process, trained by one process and by NP ranks in one go on the same machine, each process
# on THREADS compute threads with one loader worker (DINOv3 with Gram anchoring from step
# WARMUP). Prints a Markdown table: images per second (the median of the steps after the first
# WARMUP), the all-reduce's share of a step, and the efficiency img/s(NP) / (NP × img/s(1)).
#
#   cargo build -p dino-trainer --features mpi --bin dino
#   bash scripts/bench_mpi.sh    # NP=2 STEPS=24 BATCH=16 THREADS=1 METHODS="dino dinov2 dinov3"
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${NP:-2} STEPS=${STEPS:-24} BATCH=${BATCH:-16} THREADS=${THREADS:-1} WARMUP=${WARMUP:-4}
METHODS=${METHODS:-dino dinov2 dinov3}
DINO=${DINO_BIN:-/var/tmp/dinoscope-target/debug/dino}
OUT=${OUT:-runs/bench-mpi}
rm -rf "$OUT" && mkdir -p "$OUT"
export RAYON_NUM_THREADS=$THREADS RUST_LOG=warn
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
for method in $METHODS; do
  flags=(--device cpu --arch vit_tiny --depth 4 --patch-size 8 --image-size 64 --local-size 32
    --local-crops 4 --out-dim 4096 --batch-size "$BATCH" --epochs 20 --warmup-epochs 2 --lr 0.002
    --max-steps "$STEPS" --workers 1 --quiet --eval-every 100000 --checkpoint-every 100000
    --method "$method")
  [ "$method" = dinov3 ] && flags+=(--gram-from-step "$WARMUP")
  "$DINO" train -o "$OUT/$method-np1" "${flags[@]}" >/dev/null
  mpirun --oversubscribe -np "$NP" --bind-to none "$DINO" train -o "$OUT/$method-np$NP" "${flags[@]}" >/dev/null
done
python3 - "$OUT" "$NP" "$WARMUP" "$BATCH" "$THREADS" $METHODS <<'PY'
import json, statistics, sys, pathlib
out, np_, warm, batch, threads = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
def steps(run):
    rows = [json.loads(l) for l in (out / run / "metrics.jsonl").read_text().splitlines() if l.strip()]
    return [r for r in rows if "loss" in r][warm:]
print(f"| method | processes | batch per process | threads each | img/s (median) | all-reduce ms per step | efficiency |")
print(f"|---|---|---|---|---|---|---|")
for method in sys.argv[6:]:
    one, many = steps(f"{method}-np1"), steps(f"{method}-np{np_}")
    ips1 = statistics.median(r["img_per_sec"] for r in one)
    ipsn = statistics.median(r["img_per_sec"] for r in many)
    ms = statistics.median(r["allreduce_ms"] for r in many)
    step_ms = statistics.median(1000 * np_ * int(batch) / r["img_per_sec"] for r in many)
    print(f"| {method} | 1 | {batch} | {threads} | {ips1:.1f} | – | 1.00 |")
    print(f"| {method} | {np_} | {batch} | {threads} | {ipsn:.1f} | {ms:.1f} ({100 * ms / step_ms:.0f} % of {step_ms:.0f} ms) | {ipsn / (np_ * ips1):.2f} |")
PY
