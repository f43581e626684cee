#!/usr/bin/env python3
"""Produce the k-NN fixture from the official facebookresearch/dino `eval_knn.py`.

Usage: python3 scripts/make_knn_fixtures.py --dino-repo <official code> --out trainer/tests/fixtures/knn

Writes a tiny labelled folder (train/ and val/, 6 classes, images of several sizes and
aspect ratios drawn by `pixel()` below, which the Rust test draws the same way), then runs
the official pipeline on it with the teacher backbone of `train_initial.pth` (the training
fixture): `extract_feature_pipeline`'s transform (Resize 256 bicubic, CenterCrop 224,
ImageNet statistics), `extract_features`, L2 normalisation and `knn_classifier` for
k = 1, 5, 10, 20 with T = 0.07. It saves the features (`knn.safetensors`) and the
accuracies (`knn.json`); the images are not kept (the test regenerates them). Nothing of the
official code is copied; it is imported from --dino-repo.
"""
import argparse
import json
import os
import sys
import tempfile
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from safetensors.torch import save_file

CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 10, 17
KS, TEMPERATURE = [1, 5, 10, 20], 0.07


def size(split, c, i):
    """Width and height of image i of class c: portrait, landscape and square, odd and even."""
    salt = 0 if split == "train" else 1
    return 20 + (i * 7 + c * 3 + salt) % 13, 16 + (i * 5 + c + salt * 2) % 11


def pixel(split, c, i, x, y, ch):
    """A class-dependent pattern with per-image noise, in integers (the Rust test draws it too)."""
    salt = 0 if split == "train" else 1
    stripes = (x * (c + 1) * 13 + y * (3 + c) * 7) % 256
    noise = (x * 31 + y * 17 + i * 101 + salt * 57 + ch * 43) % 61
    return (stripes + noise + ch * 50 + c * 40) % 256


def write_folder(root):
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for c in range(CLASSES):
            d = os.path.join(root, split, f"class{c}")
            os.makedirs(d, exist_ok=True)
            for i in range(per_class):
                w, h = size(split, c, i)
                a = np.zeros((h, w, 3), dtype=np.uint8)
                for y in range(h):
                    for x in range(w):
                        for ch in range(3):
                            a[y, x, ch] = pixel(split, c, i, x, y, ch)
                Image.fromarray(a).save(os.path.join(d, f"img{i:02}.png"))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dino-repo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", default="trainer/tests/fixtures/train_initial.pth")
    args = parser.parse_args()
    sys.path.insert(0, args.dino_repo)
    import eval_knn  # noqa: E402
    import vision_transformer as vits  # noqa: E402

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29541")
    dist.init_process_group("gloo", rank=0, world_size=1)
    # The training fixture's backbone (patch 8, width 64, depth 2, one head).
    model = vits.VisionTransformer(
        img_size=[32], patch_size=8, embed_dim=64, depth=2, num_heads=1, mlp_ratio=2,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)
    state = torch.load(args.weights, map_location="cpu")["teacher"]
    state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    model.load_state_dict(state, strict=True)
    model.eval()

    with tempfile.TemporaryDirectory() as root:
        write_folder(root)
        eval_args = argparse.Namespace(
            data_path=root, batch_size_per_gpu=16, num_workers=0, arch="vit_fixture",
            patch_size=8, pretrained_weights="", checkpoint_key="teacher", use_cuda=False,
            dump_features=None)
        # extract_feature_pipeline builds the network by name and moves everything to CUDA;
        # run it as it is, on the CPU, with our network under a name that has no released
        # weights (so nothing is downloaded).
        vits.__dict__["vit_fixture"] = lambda **_: model
        model.cuda = lambda: model
        torch.Tensor.cuda = lambda self, *a, **k: self
        train_f, val_f, train_l, val_l = eval_knn.extract_feature_pipeline(eval_args)
    results = []
    for k in KS:
        top1, top5 = eval_knn.knn_classifier(
            train_f, train_l, val_f, val_l, k, TEMPERATURE, num_classes=CLASSES)
        results.append({"k": k, "top1": top1, "top5": top5})
        print(f"{k}-NN: top-1 {top1:.2f}, top-5 {top5:.2f}")
    os.makedirs(args.out, exist_ok=True)
    save_file({"train_features": train_f.contiguous(), "val_features": val_f.contiguous(),
               "train_labels": train_l.to(torch.float32), "val_labels": val_l.to(torch.float32)},
              os.path.join(args.out, "knn.safetensors"))
    with open(os.path.join(args.out, "knn.json"), "w") as f:
        json.dump({"temperature": TEMPERATURE, "classes": CLASSES, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
