#!/usr/bin/env python3
"""Produce the DINOv2 / DINOv3 objective fixtures from the official code.

Usage: python3 scripts/make_objective_fixtures.py --dinov2-repo third_party/dinov2 \
           --dinov3-repo third_party/dinov3 --out trainer/tests/fixtures/objectives

Runs the official loss functions on fixed random inputs and records values and gradients:
KoLeoLoss (dinov2 and dinov3), DINOLoss.sinkhorn_knopp_teacher and
iBOTPatchLoss.sinkhorn_knopp_teacher, iBOTPatchLoss (softmax_center_teacher, forward_masked,
update_center / apply_center_update), GramLoss (dinov3; image and batch level, with and without
removing negative similarities). For the masking generator (data/masking.py) and the mask
sampling of collate_data_and_cast (data/collate.py) it records statistics over many draws
(the random numbers cannot match ours; their distribution must), plus the deterministic
`upperbound` of every batch size. Nothing of the official code is copied; it is imported.
"""
import argparse
import json
import math
import os
import random
import sys

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file


def mask_stats(masks, grid):
    """Statistics of a list of [g, g] bool masks: counts, bounding-box aspect, border share."""
    counts, log_aspect, abs_log_aspect, border = [], [], [], []
    for m in masks:
        m = np.asarray(m, dtype=bool)
        counts.append(int(m.sum()))
        if m.sum() == 0:
            continue
        rows = np.where(m.any(1))[0]
        cols = np.where(m.any(0))[0]
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        log_aspect.append(math.log(h / w))
        abs_log_aspect.append(abs(math.log(h / w)))
        ring = m.copy()
        ring[1:-1, 1:-1] = False
        border.append(ring.sum() / m.sum())
    arr = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
    c = arr(counts)
    return {
        "draws": len(masks),
        "count_mean": float(c.mean()),
        "count_std": float(c.std()),
        "log_aspect_mean": float(arr(log_aspect).mean()) if log_aspect else 0.0,
        "log_aspect_std": float(arr(log_aspect).std()) if log_aspect else 0.0,
        "abs_log_aspect_mean": float(arr(abs_log_aspect).mean()) if abs_log_aspect else 0.0,
        "border_share_mean": float(arr(border).mean()) if border else 0.0,
        "border_share_std": float(arr(border).std()) if border else 0.0,
    }


