#!/usr/bin/env python3
"""Produce the training parity fixtures from the official facebookresearch/dino code.

Usage: python3 scripts/make_train_fixtures.py --dino-repo <path to the official code> --out trainer/tests/fixtures

Runs the body of the official `train_one_epoch` (main_dino.py) for a few iterations on a
small ViT + DINO head with random crops: DINOLoss (centring, teacher-temperature warm-up),
utils.get_params_groups + torch.optim.AdamW, utils.clip_gradients,
utils.cancel_gradients_last_layer and the EMA teacher, with the schedules of
utils.cosine_scheduler. It records the initial weights (as an official checkpoint), every
step's crops, loss, schedule values and centre, the final student and teacher, and a few
full-length schedules. Then the same 5 iterations again from the same weights and crops with
the two other optimisers of main_dino.py (`--optimizer sgd`: torch.optim.SGD with momentum
0.9; `--optimizer lars`: utils.LARS), into train_optimizers.safetensors / .json. Nothing of
the official code is copied; it is imported from --dino-repo.
"""
import argparse
import json
import sys
from functools import partial

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import save_file


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dino-repo", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    sys.path.insert(0, args.dino_repo)
    import utils  # noqa: E402
    import vision_transformer as vits  # noqa: E402
    from main_dino import DINOLoss  # noqa: E402

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:29533", rank=0, world_size=1)
    torch.manual_seed(0)
    batch, global_size, local_size, n_local, out_dim = 4, 32, 16, 2, 64
    epochs, iters_per_epoch, steps = 3, 2, 5
    base_lr, clip_grad, freeze_last_layer = 0.2, 0.5, 1

    def network():
        backbone = vits.VisionTransformer(
            img_size=[global_size], patch_size=8, embed_dim=64, depth=2, num_heads=1, mlp_ratio=2,
            qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
        head = vits.DINOHead(64, out_dim, hidden_dim=64, bottleneck_dim=32, norm_last_layer=True)
        return utils.MultiCropWrapper(backbone, head)

    student, teacher = network(), network()
    with torch.no_grad():
        for name, p in student.named_parameters():
            if not name.endswith("weight_g"):
                p.add_(torch.randn_like(p) * 0.05)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    torch.save({"student": {f"module.{k}": v.clone() for k, v in student.state_dict().items()},
                "teacher": teacher.state_dict(), "epoch": 0},
               f"{args.out}/train_initial.pth")

    initial = {k: v.clone() for k, v in student.state_dict().items()}
    ncrops = 2 + n_local
    dino_loss = DINOLoss(out_dim, ncrops, 0.04, 0.07, 2, epochs)
    params_groups = utils.get_params_groups(student)
    optimizer = torch.optim.AdamW(params_groups)
    lr_schedule = utils.cosine_scheduler(base_lr * batch / 256., 1e-6, epochs, iters_per_epoch, warmup_epochs=1)
    wd_schedule = utils.cosine_scheduler(0.04, 0.4, epochs, iters_per_epoch)
    momentum_schedule = utils.cosine_scheduler(0.9, 1, epochs, iters_per_epoch)

    def one_step(student, teacher, dino_loss, optimizer, it, lr, images):
        """The body of train_one_epoch for iteration `it`; returns the loss."""
        epoch = it // iters_per_epoch
        for i, param_group in enumerate(optimizer.param_groups):
            param_group["lr"] = lr
            if i == 0:
                param_group["weight_decay"] = wd_schedule[it]
        teacher_output = teacher(images[:2])
        student_output = student(images)
        loss = dino_loss(student_output, teacher_output, epoch)
        optimizer.zero_grad()
        loss.backward()
        utils.clip_gradients(student, clip_grad)
        utils.cancel_gradients_last_layer(epoch, student, freeze_last_layer)
        optimizer.step()
        with torch.no_grad():
            m = momentum_schedule[it]
            for param_q, param_k in zip(student.parameters(), teacher.parameters()):
                param_k.data.mul_(m).add_((1 - m) * param_q.detach().data)
        return loss

    tensors, record = {}, {"steps": []}
    crops = []
    for it in range(steps):
        epoch = it // iters_per_epoch
        images = [torch.randn(batch, 3, global_size, global_size) for _ in range(2)]
        images += [torch.randn(batch, 3, local_size, local_size) for _ in range(n_local)]
        crops.append(images)
        tensors[f"step{it}.globals"] = torch.cat(images[:2])
        tensors[f"step{it}.locals"] = torch.cat(images[2:])
        loss = one_step(student, teacher, dino_loss, optimizer, it, lr_schedule[it], images)
        tensors[f"step{it}.center"] = dino_loss.center.clone()
        record["steps"].append({
            "loss": loss.item(), "lr": float(lr_schedule[it]), "wd": float(wd_schedule[it]),
            "momentum": float(momentum_schedule[it]), "teacher_temp": float(dino_loss.teacher_temp_schedule[epoch]),
            "freeze_last_layer": epoch < freeze_last_layer,
        })
    for k, v in student.state_dict().items():
        tensors[f"final.student.{k}"] = v
    for k, v in teacher.state_dict().items():
        tensors[f"final.teacher.{k}"] = v
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{args.out}/train_steps.safetensors")

    # Full-length schedules of a typical run, and the official parameter groups.
    record["schedules"] = {
        "lr": utils.cosine_scheduler(0.0005 * 64 / 256., 1e-6, 30, 7, warmup_epochs=10).tolist(),
        "wd": utils.cosine_scheduler(0.04, 0.4, 30, 7).tolist(),
        "momentum": utils.cosine_scheduler(0.996, 1, 30, 7).tolist(),
        "teacher_temp": DINOLoss(8, 10, 0.04, 0.07, 30, 100).teacher_temp_schedule.tolist(),
    }
    regularized = {id(p) for p in params_groups[0]["params"]}
    record["regularized"] = sorted(n for n, p in student.named_parameters() if id(p) in regularized)
    record["not_regularized"] = sorted(n for n, p in student.named_parameters()
                                       if p.requires_grad and id(p) not in regularized)
    record["config"] = {"batch": batch, "global_size": global_size, "local_size": local_size, "n_local": n_local,
                        "out_dim": out_dim, "clip_grad": clip_grad, "torch": torch.__version__}
    with open(f"{args.out}/train_steps.json", "w") as f:
        json.dump(record, f, indent=1)

    # The other two optimisers of main_dino.py on the same weights and crops. Their learning
    # rates are scaled up (SGD ×10, LARS ×1000: its trust ratio eta·‖p‖/‖dp‖ with eta 1e-3
    # makes each step tiny) so that 5 steps move the weights far beyond rounding.
    others, other_record = {}, {}
    for name, lr_scale in [("sgd", 10.0), ("lars", 1000.0)]:
        student, teacher = network(), network()
        student.load_state_dict(initial)
        teacher.load_state_dict(initial)
        for p in teacher.parameters():
            p.requires_grad = False
        dino_loss = DINOLoss(out_dim, ncrops, 0.04, 0.07, 2, epochs)
        params_groups = utils.get_params_groups(student)
        if name == "sgd":
            optimizer = torch.optim.SGD(params_groups, lr=0, momentum=0.9)
        else:
            optimizer = utils.LARS(params_groups)
        steps_record = []
        for it in range(steps):
            lr = float(lr_schedule[it]) * lr_scale
            loss = one_step(student, teacher, dino_loss, optimizer, it, lr, crops[it])
            steps_record.append({"loss": loss.item(), "lr": lr})
            others[f"{name}.step{it}.center"] = dino_loss.center.clone()
        for k, v in student.state_dict().items():
            others[f"{name}.final.student.{k}"] = v
        for k, v in teacher.state_dict().items():
            others[f"{name}.final.teacher.{k}"] = v
        other_record[name] = steps_record
    save_file({k: v.contiguous() for k, v in others.items()}, f"{args.out}/train_optimizers.safetensors")
    with open(f"{args.out}/train_optimizers.json", "w") as f:
        json.dump(other_record, f, indent=1)
    print("wrote training fixtures to", args.out)


if __name__ == "__main__":
    main()
