#!/usr/bin/env python3
"""Produce the model parity fixtures from the official facebookresearch/dino code.

Usage: python3 scripts/make_parity_fixtures.py --dino-repo <path to a checkout of
facebookresearch/dino> --out model/tests/fixtures

The official code is imported from the given path (it is never copied into this
repository). The script builds a small ViT + DINO head with the official classes, perturbs
the random initialisation so that attention is far from uniform, saves it the way
main_dino.py saves checkpoints (teacher/student dicts, `module.`/`backbone.` prefixes,
argparse args), also writes the same backbone as Hugging Face `ViTModel` safetensors, and
records the official outputs on fixed inputs, including a non-square size that exercises
the position-embedding interpolation.
"""
import argparse
import sys
from functools import partial

import torch
import torch.nn as nn
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dino-repo", required=True, help="path of the official DINO code")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args()
    sys.path.insert(0, args.dino_repo)
    import vision_transformer as vits  # noqa: E402  (official code, from --dino-repo)

    torch.manual_seed(0)
    patch, img_size, depth, out_dim, dim = 16, 64, 2, 256, 128

    def build(eps):
        backbone = vits.VisionTransformer(
            img_size=[img_size], patch_size=patch, embed_dim=dim, depth=depth, num_heads=dim // 64,
            mlp_ratio=2, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=eps))
        head = vits.DINOHead(dim, out_dim, hidden_dim=128, bottleneck_dim=64, nlayers=3)
        return backbone, head

    backbone, head = build(1e-6)
    with torch.no_grad():
        for name, p in list(backbone.named_parameters()) + list(head.named_parameters()):
            if name.endswith("weight_g"):
                continue
            p.add_(torch.randn_like(p) * (0.3 if "qkv" in name else 0.05))
    backbone.eval()
    head.eval()

    teacher = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    teacher.update({f"head.{k}": v for k, v in head.state_dict().items()})
    # The student shares the teacher's tensors, so torch.save stores each storage once and
    # the file stays small; it also exercises shared storages in our reader.
    student = {f"module.{k}": v for k, v in teacher.items()}
    train_args = argparse.Namespace(arch="vit_tiny", patch_size=patch, out_dim=out_dim, lr=0.0005)
    torch.save({"student": student, "teacher": teacher, "epoch": 3, "args": train_args},
               f"{args.out}/official_checkpoint.pth")
    torch.save(backbone.state_dict(), f"{args.out}/official_backbone.pth")

    # The same backbone in the Hugging Face ViTModel layout.
    sd = backbone.state_dict()
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
        "pooler.dense.weight": torch.zeros(dim, dim),
        "pooler.dense.bias": torch.zeros(dim),
    }
    for i in range(depth):
        s, d = f"blocks.{i}", f"encoder.layer.{i}"
        for t in ("weight", "bias"):
            q, k, v = sd[f"{s}.attn.qkv.{t}"].chunk(3, dim=0)
            hf[f"{d}.attention.attention.query.{t}"] = q.contiguous()
            hf[f"{d}.attention.attention.key.{t}"] = k.contiguous()
            hf[f"{d}.attention.attention.value.{t}"] = v.contiguous()
            hf[f"{d}.attention.output.dense.{t}"] = sd[f"{s}.attn.proj.{t}"]
            hf[f"{d}.layernorm_before.{t}"] = sd[f"{s}.norm1.{t}"]
            hf[f"{d}.layernorm_after.{t}"] = sd[f"{s}.norm2.{t}"]
            hf[f"{d}.intermediate.dense.{t}"] = sd[f"{s}.mlp.fc1.{t}"]
            hf[f"{d}.output.dense.{t}"] = sd[f"{s}.mlp.fc2.{t}"]
    save_file({k: v.contiguous() for k, v in hf.items()}, f"{args.out}/hf_vit.safetensors")

    # The official network with the Hugging Face epsilon, for the HF import's expected outputs.
    torch.manual_seed(1)
    hf_backbone, _ = build(1e-12)
    hf_backbone.load_state_dict(sd)
    hf_backbone.eval()

    torch.manual_seed(2)
    outputs = {}
    inputs = {"square": torch.randn(2, 3, 64, 64), "interp": torch.randn(1, 3, 96, 80)}
    with torch.no_grad():
        for name, x in inputs.items():
            outputs[f"{name}.input"] = x
            cls = backbone(x)
            outputs[f"{name}.cls"] = cls
            outputs[f"{name}.last_attention"] = backbone.get_last_selfattention(x)
            outputs[f"{name}.head"] = head(cls)
            outputs[f"{name}.hf_cls"] = hf_backbone(x)
    save_file({k: v.contiguous() for k, v in outputs.items()}, f"{args.out}/official_outputs.safetensors",
              metadata={"torch": torch.__version__, "producer": "scripts/make_parity_fixtures.py"})
    print("wrote fixtures to", args.out, "with torch", torch.__version__)


if __name__ == "__main__":
    main()
