"""PyTorch's CPU InfoNCE (the same formula as recgoat_core::contrastive::info_nce, one-way, normalised rows,
tau = 0.2, mean reduction) forward + backward at B = 4096, d = 64, float32, 2 threads.

Run: .venv/bin/python benches/peers/infonce_torch.py
"""
import json

import torch
import torch.nn.functional as F
from timing import median_time

torch.set_num_threads(2)
B, D, TAU = 4096, 64, 0.2
g = torch.Generator().manual_seed(4096)
v1, v2 = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
target = torch.arange(B)


def one_way():
    a, b = v1.clone().requires_grad_(True), v2.clone().requires_grad_(True)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / TAU
    F.cross_entropy(logits, target).backward()


def symmetric():
    a, b = v1.clone().requires_grad_(True), v2.clone().requires_grad_(True)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / TAU
    (0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))).backward()


print(json.dumps({
    "torch": torch.__version__, "threads": torch.get_num_threads(), "B": B, "d": D,
    "torch_infonce_fwd_bwd_one_way_ms": median_time(one_way, reps=15) * 1e3,
    "torch_infonce_fwd_bwd_symmetric_ms": median_time(symmetric, reps=15) * 1e3,
}, indent=1))
