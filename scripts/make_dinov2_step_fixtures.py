#!/usr/bin/env python3
"""Five official DINOv2 training iterations on a tiny ViT, for `--method dinov2`'s replay test.

Usage: python3 -W ignore scripts/make_dinov2_step_fixtures.py --dinov2-repo third_party/dinov2 \
           --out trainer/tests/fixtures/dinov2_step [--separate-head]

Builds `SSLMetaArch` from `ssl_default_config.yaml` (shared DINO/iBOT head, or with
--separate-head `ibot.separate_head` of the ViT-L/g configs, the iBOT head sized as the DINO head; mean centering,
KoLeo 0.1, LayerScale 1e-5, 2 registers, interpolate_offset 0.1) on a ViT/8 32 wide with 2 heads
and 2 blocks, global crops 40 px and two 16 px local crops, batch 3, drop path 0, f32. Each iteration is
train.py's: `apply_optim_scheduler`, `forward_backward` on crops collated by the official
`collate_data_and_cast` (its masks recorded), `clip_grad_norm_(3.0)` per sub-model, AdamW on
`get_params_groups`, then `update_teacher`. Three things of `train.py` need CUDA or FSDP and are
done by their single-process equivalents: `torch.nn.utils.clip_grad_norm_` for FSDP's
`clip_grad_norm_`, the EMA of `update_teacher` over the plain parameter lists, and the teacher
copied from the student as `prepare_for_distributed_training` does. xFormers (CUDA only) is
replaced by a stand-in that does on the CPU what its block-diagonal attention does: per-image
attention over the concatenated token lists. Nothing of the official code is copied.
"""
import argparse
import json
import os
import random
import sys
import types
from functools import partial

import torch
import torch.distributed as dist
from safetensors.torch import save_file


