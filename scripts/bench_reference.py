#!/usr/bin/env python3
"""The official facebookresearch/dino code timed on the same work as `dino bench`.

Usage (PyTorch CPU from pip, the official code in a git-ignored folder, e.g. third_party/dino):
    python3 scripts/bench_reference.py --dino-repo third_party/dino --threads 2 step \
        --arch vit_tiny --patch-size 8 --depth 4 --image-size 64 --local-size 32 --local-crops 4 \
        --out-dim 4096 --batch-size 32
    python3 scripts/bench_reference.py --dino-repo third_party/dino --threads 1 data --data DIR
    python3 scripts/bench_reference.py --dino-repo third_party/dino --threads 2 viewer --arch vit_small

Prints one JSON line per run with the same keys as `dino bench` (img_per_sec, ms_per_step,
median_ms …) so scripts/benchmarks.py can put both side by side. Nothing of the official code is
copied: it is imported from --dino-repo.

- step: the body of main_dino.train_one_epoch (teacher on the 2 global crops, student on all
  crops through utils.MultiCropWrapper, DINOLoss, AdamW on utils.get_params_groups,
  utils.clip_gradients, utils.cancel_gradients_last_layer, the EMA update) on random crops.
- data: PIL decode + main_dino.DataAugmentationDINO over the image files of --data (recursively),
  in this process (one core with --threads 1), as one DataLoader worker does.
- viewer: VisionTransformer.get_last_selfattention on one image, as visualize_attention.py.
- matmul: torch.mm on each product of a `dino bench --mode matmul` line (read from --products,
  the last such line of that file), with the same operand transposed; PyTorch's own kernel
  library (MKL or oneDNN on x86) against ours on the step's shapes.
"""
import argparse
import json
import os
import statistics
import sys
import time
from functools import partial


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dino-repo", required=True, help="folder holding the official main_dino.py")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("step")
    s.add_argument("--arch", default="vit_small")
    s.add_argument("--patch-size", type=int, default=16)
    s.add_argument("--depth", type=int, default=None)
    s.add_argument("--image-size", type=int, default=224)
    s.add_argument("--local-size", type=int, default=96)
    s.add_argument("--local-crops", type=int, default=8)
    s.add_argument("--out-dim", type=int, default=65536)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--warmup", type=int, default=3)
    s.add_argument("--steps", type=int, default=10)
    s.add_argument("--fp16", action="store_true", help="autocast + GradScaler (CUDA only)")
    s.add_argument("--cuda", action="store_true")
    d = sub.add_parser("data")
    d.add_argument("--data", required=True)
    d.add_argument("--images", type=int, default=96)
    d.add_argument("--local-crops", type=int, default=8)
    d.add_argument("--workers", type=int, default=0, help="DataLoader workers (0: this process)")
    v = sub.add_parser("viewer")
    v.add_argument("--arch", default="vit_small")
    v.add_argument("--patch-size", type=int, default=16)
    v.add_argument("--size", type=int, default=480)
    v.add_argument("--runs", type=int, default=5)
    v.add_argument("--cuda", action="store_true")
    m = sub.add_parser("matmul")
    m.add_argument("--products", required=True, help="JSON lines holding a `dino bench --mode matmul` line")
    return p.parse_args()


def backbone(vits, arch, patch, depth, drop_path, img_size):
    import torch.nn as nn
    sizes = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}
    dim, heads = sizes[arch]
    return vits.VisionTransformer(img_size=[img_size], patch_size=patch, embed_dim=dim, depth=depth or 12,
                                  num_heads=heads, mlp_ratio=4, qkv_bias=True, drop_path_rate=drop_path,
                                  norm_layer=partial(nn.LayerNorm, eps=1e-6)), dim


def bench_step(a, torch, utils, vits, DINOLoss):
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{29600 + os.getpid() % 300}",
                                rank=0, world_size=1)
    dev = torch.device("cuda" if a.cuda else "cpu")

    def network(drop_path):
        b, dim = backbone(vits, a.arch, a.patch_size, a.depth, drop_path, a.image_size)
        head = vits.DINOHead(dim, a.out_dim, use_bn=False, norm_last_layer=True)
        return utils.MultiCropWrapper(b, head).to(dev)

    student, teacher = network(0.1), network(0.0)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    ncrops = 2 + a.local_crops
    dino_loss = DINOLoss(a.out_dim, ncrops, 0.04, 0.04, 0, 100).to(dev)
    optimizer = torch.optim.AdamW(utils.get_params_groups(student))
    scaler = torch.cuda.amp.GradScaler() if a.fp16 else None
    b = a.batch_size

    def crops():
        g = [torch.randn(b, 3, a.image_size, a.image_size, device=dev) for _ in range(2)]
        l = [torch.randn(b, 3, a.local_size, a.local_size, device=dev) for _ in range(a.local_crops)]
        return g + l

    def one_step():
        images = crops()
        for i, g in enumerate(optimizer.param_groups):
            g["lr"] = 1e-4
            if i == 0:
                g["weight_decay"] = 0.04
        with torch.autocast(dev.type, enabled=a.fp16):
            teacher_output = teacher(images[:2])
            student_output = student(images)
            loss = dino_loss(student_output, teacher_output, 0)
        optimizer.zero_grad()
        if scaler is None:
            loss.backward()
            utils.clip_gradients(student, 3.0)
            utils.cancel_gradients_last_layer(1, student, 1)
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            utils.clip_gradients(student, 3.0)
            utils.cancel_gradients_last_layer(1, student, 1)
            scaler.step(optimizer)
            scaler.update()
        with torch.no_grad():
            m = 0.996
            for q, k in zip(student.parameters(), teacher.parameters()):
                k.data.mul_(m).add_((1 - m) * q.detach().data)
        loss.item()  # the official loop reads the loss every step (NaN check)

    for _ in range(a.warmup):
        one_step()
    if a.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(a.steps):
        one_step()
    if a.cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    return {"mode": "step", "impl": "official", "device": str(dev), "arch": a.arch, "patch": a.patch_size,
            "depth": a.depth or 12, "batch": b, "global_crops": 2, "local_crops": a.local_crops,
            "global_size": a.image_size, "local_size": a.local_size, "out_dim": a.out_dim,
            "precision": "f16" if a.fp16 else "f32", "warmup_steps": a.warmup, "steps": a.steps,
            "img_per_sec": a.steps * b / secs, "ms_per_step": 1000 * secs / a.steps,
            "peak_device_memory_bytes": torch.cuda.max_memory_allocated() if a.cuda else None}


