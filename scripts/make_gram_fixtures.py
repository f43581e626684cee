#!/usr/bin/env python3
"""The two resamplings of DINOv3's Gram anchoring and its augmentation's blur, for
`trainer/tests/objectives.rs` and `trainer/src/data/augment.rs`.

Usage: python3 scripts/make_gram_fixtures.py --out trainer/tests/fixtures/objectives/gram_resize.safetensors

- `teacher_grid.*`: the Gram teacher's patch features resized to the student's grid as
  `SSLMetaArch.get_gram_teacher_output` does (`F.interpolate(mode="bicubic",
  align_corners=False, antialias=False)` on `[B, D, N, N]`), from 8×8 and 6×6 to 4×4.
- `crop.*`: a normalised global view resized as `DataAugmentationDINO` resizes the Gram
  teacher's and the student's crops (`v2.Resize(size, BICUBIC)` on a tensor, antialiased),
  20 → 12 and 20 → 32.
- `blur9.<h>x<w>.*`: DINOv3's `GaussianBlur` (`data/transforms.py`: `v2.GaussianBlur(kernel_size=9)`)
  on an RGB image in [0, 1] at σ 0.1, 0.8 and 2.0 (`in`, then `s0.1`, ...), 11×13 and 6×7 (a crop
  narrower than the kernel's reach on one side).
"""
import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision.transforms import v2


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    out = {}
    for big in (8, 6):
        x = torch.randn(2, big * big, 5)
        grid = x.transpose(-2, -1).unflatten(-1, (big, big))
        y = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False, antialias=False)
        out[f"teacher_grid.{big}.in"] = x
        out[f"teacher_grid.{big}.out"] = y.flatten(-2, -1).transpose(-2, -1).contiguous()
    crop = torch.randn(3, 20, 20)
    out["crop.in"] = crop
    for size in (12, 32):
        out[f"crop.{size}"] = v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC)(crop).contiguous()
    for h, w in ((11, 13), (6, 7)):
        img = torch.rand(3, h, w)
        out[f"blur9.{h}x{w}.in"] = img
        for sigma in (0.1, 0.8, 2.0):
            blurred = v2.functional.gaussian_blur(img, kernel_size=[9, 9], sigma=[sigma, sigma])
            out[f"blur9.{h}x{w}.s{sigma}"] = blurred.contiguous()
    save_file(out, args.out)
    print(f"wrote {len(out)} tensors to {args.out}")


if __name__ == "__main__":
    main()
