#!/usr/bin/env bash
# The GPU proof in one call: on the lent GPU machine, ours and the official PyTorch code side by
# side, each part stopped at its own time budget so one slow part cannot eat the rest. Writes
# JSON lines to $OUT/gpu.jsonl (plus gpu-check.log, the autotune cache and the demo run), then
# the GPU section of BENCHMARKS.md from them (scripts/benchmarks.py --section gpu).
#
#   bash scripts/gpu-kit.sh                 # here, once: release dino (WGSL; SPIR-V unless SPIRV=0), Vulkan loader
#   device run: bash scripts/gpu-check.sh   # carry ["gpu-kit", "third_party"]; ~9 minutes
#   bash scripts/gpu-check.sh --dry-run     # the same sequence here, tiny, lavapipe + CPU torch
#
# Nothing on the machine is changed: the binaries and the loader are unpacked in a temp folder (removed at exit) and
# found through LD_LIBRARY_PATH; caches live under $OUT: CubeCL's autotune results in
# $OUT/autotune-cache (DINO_AUTOTUNE_CACHE), which step-warm reuses, the rest under XDG_CACHE_HOME.
set -uo pipefail
cd "$(dirname "$0")/.."
dry=0
[ "${1:-}" = --dry-run ] && dry=1
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
results=$OUT/gpu.jsonl log=$OUT/gpu-check.log
: > "$results"
: > "$log"
budget=${BUDGET_S:-540}
[ $dry = 1 ] && budget=${BUDGET_S:-900}
deadline=$((SECONDS + budget))
py=${PYTHON:-python3}
repo=${DINO_REPO:-third_party/dino}
say() { echo "[$SECONDS s] $*" | tee -a "$log" >&2; }
status() { printf '{"mode": "status", "part": "%s", "status": "%s", "secs": %s}\n' "$1" "$2" "$3" >> "$results"; }

# part NAME SECONDS CMD…: runs CMD (JSON lines to results) within min(SECONDS, time left).
part() {
  local name=$1 want=$2
  shift 2
  local left=$((deadline - SECONDS)) t0=$SECONDS
  local give=$((want < left ? want : left))
  # PARTS="step-cold viewer-16-ours …" runs only those (a second call that fills what a first missed).
  if [ -n "${PARTS:-}" ] && [[ " $PARTS " != *" $name "* ]]; then return; fi
  if [ "$give" -lt 10 ]; then say "skip $name: out of time"; status "$name" skipped 0; return; fi
  say "$name (up to $give s)"
  timeout -k 5 "$give" "$@" 2>>"$log" | grep '^{' >> "$results"
  local rc=${PIPESTATUS[0]}
  case $rc in
    0) status "$name" ok $((SECONDS - t0)) ;;
    124|137) say "$name: stopped at its budget"; status "$name" timeout $((SECONDS - t0)) ;;
    *) say "$name: failed ($rc)"; status "$name" "failed-$rc" $((SECONDS - t0)) ;;
  esac
}

# The binaries: the kit's two release builds (unpacked beside $OUT, with Python's lzma where the
# machine has no xz): $dino with the SPIR-V `vulkan` feature, $dino_wgsl as the README builds
# it. Without a kit (dry run only) both are the README's debug build.
kit_tmp=$(mktemp -d)
trap 'rm -rf "$kit_tmp"' EXIT
unpack() {
  local path=$kit_tmp/$1
  if command -v xz >/dev/null; then xz -dc "gpu-kit/$1.xz" > "$path"
  else "$py" -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "gpu-kit/$1.xz" "$path"; fi
  chmod +x "$path"
  echo "$path"
}
if [ -f gpu-kit/dino-wgsl.xz ]; then
  dino_wgsl=$(unpack dino-wgsl)
  # The SPIR-V build is optional (`SPIRV=0 bash scripts/gpu-kit.sh` skips its 25 minutes):
  # without it the SPIR-V parts are skipped and the WGSL binary answers the backends part.
  if [ -f gpu-kit/dino.xz ]; then dino=$(unpack dino); else dino=; fi
