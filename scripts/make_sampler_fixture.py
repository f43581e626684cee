#!/usr/bin/env python3
"""Writes trainer/tests/fixtures/sampler/distributed_sampler.json: the index lists and batch
counts of PyTorch's own DistributedSampler(shuffle=True) + DataLoader(drop_last=True), as
main_dino.py builds them, with the permutation each epoch drew, for a few data-set sizes,
world sizes and batch sizes (padding shorter and longer than the data set included).

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch
    /tmp/ref/bin/python scripts/make_sampler_fixture.py
"""
import json
import pathlib

import torch
from torch.utils.data import DataLoader, DistributedSampler


class Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


cases = []
for n, world, batch in [(10, 3, 2), (7, 2, 3), (8, 4, 1), (5, 4, 1), (2, 4, 1), (16, 2, 2)]:
    for epoch in [0, 3]:
        seed = 0  # DistributedSampler's default; main_dino.py does not pass one
        g = torch.Generator()
        g.manual_seed(seed + epoch)
        perm = torch.randperm(n, generator=g).tolist()
        ranks = []
        for rank in range(world):
            s = DistributedSampler(Indices(n), num_replicas=world, rank=rank, shuffle=True, seed=seed)
            s.set_epoch(epoch)
            loader = DataLoader(Indices(n), sampler=s, batch_size=batch, drop_last=True)
            ranks.append({"indices": list(s), "batches": [b.tolist() for b in loader]})
        cases.append({"n": n, "world": world, "batch": batch, "epoch": epoch, "perm": perm, "ranks": ranks})

out = pathlib.Path(__file__).resolve().parent.parent / "trainer/tests/fixtures/sampler/distributed_sampler.json"
out.write_text(json.dumps({"torch": torch.__version__, "cases": cases}, indent=1) + "\n")
print(f"wrote {out} ({len(cases)} cases)")