def install_fmha_stand_in():
    """dinov2.train imports xFormers' fmha for one thing, BlockDiagonalMask: concatenating token
    lists for one head pass and splitting the result. xFormers needs CUDA; this stand-in does
    the same concatenation and split on the CPU."""
    import types

    class BlockDiagonalMask:
        def __init__(self, sizes):
            self.sizes = sizes

        @classmethod
        def from_tensor_list(cls, tensors):
            sizes = [t.shape[1] for t in tensors]
            return cls(sizes), torch.cat([t.reshape(1, -1, t.shape[-1]) for t in tensors], dim=1)

        def split(self, x):
            return list(torch.split(x, self.sizes, dim=1))

    ops = types.ModuleType("xformers.ops")
    ops.fmha = types.SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask)
    sys.modules.setdefault("xformers", types.ModuleType("xformers"))
    sys.modules["xformers.ops"] = ops
    sys.modules["xformers.ops.fmha"] = ops.fmha


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dinov2-repo", required=True)
    parser.add_argument("--dinov3-repo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--draws", type=int, default=4000)
    args = parser.parse_args()
    sys.path.insert(0, args.dinov2_repo)
    sys.path.insert(0, args.dinov3_repo)
    from dinov2.data.collate import collate_data_and_cast as collate_v2  # noqa: E402
    from dinov2.data.masking import MaskingGenerator as MaskingV2  # noqa: E402
    from dinov2.loss import DINOLoss, KoLeoLoss, iBOTPatchLoss  # noqa: E402
    from dinov3.data.collate import collate_data_and_cast as collate_v3  # noqa: E402
    from dinov3.data.masking import MaskingGenerator as MaskingV3  # noqa: E402
    from dinov3.loss import GramLoss  # noqa: E402
    from dinov3.loss import KoLeoLoss as KoLeoV3  # noqa: E402
    from dinov3.loss import DINOLoss as DINOLossV3  # noqa: E402

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.manual_seed(0)
    tensors, record = {}, {}

    def leaf(name, shape, scale=1.0):
        t = (torch.randn(*shape, dtype=torch.float64) * scale).float().requires_grad_(True)
        tensors[name] = t.detach().clone()
        return t

    # KoLeo: one global-crop chunk of pre-head CLS tokens. A duplicated row makes a tie-free
    # nearest neighbour at distance 0 (the eps paths) in the second case.
    for case, rows in (("koleo", 12), ("koleo_dup", 6)):
        x = leaf(f"{case}.x", (rows, 16))
        if case == "koleo_dup":
            with torch.no_grad():
                x[3] = x[1]
            tensors[f"{case}.x"] = x.detach().clone()
        loss = KoLeoLoss()(x)
        loss.backward()
        tensors[f"{case}.grad"] = x.grad.clone()
        record[case] = float(loss.detach())
        x3 = x.detach().clone().requires_grad_(True)
        loss3 = KoLeoV3()(x3)
        assert abs(float(loss3) - float(loss)) <= 1e-6 * abs(float(loss)), "dinov3 KoLeo differs"

    # Sinkhorn-Knopp, DINO (CLS) and iBOT (masked patches) variants, 3 iterations.
    t = torch.randn(8, 32) * 0.8
    tensors["sinkhorn_dino.teacher"] = t.clone()
    q = DINOLoss(32).sinkhorn_knopp_teacher(t.clone(), teacher_temp=0.04)
    tensors["sinkhorn_dino.q"] = q
    q3 = DINOLossV3(32).sinkhorn_knopp_teacher(t.clone(), teacher_temp=0.04)
    assert torch.allclose(q, q3, rtol=1e-6, atol=0), "dinov3 Sinkhorn-Knopp differs"
    t = torch.randn(13, 32) * 0.8
    tensors["sinkhorn_ibot.teacher"] = t.clone()
    tensors["sinkhorn_ibot.q"] = iBOTPatchLoss(32).sinkhorn_knopp_teacher(
        t.clone(), teacher_temp=0.07, n_masked_patches_tensor=torch.tensor([13])
    )

    # iBOT: 2B = 6 global crops of 16 patches, one crop without masks (it still counts in 2B).
    masks = torch.zeros(6, 16, dtype=torch.bool)
    for i, idx in enumerate([[0, 1, 5], [], [2, 3, 4, 7, 9], [15], [6, 8], [10, 11, 12, 13]]):
        masks[i, idx] = True
    mask_indices = masks.flatten().nonzero().flatten()
    n_masked = mask_indices.shape[0]
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    ibot = iBOTPatchLoss(24)
    ibot.center = torch.randn(1, 1, 24) * 0.3
    tensors["ibot.center_before"] = ibot.center.clone().reshape(24)
    teacher_raw = torch.randn(n_masked, 24)
    tensors["ibot.teacher_raw"] = teacher_raw.clone()
    teacher_p = ibot.softmax_center_teacher(teacher_raw.unsqueeze(0), teacher_temp=0.05).squeeze(0)
    tensors["ibot.teacher_p"] = teacher_p.clone()
    ibot.update_center(teacher_raw.unsqueeze(0))
    ibot.apply_center_update()
    tensors["ibot.center_after"] = ibot.center.clone().reshape(24)
    s = leaf("ibot.student", (n_masked, 24), 2.0)
    loss = ibot.forward_masked(s, teacher_p, student_masks_flat=masks, n_masked_patches=n_masked,
                               masks_weight=weights)
    loss.backward()
    tensors["ibot.grad"] = s.grad.clone()
    tensors["ibot.masks"] = masks.float()
    tensors["ibot.weights"] = weights.clone()
    record["ibot"] = float(loss)

    # Gram loss: 3 images × 9 patches × 8 channels; image level (the gram-anchor config) and
    # batch level (the default), with the two ways of dropping negative similarities.
    student = torch.randn(3, 9, 8)
    teacher = student + 0.7 * torch.randn(3, 9, 8)
    tensors["gram.student"] = student.clone()
    tensors["gram.teacher"] = teacher.clone()
    for img_level in (True, False):
        for neg in ("keep", "remove_neg", "remove_only_teacher_neg"):
            name = f"gram.{'image' if img_level else 'batch'}.{neg}"
            s = student.clone().requires_grad_(True)
            fn = GramLoss(apply_norm=True, remove_neg=neg == "remove_neg",
                          remove_only_teacher_neg=neg == "remove_only_teacher_neg")
            loss = fn(s, teacher.clone(), img_level=img_level)
            loss.backward()
            tensors[f"{name}.grad"] = s.grad.clone()
            record[name] = float(loss)

    # Masking generator statistics (grid 14 = 224 / 16, the official max_num_patches formula).
    random.seed(0)
    np.random.seed(0)
    img, patch = 224, 16
    g = img // patch
    max_patches = 0.5 * img // patch * img // patch
    record["masking_max_num_patches"] = max_patches
    stats = {}
    for version, gen in (("v2", MaskingV2((g, g), max_num_patches=max_patches)),
                         ("v3", MaskingV3((g, g), max_num_patches=max_patches))):
        for target in (4, 19, 49, 98):
            stats[f"{version}.{target}"] = mask_stats([gen(target) for _ in range(args.draws)], g)
    record["masking"] = stats
    record["masking_grid"] = g

    # collate_data_and_cast's mask sampling: the deterministic upperbound for every batch size,
    # and the statistics of the per-image masked counts for 2B = 16.
    gen2 = MaskingV2((g, g), max_num_patches=max_patches)
    gen3 = MaskingV3((g, g), max_num_patches=max_patches)
    sample = lambda n: [({"global_crops": [torch.zeros(1)] * 2, "local_crops": [torch.zeros(1)]}, None)] * n  # noqa: E731
    upper = {}
    for b in range(1, 33):
        out = collate_v2(sample(b), (0.1, 0.5), 0.5, torch.float32, n_tokens=g * g, mask_generator=gen2)
        upper[str(2 * b)] = out["upperbound"]
    record["collate_upperbound"] = upper
    for version, collate, gen in (("v2", collate_v2, gen2), ("v3", collate_v3, gen3)):
        per_image, totals, masked_images = [], [], []
        for _ in range(args.draws // 4):
            out = collate(sample(8), (0.1, 0.5), 0.5, torch.float32, n_tokens=g * g, mask_generator=gen)
            c = out["collated_masks"].sum(-1)
            per_image += sorted(c.tolist())
            totals.append(int(c.sum()))
            masked_images.append(int((c > 0).sum()))
        per = np.asarray(per_image, dtype=np.float64).reshape(-1, 16)
        record[f"collate.{version}"] = {
            "draws": len(totals),
            "sorted_count_mean": per.mean(0).tolist(),
            "sorted_count_std": per.std(0).tolist(),
            "total_mean": float(np.mean(totals)),
            "total_std": float(np.std(totals)),
            "masked_images_mean": float(np.mean(masked_images)),
        }

    # DINOv2's parameter groups (utils/param_groups.py), per sub-model as SSLMetaArch builds
    # them: layer decay 0.9 and patch-embed multiplier 0.2 of ssl_default_config.yaml.
    from functools import partial  # noqa: E402

    from dinov2.layers import DINOHead  # noqa: E402
    from dinov2.models.vision_transformer import DinoVisionTransformer  # noqa: E402
    from dinov2.utils.param_groups import get_params_groups_with_decay  # noqa: E402

    backbone = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2,
                                     init_values=1e-5, block_chunks=0, num_register_tokens=2)
    head = DINOHead(32, 64, hidden_dim=48, bottleneck_dim=16)
    groups = {}
    for prefix, m in (("backbone.", backbone), ("dino_head.", head)):
        for d in get_params_groups_with_decay(m, lr_decay_rate=0.9, patch_embed_lr_mult=0.2):
            groups[prefix + d["name"]] = [d["lr_multiplier"], d["wd_multiplier"], d["is_last_layer"]]
    record["param_groups_v2"] = {"depth": 3, "layer_decay": 0.9, "patch_embed_lr_mult": 0.2, "groups": groups}

    # Three optimiser steps of DINOv2's train.py on that backbone and head with fixed gradients:
    # AdamW on the fused groups, apply_optim_scheduler (the last layer's lr 0 in the first,
    # frozen step), clip_grad_norm_(3.0) on each sub-model (the first step's gradients are large
    # enough to be clipped, the others not).
    from dinov2.utils.param_groups import fuse_params_groups  # noqa: E402

    install_fmha_stand_in()
    from dinov2.train.train import apply_optim_scheduler  # noqa: E402

    with torch.no_grad():
        for m in (backbone, head):
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    student = {"backbone": backbone, "dino_head": head}
    state0 = {f"{k}.{n}": v.detach().clone() for k, m in student.items() for n, v in m.state_dict().items()}
    torch.save({"teacher": state0}, os.path.join(args.out, "optim_v2_initial.pth"))
    fused = []
    for m in student.values():
        fused += list(fuse_params_groups(get_params_groups_with_decay(m, lr_decay_rate=0.9, patch_embed_lr_mult=0.2)))
    optimizer = torch.optim.AdamW(fused, betas=(0.9, 0.999))
    steps = [(1e-3, 0.04, 0.0, 4.0), (2e-3, 0.05, 2e-3, 0.02), (1.5e-3, 0.06, 1.5e-3, 0.05)]
    optim_record = []
    for i, (lr, wd, last_lr, scale) in enumerate(steps):
        apply_optim_scheduler(optimizer, lr, wd, last_lr)
        optimizer.zero_grad(set_to_none=True)
        norms = {}
        for k, m in student.items():
            for n, p in m.named_parameters():
                p.grad = torch.randn_like(p) * scale
                tensors[f"optim_v2.step{i}.grad.{k}.{n}"] = p.grad.clone()
            norms[k] = float(torch.nn.utils.clip_grad_norm_(m.parameters(), 3.0))
        optimizer.step()
        optim_record.append({"lr": lr, "wd": wd, "last_layer_lr": last_lr, "grad_norms": norms})
    for k, m in student.items():
        for n, v in m.state_dict().items():
            tensors[f"optim_v2.final.{k}.{n}"] = v.detach().clone()
    record["optim_v2"] = {"steps": optim_record, "clip_grad": 3.0, "layer_decay": 0.9,
                          "patch_embed_lr_mult": 0.2, "depth": 3}

    # Batch-subset drop path (layers/block.py drop_add_residual_stochastic_depth): a DINOv2
    # backbone with LayerScale and registers in training mode at rate 0.3 (uniform), with
    # torch.randperm recorded so that the replay can use the same subsets.
    dp = DinoVisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                               init_values=1e-5, block_chunks=0, num_register_tokens=2,
                               drop_path_rate=0.3, drop_path_uniform=True)
    with torch.no_grad():
        for p in dp.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(dp.state_dict(), os.path.join(args.out, "drop_path_v2.pth"))
    perms = []
    real_randperm = torch.randperm

    def recorded_randperm(n, **kw):
        perm = real_randperm(n)
        perms.append(perm.clone())
        return perm

    images = torch.randn(5, 3, 32, 32)
    dp.train()
    torch.randperm = recorded_randperm
    try:
        out = dp.forward_features(images)
    finally:
        torch.randperm = real_randperm
    tensors["drop_path.images"] = images
    tensors["drop_path.perms"] = torch.stack(perms).float()  # [blocks * 2, batch]
    tensors["drop_path.cls"] = out["x_norm_clstoken"].detach()
    tensors["drop_path.patches"] = out["x_norm_patchtokens"].detach()
    record["drop_path"] = {"rate": 0.3, "batch": 5, "depth": 2}

    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(args.out, "objectives.safetensors"))
    with open(os.path.join(args.out, "objectives.json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(tensors)} tensors and {len(record)} records to {args.out}")


if __name__ == "__main__":
    main()