elif [ $dry = 1 ]; then
  target=$(cargo metadata --format-version 1 --no-deps | "$py" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  dino=$target/debug/dino dino_wgsl=$target/debug/dino
  say "no gpu-kit (bash scripts/gpu-kit.sh builds it); the dry run uses $dino"
else
  echo "gpu-kit/dino-wgsl.xz is missing: run bash scripts/gpu-kit.sh here first and carry gpu-kit" >&2
  exit 1
fi

if [ $dry = 0 ]; then
  vk=$kit_tmp/vulkan-loader
  for deb in gpu-kit/debs/*.deb; do dpkg -x "$deb" "$vk"; done
  export LD_LIBRARY_PATH=$vk/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
    [ -f "$icd" ] && export VK_DRIVER_FILES=$icd && break
  done
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)
  cores=$(nproc)
  cuda=--cuda
  wgpu=wgpu vulkan=vulkan each=wgpu
  big="--patch-size 16 --batch-size 64"           # official: 2×224 + 8×96, out_dim 65536
  steps="--warmup 2 --steps 10"
  ref_steps="--warmup 2 --steps 10"
  view_sizes=480
  demo_secs=180 demo_steps=896
  cold_s=120 warm_s=90
else
  gpu="dry run: $(lscpu | sed -n 's/^Model name: *//p' | head -1), lavapipe"
  cores=$(nproc)
  cuda=
  # lavapipe compiles each shader for minutes: it runs the cold/warm pair only, the other
  # parts run on the CPU backend; the SPIR-V build crashes lavapipe, so it is only checked.
  wgpu=wgpu vulkan=cpu each=cpu
  export CUBECL_AUTOTUNE_LEVEL=minimal
  big="--patch-size 16 --depth 1 --batch-size 2 --image-size 32 --local-size 16 --local-crops 2 --out-dim 256"
  steps="--warmup 1 --steps 1"
  ref_steps="--warmup 1 --steps 1"
  view_sizes=64
  demo_secs=90 demo_steps=2
  # lavapipe compiles and autotunes every kernel of the first step on 2 cores: minutes.
  cold_s=420 warm_s=150
fi
export XDG_CACHE_HOME=$OUT/cache
export DINO_AUTOTUNE_CACHE=$OUT/autotune-cache   # written by step-cold, read by every later part
"$py" - "$results" "$gpu" "$cores" "$dry" <<'PY'
import datetime, json, sys
try:
    import torch
    torch_v = torch.__version__
except Exception:
    torch_v = "absent"
meta = {"mode": "meta", "date": datetime.date.today().isoformat(), "machine": f"{sys.argv[2]}, {sys.argv[3]} cores",
        "versions": f"burn 0.22.1, torch {torch_v}", "command": "bash scripts/gpu-check.sh" + (" --dry-run" if sys.argv[4] == "1" else ""),
        "dry_run": sys.argv[4] == "1"}
open(sys.argv[1], "a").write(json.dumps(meta) + "\n")
PY
say "machine: $gpu; binaries: ${dino:-no SPIR-V build} (SPIR-V), $dino_wgsl (WGSL)"

# 1. The SPIR-V binary was built with it and runs (the dry run stops here for SPIR-V: lavapipe
#    crashes in its kernels); its bench line lists the compiled-in backends.
part backends 60 "${dino:-$dino_wgsl}" bench --mode data --data synthetic --synthetic-count 8 --batch-size 2 --steps 1 --workers 1 \
  --image-size 32 --local-size 16 --local-crops 1

# 2. Autotune cache: the same step cold (empty cache), then warm; first_step_secs tells them apart.
part step-cold "$cold_s" "$dino_wgsl" bench --mode step --device "$wgpu" --arch vit_small $big $steps
log_at=$(wc -c < "$log")
part step-warm "$warm_s" "$dino_wgsl" bench --mode step --device "$wgpu" --arch vit_small $big $steps
# What step-warm found in the cache (CubeCL logs one "Loaded N autotune cached entries" per tuner).
loaded=$(tail -c +$((log_at + 1)) "$log" | sed -n 's/.*Loaded \([0-9]*\) autotune cached entries.*/\1/p' | awk '{s += $1} END {print s + 0}')
kib=$(du -sk "$DINO_AUTOTUNE_CACHE" 2>/dev/null | cut -f1)
printf '{"mode": "autotune_cache", "loaded_entries": %s, "cache_kib": %s}\n' "$loaded" "${kib:-0}" >> "$results"

# 3. The DINO step: ours (WGSL; SPIR-V; f32 and f16) and the official code (f32; fp16 autocast).
for arch in vit_small vit_tiny; do
  for p in f32 f16; do
    [ "$arch/$p" = vit_small/f32 ] || part "step-$arch-$each-$p" 75 "$dino_wgsl" bench --mode step --device "$each" --arch "$arch" $big --precision "$p" $steps
    [ $dry = 0 ] && [ -n "$dino" ] && part "step-$arch-vulkan-$p" 75 "$dino" bench --mode step --device "$vulkan" --arch "$arch" $big --precision "$p" $steps
    fp16=; [ "$p" = f16 ] && fp16=--fp16
    [ $dry = 1 ] && [ "$p" = f16 ] && continue   # autocast fp16 needs CUDA
    part "step-$arch-official-$p" 60 "$py" scripts/bench_reference.py --dino-repo "$repo" --threads "$cores" step $cuda --arch "$arch" $big $ref_steps $fp16
  done
done

# 4. The data pipeline on every core: our loader against DataAugmentationDINO with DataLoader workers.
photos=$(mktemp -d)
mkdir -p "$photos/photos"
for i in $(seq 1 16); do for f in assets/samples/*.jpg; do cp "$f" "$photos/photos/$i-$(basename "$f")"; done; done
n=$([ $dry = 1 ] && echo 2 || echo 16)
part data-ours 45 "$dino_wgsl" bench --mode data --data "$photos" --workers "$cores" --batch-size 16 --steps $((2 * cores))
part data-official 60 "$py" scripts/bench_reference.py --dino-repo "$repo" --threads 1 data --data "$photos" --workers "$cores" --images $((16 * n * cores / 2))

# 5. The viewer's network at 480 px, all heads: ViT-S/16 and ViT-S/8.
for patch in 16 8; do
  part "viewer-$patch-ours" 45 "$dino_wgsl" bench --mode viewer --device "$each" --arch vit_small --patch-size $patch --viewer-size $view_sizes --steps 5
  part "viewer-$patch-official" 30 "$py" scripts/bench_reference.py --dino-repo "$repo" --threads "$cores" viewer $cuda --arch vit_small --patch-size $patch --size $view_sizes --runs 5
done

# 6. The class-demo recipe (896 steps; stopped at its budget if slower) with --device auto: its
#    speed and where its Jaccard got to (evaluated every 64 steps, so a cut run still reports).
demo=$OUT/demo
rm -rf "$demo"
part demo $((demo_secs + 30)) "$dino_wgsl" train -o "$demo" --device auto --quiet --arch vit_tiny --depth 4 --patch-size 8 \
  --image-size 64 --local-size 32 --local-crops 4 --out-dim 4096 --batch-size 32 --epochs 14 --warmup-epochs 2 \
  --lr 0.002 --eval-every 64 --max-steps "$demo_steps"
"$py" - "$demo/metrics.jsonl" "$results" <<'PY'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
except FileNotFoundError:
    sys.exit(0)
steps = [r for r in rows if "img_per_sec" in r]
evals = [r for r in rows if "jaccard_best_head" in r]
line = {"mode": "demo", "impl": "dinoscope", "steps": max((r.get("step", 0) for r in rows), default=0),
        "img_per_sec": steps[-1]["img_per_sec"] if steps else None,
        "jaccard_best_head": evals[-1]["jaccard_best_head"] if evals else None,
        "jaccard_start": evals[0]["jaccard_best_head"] if evals else None}
open(sys.argv[2], "a").write(json.dumps(line) + "\n")
PY

say "done in $SECONDS s; results in $results"
"$py" scripts/benchmarks.py "$results" --section "$([ $dry = 1 ] && echo gpu-dry-run || echo gpu)" > "$OUT/BENCHMARKS-section.md"
[ $dry = 0 ] && [ -w BENCHMARKS.md ] && "$py" scripts/benchmarks.py "$results" --section gpu --write BENCHMARKS.md
cat "$OUT/BENCHMARKS-section.md"