def bench_data(a, torch, main_dino):
    from PIL import Image
    files = sorted(os.path.join(r, f) for r, _, fs in os.walk(a.data) for f in fs
                   if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".bmp")) and "_mask" not in f)
    if not files:
        sys.exit(f"no images under {a.data}")
    aug = main_dino.DataAugmentationDINO((0.4, 1.0), (0.05, 0.4), a.local_crops)

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return a.images

        def __getitem__(self, i):
            with open(files[i % len(files)], "rb") as f:
                img = Image.open(f).convert("RGB")
            return aug(img)

    loader = torch.utils.data.DataLoader(Photos(), batch_size=16, num_workers=a.workers)
    start = time.perf_counter()
    n = 0
    for batch in loader:
        n += batch[0].shape[0]
    secs = time.perf_counter() - start
    cores = max(a.workers, 1)
    return {"mode": "data", "impl": "official", "data": a.data, "workers": cores, "images": n,
            "local_crops": a.local_crops, "global_size": 224, "local_size": 96,
            "img_per_sec": n / secs, "img_per_sec_per_core": n / secs / cores}


def bench_viewer(a, torch, vits):
    dev = torch.device("cuda" if a.cuda else "cpu")
    model, _ = backbone(vits, a.arch, a.patch_size, None, 0.0, 224)
    model = model.to(dev).eval()
    times = []
    with torch.no_grad():
        for i in range(a.runs + 1):
            x = torch.randn(1, 3, a.size, a.size, device=dev)
            start = time.perf_counter()
            attn = model.get_last_selfattention(x)
            attn.cpu()
            if i > 0:
                times.append(1000 * (time.perf_counter() - start))
    return {"mode": "viewer", "impl": "official", "device": str(dev), "arch": a.arch, "patch": a.patch_size,
            "image_size": a.size, "heads": model.blocks[-1].attn.num_heads, "runs": a.runs,
            "median_ms": statistics.median(times), "min_ms": min(times)}


def bench_matmul(a, torch):
    ours = [json.loads(l) for l in open(a.products) if l.startswith("{") and '"mode": "matmul"' in l.replace('":"', '": "')]
    ours = [l for l in ours if l.get("impl") == "dinoscope"]
    if not ours:
        sys.exit(f"no `dino bench --mode matmul` line in {a.products}")
    ref = ours[-1]
    rows, total_flop, total_secs = [], 0.0, 0.0
    for p in ref["products"]:
        m, k, n, t = p["m"], p["k"], p["n"], p["transposed"]
        lhs = torch.randn(k, m).t() if t == 1 else torch.randn(m, k)
        rhs = torch.randn(n, k).t() if t == 2 else torch.randn(k, n)
        times = []
        for i in range(ref["runs"] + 1):
            start = time.perf_counter()
            lhs.mm(rhs)
            if i > 0:
                times.append(time.perf_counter() - start)
        secs, count = statistics.median(times), p.get("count", 1)
        total_flop += 2.0 * m * k * n * count
        total_secs += secs * count
        rows.append({"name": p["name"], "m": m, "k": k, "n": n, "transposed": t, "count": count,
                     "gflop_per_s": 2.0 * m * k * n / secs / 1e9})
    keys = ("arch", "patch", "depth", "batch", "global_size", "local_size", "local_crops", "out_dim", "runs")
    return dict({k: ref[k] for k in keys}, mode="matmul", impl="official", device="cpu", products=rows,
                total_ms=1000 * total_secs, gflop_per_s=total_flop / total_secs / 1e9)


def main():
    a = parse()
    sys.path.insert(0, a.dino_repo)
    import torch
    torch.set_num_threads(a.threads)
    import utils  # noqa: E402  (official code)
    import vision_transformer as vits  # noqa: E402
    import main_dino  # noqa: E402
    if a.mode == "step":
        line = bench_step(a, torch, utils, vits, main_dino.DINOLoss)
    elif a.mode == "data":
        line = bench_data(a, torch, main_dino)
    elif a.mode == "matmul":
        line = bench_matmul(a, torch)
    else:
        line = bench_viewer(a, torch, vits)
    line.update({"threads": a.threads, "torch": torch.__version__})
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
