#!/usr/bin/env python3
"""Produce the DINOv2 / DINOv3 parity fixtures from the official code.

Usage:
  XFORMERS_DISABLED=1 python3 scripts/make_family_fixtures.py \
      --dinov2-repo third_party/dinov2 --dinov3-repo third_party/dinov3 \
      --out model/tests/fixtures/families

The official code is imported from the given checkouts (never copied into this
repository). For each family the script builds a small backbone with the official classes
and the options of the official hub releases, perturbs its initialisation so that
attention, LayerScale and the register tokens are far from trivial, and saves:

  <case>.pth               the backbone state dict, as the hub releases store it
  <case>_hf/model.safetensors + config.json
                           the same weights under the Hugging Face key names, written
                           with the mapping of the official conversion scripts
  <case>.outputs.safetensors
                           the official outputs on fixed inputs (native size and a
                           non-square size): normed CLS, register and patch tokens, and
                           the softmax attention of a middle block and of the last block
  <case>.masked.safetensors
                           (v2reg, v3) normed tokens with random patches masked

plus an official DINOv2 training checkpoint (chunked blocks, `{"teacher": ...}` with a DINO
head) and a few deliberately broken files for the bad-input tests.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

DIM, HEADS, DEPTH = 32, 2, 3
MIDDLE = 1


def perturb(model, scale=0.05):
    """Moves every parameter away from its (often trivial) initial value."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight_g"):
                continue
            if "gamma" in name:
                # LayerScale: O(1) and varied, or the blocks would barely matter.
                p.copy_(0.5 + torch.rand_like(p))
            elif "qkv" in name:
                p.add_(torch.randn_like(p) * 0.3)
            elif "token" in name:
                p.add_(torch.randn_like(p) * 0.5)
            else:
                p.add_(torch.randn_like(p) * scale)


