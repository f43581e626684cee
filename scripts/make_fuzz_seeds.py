"""Writes the small seed corpora of the fuzz targets into fuzz/seeds/<target>/.

Needs torch, safetensors and pillow. The seeds are tiny valid files of every layout the
readers accept, so the fuzzer starts from deep inside the formats.
"""
import argparse
import io
import struct
import json
import os
import zipfile

import torch
from PIL import Image
from safetensors.torch import save as st_save

ap = argparse.ArgumentParser()
ap.add_argument("out", help="fuzz/seeds")
out = ap.parse_args().out


def write(target, name, data):
    os.makedirs(os.path.join(out, target), exist_ok=True)
    with open(os.path.join(out, target, name), "wb") as f:
        f.write(data)


def tiny_vit(prefix, dim=64, depth=1, patch=4):
    g = torch.Generator().manual_seed(0)
    t = lambda *s: torch.randn(*s, generator=g)
    sd = {
        prefix + "cls_token": t(1, 1, dim),
        prefix + "pos_embed": t(1, 5, dim),
        prefix + "patch_embed.proj.weight": t(dim, 3, patch, patch),
        prefix + "patch_embed.proj.bias": t(dim),
        prefix + "norm.weight": t(dim),
        prefix + "norm.bias": t(dim),
    }
    for b in range(depth):
        p = f"{prefix}blocks.{b}."
        for n, s in [("norm1.weight", (dim,)), ("norm1.bias", (dim,)), ("attn.qkv.weight", (3 * dim, dim)),
                     ("attn.qkv.bias", (3 * dim,)), ("attn.proj.weight", (dim, dim)), ("attn.proj.bias", (dim,)),
                     ("norm2.weight", (dim,)), ("norm2.bias", (dim,)), ("mlp.fc1.weight", (dim, dim)),
                     ("mlp.fc1.bias", (dim,)), ("mlp.fc2.weight", (dim, dim)), ("mlp.fc2.bias", (dim,))]:
            sd[p + n] = t(*s)
    return sd


def saved(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


backbone = saved(tiny_vit(""))
write("pth", "backbone.pth", backbone)
ckpt = saved({"teacher": tiny_vit("backbone."), "student": tiny_vit("module.backbone."), "epoch": 3,
              "args": argparse.Namespace(arch="vit_tiny", patch_size=4)})
write("pth", "checkpoint.pth", ckpt)
write("pth", "half.pth", saved({k: v.half() for k, v in tiny_vit("").items()}))
for name, data in [("backbone", backbone), ("checkpoint", ckpt)]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
        write("pickle", name + ".pkl", z.read(pkl))
write("pickle", "plain.pkl", __import__("pickle").dumps({"a": [1, 2.5, "s", (None, True, b"x")], "b": {"c": 3}}, protocol=2))

def hf_layout(sd):
    """The same tiny ViT under Hugging Face ViTModel names (q, k, v split)."""
    out = {"embeddings.cls_token": sd["cls_token"], "embeddings.position_embeddings": sd["pos_embed"]}
    for s in ["weight", "bias"]:
        out[f"embeddings.patch_embeddings.projection.{s}"] = sd[f"patch_embed.proj.{s}"]
        out[f"layernorm.{s}"] = sd[f"norm.{s}"]
        b, l = "blocks.0.", "encoder.layer.0."
        out[f"{l}layernorm_before.{s}"] = sd[f"{b}norm1.{s}"]
        out[f"{l}layernorm_after.{s}"] = sd[f"{b}norm2.{s}"]
        out[f"{l}attention.output.dense.{s}"] = sd[f"{b}attn.proj.{s}"]
        out[f"{l}intermediate.dense.{s}"] = sd[f"{b}mlp.fc1.{s}"]
        out[f"{l}output.dense.{s}"] = sd[f"{b}mlp.fc2.{s}"]
        for q, part in zip(["query", "key", "value"], sd[f"{b}attn.qkv.{s}"].chunk(3)):
            out[f"{l}attention.attention.{q}.{s}"] = part.contiguous()
    return out


write("hf_safetensors", "hf.safetensors", st_save(hf_layout(tiny_vit(""))))
write("hf_safetensors", "timm.safetensors", st_save(tiny_vit("")))
cfg = {"vit": {"arch": "vit_tiny", "patch_size": 4, "img_size": 8, "embed_dim": 64, "depth": 1,
               "num_heads": 1, "mlp_ratio": 1.0, "qkv_bias": True, "layer_norm_eps": 1e-6,
               "drop_path_rate": 0.0}, "head": None}
ours = st_save(tiny_vit(""), metadata={"format": "pt", "dino.kind": "model", "dino.config": json.dumps(cfg)})
write("checkpoint", "tiny.safetensors", ours)
write("hf_safetensors", "ours.safetensors", ours)

img = Image.new("RGB", (9, 7), (200, 30, 90))
for fmt, ext, kw in [("PNG", "png", {}), ("JPEG", "jpg", {}), ("WEBP", "webp", {"lossless": True}), ("BMP", "bmp", {}), ("GIF", "gif", {}), ("TIFF", "tiff", {})]:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    write("image", "rgb." + ext, buf.getvalue())
for mode in ["L", "LA", "RGBA", "I;16"]:
    buf = io.BytesIO()
    Image.new(mode, (5, 6)).save(buf, "PNG")
    write("image", f"{mode.replace(';', '')}.png", buf.getvalue())

# DINOv2 / DINOv3 seeds are the family parity fixtures (scripts/make_family_fixtures.py):
# the hf_with_config target reads a u16 LE length, config.json, then the weights.
fam = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "model", "tests", "fixtures", "families")
for case in ["v2reg", "v3swiglu"]:
    with open(os.path.join(fam, f"{case}_hf", "config.json"), "rb") as f:
        cfg = f.read()
    with open(os.path.join(fam, f"{case}_hf", "model.safetensors"), "rb") as f:
        weights = f.read()
    write("hf_with_config", f"{case}.bin", struct.pack("<H", len(cfg)) + cfg + weights)
with open(os.path.join(fam, "v3.pth"), "rb") as f:
    write("pth", "dinov3.pth", f.read())
