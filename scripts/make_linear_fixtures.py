#!/usr/bin/env python3
"""Produce the linear-probe fixture from the official facebookresearch/dino `eval_linear.py`.

Usage: python3 scripts/make_linear_fixtures.py --dino-repo <official code> --out trainer/tests/fixtures/linear

On the tiny labelled folder of make_knn_fixtures.py and the teacher backbone of
`train_initial.pth`, runs the official `train` and `validate_network` functions of
eval_linear.py as its `eval_linear` does (LinearClassifier, SGD momentum 0.9 with the lr
scaled by batch / 256, CosineAnnealingLR stepped per epoch, RandomResizedCrop(224) + flip
for training, Resize 256 + CenterCrop 224 for validation), in two settings:
  - `blocks2`: n_last_blocks 2, no avgpool, 3 epochs;
  - `avgpool`: n_last_blocks 1 with avgpool_patchtokens, 1 epoch.
It records what cannot be drawn the same way in Rust (torch's random numbers): the
classifier's initial weights, and for every epoch the order in which the sampler served the
training images with each one's crop box and flip. It saves every training step's loss, the
learning rate of each epoch, the validation accuracies and loss after each epoch and the
final weights (`linear.json`, `linear.safetensors`). Nothing of the official code is copied;
it is imported from --dino-repo.
"""
import argparse
import json
import os
import sys
import tempfile
from functools import partial

import torch
import torch.distributed as dist
import torch.nn as nn
from safetensors.torch import save_file
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_knn_fixtures  # noqa: E402

BATCH, LR = 16, 0.5
SETTINGS = {"blocks2": (2, False, 3), "avgpool": (1, True, 1)}


class Recorder:
    """The crop box and flip of every training image, in the order the loader asked."""

    def __init__(self):
        self.views = []

    def transform(self, normalize):
        rec = self

        class Crop(T.RandomResizedCrop):
            def forward(self, img):
                i, j, h, w = self.get_params(img, self.scale, self.ratio)
                rec.views[-1].update(top=i, left=j, height=h, width=w)
                return F.resized_crop(img, i, j, h, w, self.size, self.interpolation,
                                      antialias=self.antialias)

        class Flip(T.RandomHorizontalFlip):
            def forward(self, img):
                flip = bool(torch.rand(1) < self.p)
                rec.views[-1]["flip"] = flip
                return F.hflip(img) if flip else img

        return T.Compose([Crop(224), Flip(), T.ToTensor(), normalize])

    def dataset(self, root, transform):
        rec = self

        class Recording(datasets.ImageFolder):
            def __getitem__(self, idx):
                rec.views.append({"index": idx})
                return super().__getitem__(idx)

        return Recording(root, transform=transform)


def run(setting, root, eval_linear, vits, weights):
    n, avgpool, epochs = SETTINGS[setting]
    model = vits.VisionTransformer(
        img_size=[32], patch_size=8, embed_dim=64, depth=2, num_heads=1, mlp_ratio=2,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), num_classes=0)
    state = torch.load(weights, map_location="cpu")["teacher"]
    model.load_state_dict(
        {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")})
    model.eval()
    # eval_linear.py's `train` and `validate_network` read the global `args` for the arch.
    eval_linear.args = argparse.Namespace(arch="vit_fixture")

    torch.manual_seed(0)
    classifier = eval_linear.LinearClassifier(64 * (n + int(avgpool)), num_labels=6)
    initial = {k: v.clone() for k, v in classifier.state_dict().items()}
    classifier = nn.parallel.DistributedDataParallel(classifier)

    normalize = T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    val_transform = T.Compose([T.Resize(256, interpolation=3), T.CenterCrop(224), T.ToTensor(),
                               normalize])
    dataset_val = datasets.ImageFolder(os.path.join(root, "val"), transform=val_transform)
    val_loader = torch.utils.data.DataLoader(dataset_val, batch_size=BATCH, num_workers=0)
    rec = Recorder()
    dataset_train = rec.dataset(os.path.join(root, "train"), rec.transform(normalize))
    sampler = torch.utils.data.distributed.DistributedSampler(dataset_train)
    train_loader = torch.utils.data.DataLoader(dataset_train, sampler=sampler,
                                               batch_size=BATCH, num_workers=0)
    optimizer = torch.optim.SGD(classifier.parameters(), LR * BATCH / 256.0, momentum=0.9,
                                weight_decay=0)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)

    losses = []
    real_ce = nn.CrossEntropyLoss

    class RecordingCE(real_ce):
        def forward(self, output, target):
            loss = super().forward(output, target)
            if classifier.training:
                losses.append(loss.item())
            return loss

    eval_linear.nn.CrossEntropyLoss = RecordingCE
    out = {"n_last_blocks": n, "avgpool": avgpool, "epochs": epochs, "batch": BATCH, "lr": LR,
           "epochs_log": []}
    try:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            rec.views = []
            lr = optimizer.param_groups[0]["lr"]
            first = len(losses)
            eval_linear.train(model, classifier, optimizer, train_loader, epoch, n, avgpool)
            scheduler.step()
            stats = eval_linear.validate_network(val_loader, model, classifier, n, avgpool)
            out["epochs_log"].append({
                "lr": lr, "views": rec.views, "losses": losses[first:],
                "val_acc1": stats["acc1"], "val_acc5": stats["acc5"], "val_loss": stats["loss"]})
    finally:
        eval_linear.nn.CrossEntropyLoss = real_ce
    final = classifier.module.state_dict()
    tensors = {
        f"{setting}.initial_weight": initial["linear.weight"],
        f"{setting}.initial_bias": initial["linear.bias"],
        f"{setting}.final_weight": final["linear.weight"].clone(),
        f"{setting}.final_bias": final["linear.bias"].clone(),
    }
    return out, tensors


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dino-repo", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--weights", default="trainer/tests/fixtures/train_initial.pth")
    args = parser.parse_args()
    sys.path.insert(0, args.dino_repo)
    import eval_linear  # noqa: E402
    import utils  # noqa: E402
    import vision_transformer as vits  # noqa: E402

    # One process: gathering the meters over the world (on CUDA) changes nothing.
    utils.SmoothedValue.synchronize_between_processes = lambda self: None

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29542")
    dist.init_process_group("gloo", rank=0, world_size=1)
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.synchronize = lambda *a, **k: None
    log, tensors = {}, {}
    with tempfile.TemporaryDirectory() as root:
        make_knn_fixtures.write_folder(root)
        for setting in SETTINGS:
            log[setting], t = run(setting, root, eval_linear, vits, args.weights)
            tensors.update(t)
            last = log[setting]["epochs_log"][-1]
            print(f"{setting}: final val acc1 {last['val_acc1']:.2f}, losses "
                  f"{[round(x, 4) for e in log[setting]['epochs_log'] for x in e['losses']]}")
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()},
              os.path.join(args.out, "linear.safetensors"))
    with open(os.path.join(args.out, "linear.json"), "w") as f:
        json.dump(log, f)


if __name__ == "__main__":
    main()