def attention_probs(attn_module, qkv, rope=None):
    """softmax(q kᵀ · scale) from an official attention module's own qkv output.

    The official modules never return the probabilities (they call the fused kernel), so this
    recomputes them from the module's projection and, for DINOv3, its own RoPE code.
    """
    B, N, C3 = qkv.shape
    h, C = attn_module.num_heads, C3 // 3
    qkv = qkv.reshape(B, N, 3, h, C // h)
    q, k, _ = torch.unbind(qkv, 2)
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    if rope is not None:
        q, k = attn_module.apply_rope(q, k, rope)
    scale = (C // h) ** -0.5
    return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1)


def record(model, x, family, registers):
    """Official outputs of one forward: normed tokens and two blocks' attention."""
    captured = {}
    blocks = list(model.blocks)
    if family == "v2" and len(blocks) and isinstance(blocks[0], torch.nn.ModuleList):
        blocks = [b for chunk in blocks for b in chunk if not isinstance(b, torch.nn.Identity)]
    undo = []
    for i in (MIDDLE, DEPTH - 1):
        attn = blocks[i].attn
        if family == "v3":
            # DINOv3 blocks call attn.forward_list -> compute_attention(qkv, rope=...).
            original = attn.compute_attention

            def wrapped(qkv, attn_bias=None, rope=None, i=i, attn=attn, original=original):
                captured[i] = attention_probs(attn, qkv, rope)
                return original(qkv, attn_bias=attn_bias, rope=rope)

            attn.compute_attention = wrapped
            undo.append(lambda attn=attn: delattr(attn, "compute_attention"))
        else:
            def hook(module, args, i=i):
                captured[i] = attention_probs(module, module.qkv(args[0]))

            h = attn.register_forward_pre_hook(hook)
            undo.append(h.remove)
    out = model.forward_features(x)
    for u in undo:
        u()
    res = {
        "cls": out["x_norm_clstoken"],
        "patch": out["x_norm_patchtokens"],
        f"attn{MIDDLE}": captured[MIDDLE],
        f"attn{DEPTH - 1}": captured[DEPTH - 1],
    }
    key = "x_norm_regtokens" if family == "v2" else "x_storage_tokens"
    if registers:
        res["reg"] = out[key]
    return res


def hf_v2(sd, registers, swiglu, img_size, patch):
    """Official DINOv2 keys -> Hugging Face Dinov2Model / Dinov2WithRegistersModel keys."""
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if registers:
        hf["embeddings.register_tokens"] = sd["register_tokens"]
    for i in range(DEPTH):
        s, d = f"blocks.{i}", f"encoder.layer.{i}"
        for t in ("weight", "bias"):
            q, k, v = sd[f"{s}.attn.qkv.{t}"].chunk(3, dim=0)
            hf[f"{d}.attention.attention.query.{t}"] = q
            hf[f"{d}.attention.attention.key.{t}"] = k
            hf[f"{d}.attention.attention.value.{t}"] = v
            hf[f"{d}.attention.output.dense.{t}"] = sd[f"{s}.attn.proj.{t}"]
            hf[f"{d}.norm1.{t}"] = sd[f"{s}.norm1.{t}"]
            hf[f"{d}.norm2.{t}"] = sd[f"{s}.norm2.{t}"]
            if swiglu:
                hf[f"{d}.mlp.weights_in.{t}"] = sd[f"{s}.mlp.w12.{t}"]
                hf[f"{d}.mlp.weights_out.{t}"] = sd[f"{s}.mlp.w3.{t}"]
            else:
                hf[f"{d}.mlp.fc1.{t}"] = sd[f"{s}.mlp.fc1.{t}"]
                hf[f"{d}.mlp.fc2.{t}"] = sd[f"{s}.mlp.fc2.{t}"]
        hf[f"{d}.layer_scale1.lambda1"] = sd[f"{s}.ls1.gamma"]
        hf[f"{d}.layer_scale2.lambda1"] = sd[f"{s}.ls2.gamma"]
    config = {
        "architectures": ["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        "model_type": "dinov2_with_registers" if registers else "dinov2",
        "hidden_size": DIM,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": HEADS,
        "mlp_ratio": 2,
        "layer_norm_eps": 1e-6,
        "image_size": img_size,
        "patch_size": patch,
        "qkv_bias": True,
        "layerscale_value": 1.0,
        "use_swiglu_ffn": swiglu,
        "hidden_act": "gelu",
    }
    if registers:
        config["num_register_tokens"] = registers
    return hf, config


def hf_v3(sd, swiglu, hidden, img_size, patch, registers):
    """Official DINOv3 keys -> Hugging Face DINOv3ViTModel keys (convert_dinov3_vit_to_hf.py)."""
    hf = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"].reshape(1, 1, DIM),
        "embeddings.register_tokens": sd["storage_tokens"],
        "embeddings.patch_embeddings.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.bias": sd["patch_embed.proj.bias"],
        "norm.weight": sd["norm.weight"],
        "norm.bias": sd["norm.bias"],
    }
    for i in range(DEPTH):
        s, d = f"blocks.{i}", f"layer.{i}"
        q, k, v = sd[f"{s}.attn.qkv.weight"].chunk(3, dim=0)
        hf[f"{d}.attention.q_proj.weight"] = q
        hf[f"{d}.attention.k_proj.weight"] = k
        hf[f"{d}.attention.v_proj.weight"] = v
        qb, _, vb = sd[f"{s}.attn.qkv.bias"].chunk(3, dim=0)
        hf[f"{d}.attention.q_proj.bias"] = qb
        hf[f"{d}.attention.v_proj.bias"] = vb
        for t in ("weight", "bias"):
            hf[f"{d}.attention.o_proj.{t}"] = sd[f"{s}.attn.proj.{t}"]
            hf[f"{d}.norm1.{t}"] = sd[f"{s}.norm1.{t}"]
            hf[f"{d}.norm2.{t}"] = sd[f"{s}.norm2.{t}"]
            if swiglu:
                hf[f"{d}.mlp.gate_proj.{t}"] = sd[f"{s}.mlp.w1.{t}"]
                hf[f"{d}.mlp.up_proj.{t}"] = sd[f"{s}.mlp.w2.{t}"]
                hf[f"{d}.mlp.down_proj.{t}"] = sd[f"{s}.mlp.w3.{t}"]
            else:
                hf[f"{d}.mlp.up_proj.{t}"] = sd[f"{s}.mlp.fc1.{t}"]
                hf[f"{d}.mlp.down_proj.{t}"] = sd[f"{s}.mlp.fc2.{t}"]
        hf[f"{d}.layer_scale1.lambda1"] = sd[f"{s}.ls1.gamma"]
        hf[f"{d}.layer_scale2.lambda1"] = sd[f"{s}.ls2.gamma"]
    config = {
        "architectures": ["DINOv3ViTModel"],
        "model_type": "dinov3_vit",
        "hidden_size": DIM,
        "num_hidden_layers": DEPTH,
        "num_attention_heads": HEADS,
        "intermediate_size": hidden,
        "layer_norm_eps": 1e-5,
        "rope_theta": 100.0,
        "image_size": img_size,
        "patch_size": patch,
        "num_register_tokens": registers,
        "use_gated_mlp": swiglu,
        "query_bias": True,
        "key_bias": False,
        "value_bias": True,
        "proj_bias": True,
        "mlp_bias": True,
        "layerscale_value": 1.0,
        "hidden_act": "gelu" if not swiglu else "silu",
    }
    return hf, config


def save_hf(out, name, hf, config):
    folder = os.path.join(out, f"{name}_hf")
    os.makedirs(folder, exist_ok=True)
    save_file({k: v.contiguous() for k, v in hf.items()}, os.path.join(folder, "model.safetensors"))
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def save_outputs(out, name, model, family, registers, sizes, gen):
    outputs = {}
    with torch.no_grad():
        for case, (n, h, w) in sizes.items():
            x = torch.randn(n, 3, h, w, generator=gen)
            outputs[f"{case}.input"] = x
            for k, v in record(model, x, family, registers).items():
                outputs[f"{case}.{k}"] = v
    save_file({k: v.contiguous() for k, v in outputs.items()}, os.path.join(out, f"{name}.outputs.safetensors"),
              metadata={"torch": torch.__version__, "producer": "scripts/make_family_fixtures.py"})


def save_masked(out, name, model, size):
    """Official outputs with masked patches (`forward_features(x, masks)`): iBOT's student input."""
    gen = torch.Generator().manual_seed(11)
    n, h, w = size
    patches = (h // model.patch_size) * (w // model.patch_size)
    x = torch.randn(n, 3, h, w, generator=gen)
    masks = torch.rand(n, patches, generator=gen) < 0.4
    with torch.no_grad():
        res = model.forward_features(x, masks)
    tensors = {"input": x, "masks": masks.float(), "cls": res["x_norm_clstoken"], "patch": res["x_norm_patchtokens"]}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, f"{name}.masked.safetensors"),
              metadata={"torch": torch.__version__, "producer": "scripts/make_family_fixtures.py"})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dinov2-repo", required=True)
    parser.add_argument("--dinov3-repo", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    os.environ.setdefault("XFORMERS_DISABLED", "1")
    sys.path.insert(0, args.dinov2_repo)
    sys.path.insert(0, args.dinov3_repo)
    from dinov2.models.vision_transformer import DinoVisionTransformer as V2
    from dinov2.layers.dino_head import DINOHead as V2Head
    from dinov3.models.vision_transformer import DinoVisionTransformer as V3

    gen = torch.Generator().manual_seed(7)

    # DINOv2: patch 14, 4x4 grid; the hub options of each release kind.
    v2_sizes = {"square": (2, 56, 56), "wide": (1, 42, 70)}
    v2_cases = {
        "v2": dict(num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1, ffn_layer="mlp"),
        "v2reg": dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0, ffn_layer="mlp"),
        "v2swiglu": dict(num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1,
                         ffn_layer="swiglufused"),
    }
    for seed, (name, opts) in enumerate(v2_cases.items()):
        torch.manual_seed(100 + seed)
        model = V2(img_size=56, patch_size=14, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2,
                   init_values=1e-5, block_chunks=0, **opts)
        perturb(model)
        model.eval()
        sd = model.state_dict()
        torch.save(sd, os.path.join(args.out, f"{name}.pth"))
        hf, config = hf_v2(sd, opts["num_register_tokens"], opts["ffn_layer"] != "mlp", 56, 14)
        save_hf(args.out, name, hf, config)
        save_outputs(args.out, name, model, "v2", opts["num_register_tokens"], v2_sizes, gen)
        if name == "v2reg":
            save_masked(args.out, name, model, v2_sizes["square"])

        if name == "v2reg":
            # The official training layout: block_chunks > 0 gives `blocks.{chunk}.{i}` keys,
            # and train.py saves the teacher as {"teacher": backbone./dino_head. state}.
            chunked = V2(img_size=56, patch_size=14, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2,
                         init_values=1e-5, block_chunks=3, **opts)
            renamed = {}
            for k, v in sd.items():
                if k.startswith("blocks."):
                    i = int(k.split(".")[1])
                    k = f"blocks.{i // (DEPTH // 3)}.{k[len('blocks.'):]}"
                renamed[k] = v
            chunked.load_state_dict(renamed, strict=True)
            head = V2Head(DIM, 96, nlayers=3, hidden_dim=48, bottleneck_dim=32)
            perturb(head)
            teacher = {f"backbone.{k}": v for k, v in chunked.state_dict().items()}
            teacher.update({f"dino_head.{k}": v for k, v in head.state_dict().items()})
            torch.save({"teacher": teacher}, os.path.join(args.out, "v2reg_teacher_checkpoint.pth"))
            with torch.no_grad():
                cls = record(chunked.eval(), torch.zeros(1, 3, 56, 56), "v2", 4)["cls"]
                save_file({"zeros.cls": cls.contiguous(), "zeros.head": head(cls).contiguous()},
                          os.path.join(args.out, "v2reg_teacher_checkpoint.outputs.safetensors"))

    # DINOv3: patch 16, no position embedding, RoPE, 4 storage tokens, K-bias mask, eps 1e-5.
    v3_sizes = {"square": (2, 64, 64), "wide": (1, 48, 80)}
    v3_cases = {"v3": ("mlp", 2.0), "v3swiglu": ("swiglu", 3.0)}
    for seed, (name, (ffn, ratio)) in enumerate(v3_cases.items()):
        torch.manual_seed(200 + seed)
        model = V3(img_size=64, patch_size=16, pos_embed_rope_base=100, pos_embed_rope_normalize_coords="separate",
                   pos_embed_rope_rescale_coords=2, pos_embed_rope_dtype="fp32", embed_dim=DIM, depth=DEPTH,
                   num_heads=HEADS, ffn_ratio=ratio, qkv_bias=True, layerscale_init=1e-5, norm_layer="layernormbf16",
                   ffn_layer=ffn, n_storage_tokens=4, mask_k_bias=True)
        model.init_weights()
        perturb(model)
        model.eval()
        sd = model.state_dict()
        torch.save(sd, os.path.join(args.out, f"{name}.pth"))
        hidden = sd["blocks.0.mlp.w1.weight"].shape[0] if ffn != "mlp" else sd["blocks.0.mlp.fc1.weight"].shape[0]
        hf, config = hf_v3(sd, ffn != "mlp", hidden, 64, 16, 4)
        save_hf(args.out, name, hf, config)
        save_outputs(args.out, name, model, "v3", 4, v3_sizes, gen)
        if name == "v3":
            save_masked(args.out, name, model, v3_sizes["square"])

        if name == "v3":
            bad = dict(sd)
            bad["rope_embed.periods"] = sd["rope_embed.periods"][:-1].clone()
            torch.save(bad, os.path.join(args.out, "bad_v3_short_periods.pth"))

    sd = torch.load(os.path.join(args.out, "v2reg.pth"))
    bad = {k: v for k, v in sd.items() if k != "blocks.1.ls2.gamma"}
    torch.save(bad, os.path.join(args.out, "bad_v2_missing_layerscale.pth"))
    bad = dict(sd)
    bad["blocks.0.attn.qkv.lora_a"] = torch.zeros(4, DIM)
    torch.save(bad, os.path.join(args.out, "bad_v2_unknown_tensor.pth"))
    print("wrote fixtures to", args.out, "with torch", torch.__version__)


if __name__ == "__main__":
    main()