def install_xformers_stand_in():
    """`xformers.ops` as the DINOv2 code uses it: BlockDiagonalMask (from_seqlens,
    from_tensor_list, split by batch groups), memory_efficient_attention with that bias
    (softmax attention inside each block, scale head_dim^-0.5), unbind."""

    class BlockDiagonalMask:
        def __init__(self, seqlens, batch_sizes=None):
            self.seqlens = list(seqlens)
            self._batch_sizes = batch_sizes

        @classmethod
        def from_seqlens(cls, seqlens):
            return cls(seqlens)

        @classmethod
        def from_tensor_list(cls, tensors):
            seqlens = [t.shape[1] for t in tensors for _ in range(t.shape[0])]
            bias = cls(seqlens, [t.shape[0] for t in tensors])
            return bias, torch.cat([t.reshape(1, -1, *t.shape[2:]) for t in tensors], dim=1)

        def split(self, x):
            sizes = self._batch_sizes or [1] * len(self.seqlens)
            out, start, i = [], 0, 0
            for b in sizes:
                n = sum(self.seqlens[i:i + b])
                out.append(x[:, start:start + n].reshape(b, self.seqlens[i], *x.shape[2:]))
                start, i = start + n, i + b
            return out

    def memory_efficient_attention(q, k, v, attn_bias=None):
        # q, k, v: [1, tokens, heads, head_dim]
        scale = q.shape[-1] ** -0.5
        seqlens = attn_bias.seqlens if attn_bias is not None else [q.shape[1]]
        outs, start = [], 0
        for n in seqlens:
            qs, ks, vs = (t[:, start:start + n].transpose(1, 2) for t in (q, k, v))
            a = (qs @ ks.transpose(-2, -1) * scale).softmax(-1)
            outs.append((a @ vs).transpose(1, 2))
            start += n
        return torch.cat(outs, dim=1)

    def unsupported(*_, **__):
        raise NotImplementedError("the stand-in covers drop path 0 only")

    ops = types.ModuleType("xformers.ops")
    ops.fmha = types.SimpleNamespace(BlockDiagonalMask=BlockDiagonalMask)
    ops.memory_efficient_attention = memory_efficient_attention
    ops.unbind = torch.unbind
    ops.scaled_index_add = unsupported
    ops.index_select_cat = unsupported
    sys.modules["xformers"] = types.ModuleType("xformers")
    sys.modules["xformers.ops"] = ops
    sys.modules["xformers.ops.fmha"] = ops.fmha


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dinov2-repo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--separate-head", action="store_true", help="ibot.separate_head: true")
    args = parser.parse_args()
    os.environ.pop("XFORMERS_DISABLED", None)
    install_xformers_stand_in()
    sys.path.insert(0, args.dinov2_repo)
    from omegaconf import OmegaConf  # noqa: E402

    import dinov2.models.vision_transformer as vits  # noqa: E402
    from dinov2.data.collate import collate_data_and_cast  # noqa: E402
    from dinov2.data.masking import MaskingGenerator  # noqa: E402
    from dinov2.layers.attention import MemEffAttention  # noqa: E402
    from dinov2.layers.block import NestedTensorBlock  # noqa: E402
    from dinov2.train.ssl_meta_arch import SSLMetaArch  # noqa: E402
    from dinov2.train.train import apply_optim_scheduler  # noqa: E402

    import dinov2.layers.attention as attention  # noqa: E402
    import dinov2.layers.block as block  # noqa: E402

    assert attention.XFORMERS_AVAILABLE and block.XFORMERS_AVAILABLE, "the xFormers stand-in did not load"

    def vit_fixture(patch_size=16, num_register_tokens=0, **kwargs):
        # 32 wide, 2 heads, 2 blocks: small enough that the fixture stays under a megabyte.
        return vits.DinoVisionTransformer(patch_size=patch_size, embed_dim=32, depth=2, num_heads=2, mlp_ratio=4,
                                          block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention),
                                          num_register_tokens=num_register_tokens, **kwargs)

    vits.vit_fixture = vit_fixture
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29542")
    dist.init_process_group("gloo", rank=0, world_size=1)

    cfg = OmegaConf.load(os.path.join(args.dinov2_repo, "dinov2/configs/ssl_default_config.yaml"))
    global_size, local_size, patch, batch, n_local, prototypes = 40, 16, 8, 3, 2, 64
    cfg.compute_precision.grad_scaler = False
    cfg.student.arch = "vit_fixture"
    cfg.student.patch_size = patch
    cfg.student.drop_path_rate = 0.0
    cfg.student.num_register_tokens = 2
    cfg.crops.global_crops_size = global_size
    cfg.crops.local_crops_size = local_size
    cfg.crops.local_crops_number = n_local
    cfg.dino.head_n_prototypes = prototypes
    cfg.dino.head_hidden_dim = 48
    cfg.dino.head_bottleneck_dim = 16
    cfg.ibot.head_n_prototypes = prototypes
    cfg.ibot.separate_head = args.separate_head
    cfg.ibot.head_hidden_dim = cfg.dino.head_hidden_dim
    cfg.ibot.head_bottleneck_dim = cfg.dino.head_bottleneck_dim

    torch.manual_seed(0)
    random.seed(0)
    model = SSLMetaArch(cfg)
    model.need_to_synchronize_fsdp_streams = False
    with torch.no_grad():
        # Away from the init's symmetric values (zero biases, LayerScale 1e-5, gain 1), so
        # that every parameter's path through the loss matters to the comparison.
        for p in model.student.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for k in model.student.keys():
            model.teacher[k].load_state_dict(model.student[k].state_dict())
    model.train()
    state0 = {f"{k}.{n}": v.detach().clone() for k, m in model.student.items() for n, v in m.state_dict().items()}
    os.makedirs(args.out, exist_ok=True)
    torch.save({"teacher": state0}, os.path.join(args.out, "initial.pth"))

    optimizer = torch.optim.AdamW(model.get_params_groups(), betas=(cfg.optim.adamw_beta1, cfg.optim.adamw_beta2))
    grid = global_size // patch
    generator = MaskingGenerator(input_size=(grid, grid), max_num_patches=0.5 * grid * grid)
    # (lr, wd, momentum, teacher temperature, last-layer lr): the first iteration inside the
    # frozen last-layer epoch, as train.py's schedules give it.
    hyper = [(2e-3, 0.04, 0.99, 0.04, 0.0), (3e-3, 0.05, 0.99, 0.045, 3e-3), (2.5e-3, 0.06, 0.995, 0.05, 2.5e-3),
             (2e-3, 0.07, 0.995, 0.055, 2e-3), (1e-3, 0.08, 0.998, 0.06, 1e-3)]
    tensors, steps = {}, []
    for i, (lr, wd, mom, temp, last_lr) in enumerate(hyper):
        samples = [({"global_crops": [torch.randn(3, global_size, global_size) for _ in range(2)],
                     "local_crops": [torch.randn(3, local_size, local_size) for _ in range(n_local)]}, None)
                   for _ in range(batch)]
        data = collate_data_and_cast(samples, mask_ratio_tuple=tuple(cfg.ibot.mask_ratio_min_max),
                                     mask_probability=cfg.ibot.mask_sample_probability, dtype=torch.float32,
                                     n_tokens=grid * grid, mask_generator=generator)
        assert data["mask_indices_list"].numel() > 0
        tensors[f"step{i}.globals"] = data["collated_global_crops"]
        tensors[f"step{i}.locals"] = data["collated_local_crops"]
        tensors[f"step{i}.masks"] = data["collated_masks"].float()
        tensors[f"step{i}.masks_weight"] = data["masks_weight"].float()
        apply_optim_scheduler(optimizer, lr, wd, last_lr)
        optimizer.zero_grad(set_to_none=True)
        # forward_backward moves the batch with .cuda(non_blocking=True): the identity here.
        real_cuda = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t
        try:
            loss_dict = model.forward_backward(data, teacher_temp=temp)
        finally:
            torch.Tensor.cuda = real_cuda
        norms = {k: float(torch.nn.utils.clip_grad_norm_(v.parameters(), cfg.optim.clip_grad))
                 for k, v in model.student.items()}
        optimizer.step()
        with torch.no_grad():
            for k in model.student.keys():
                for t, s in zip(model.teacher[k].parameters(), model.student[k].parameters()):
                    t.mul_(mom).add_(s.detach(), alpha=1 - mom)
        # The terms as dinoscope records them: DINO's pair average (local + global), iBOT's
        # forward_masked and KoLeo's sum over the two global crops, before their weights
        # (loss_dict shows iBOT and KoLeo halved, KoLeo weighted).
        terms = {
            "dino_loss": float(loss_dict["dino_local_crops_loss"] + loss_dict["dino_global_crops_loss"]),
            "ibot_loss": float(loss_dict["ibot_loss"] * 2),
            "koleo_loss": float(loss_dict["koleo_loss"] * 2 / cfg.dino.koleo_loss_weight),
        }
        steps.append({"lr": lr, "wd": wd, "momentum": mom, "teacher_temp": temp, "last_layer_lr": last_lr,
                      "masked": int(data["mask_indices_list"].numel()), "upperbound": int(data["upperbound"]),
                      "grad_norms": norms, **terms})
    for net, d in (("student", model.student), ("teacher", model.teacher)):
        for k, m in d.items():
            for n, v in m.state_dict().items():
                tensors[f"final.{net}.{k}.{n}"] = v.detach().clone()
    # The last centre updates are pending until the next targets (apply_center_update).
    model.dino_loss.apply_center_update()
    model.ibot_patch_loss.apply_center_update()
    tensors["final.dino_center"] = model.dino_loss.center.detach().clone()
    tensors["final.ibot_center"] = model.ibot_patch_loss.center.detach().clone().reshape(1, -1)
    record = {"steps": steps, "batch": batch, "global_size": global_size, "local_size": local_size,
              "local_crops": n_local, "patch": patch, "prototypes": prototypes, "registers": 2,
              "clip_grad": cfg.optim.clip_grad, "layer_decay": cfg.optim.layerwise_decay,
              "patch_embed_lr_mult": cfg.optim.patch_embed_lr_mult, "koleo_weight": cfg.dino.koleo_loss_weight,
              "separate_head": bool(args.separate_head),
              "torch": torch.__version__}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(args.out, "steps.safetensors"))
    with open(os.path.join(args.out, "steps.json"), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(tensors)} tensors, {len(steps)} iterations to {args.out}")


if __name__ == "__main__":
    main()
