"""The Python package beside POT and PyTorch, in one run on one machine: the call overhead of a tiny op,
Sinkhorn (the problem of pot_sinkhorn.py: n = m = 2000, d = 64, float32, eps = 0.01 x mean cost, per log-
domain iteration from the difference of 30 and 10 iterations) and InfoNCE forward + backward (the problem of
infonce_torch.py: B = 4096, d = 64, float32, tau = 0.2, one-way and symmetric), every figure a median.

Run from the checkout's root with the peers' environment and the package installed
(`pip install ./python`):

    .venv/bin/python benches/peers/python_figures.py

It prints a markdown table and the versions; docs/PYTHON.md keeps a run's table with its date and machine.
"""
import json
import platform
import warnings

import numpy as np
import ot
import torch
import torch.nn.functional as F

import recgoat
from timing import median_time, sinkhorn_problem

THREADS = 2
torch.set_num_threads(THREADS)
rows = []


def row(what, ours, peer_name, peer, unit="ms"):
    rows.append((what, ours, peer_name, peer, unit))


# the call overhead: a 2 x 2 InfoNCE (nothing to compute) against numpy's and torch's tiniest calls
v = np.eye(2)
tiny = median_time(lambda: recgoat.info_nce(v, v, threads=1), reps=20_000, warmup=1000) * 1e6
numpy_add = median_time(lambda: np.add(v, v), reps=20_000, warmup=1000) * 1e6
t = torch.eye(2)
torch_add = median_time(lambda: torch.add(t, t), reps=20_000, warmup=1000) * 1e6
row("call overhead: 2 x 2 InfoNCE with gradients (us)", tiny, "numpy.add 2 x 2", numpy_add, "us")
row("call overhead: 2 x 2 InfoNCE with gradients (us)", tiny, "torch.add 2 x 2", torch_add, "us")

# Sinkhorn, log domain, per iteration
C, a, eps = sinkhorn_problem()


def ours(k):
    return lambda: recgoat.sinkhorn(a, a, C, eps=eps, tol=1e-30, max_iter=k, return_plan=False, threads=THREADS)


def pot(k):
    return lambda: ot.bregman.sinkhorn_log(a, a, C, eps, numItermax=k, stopThr=0.0, warn=False)


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    per_iter = lambda f: (median_time(f(30), reps=7, warmup=1) - median_time(f(10), reps=7, warmup=1)) / 20 * 1e3
    ours_iter, pot_iter = per_iter(ours), per_iter(pot)
row("Sinkhorn log domain, n = 2000, per iteration (ms)", ours_iter, "POT sinkhorn_log", pot_iter)

# InfoNCE forward + backward
B, D, TAU = 4096, 64, 0.2
g = torch.Generator().manual_seed(4096)
t1, t2 = torch.randn(B, D, generator=g), torch.randn(B, D, generator=g)
n1, n2 = t1.numpy(), t2.numpy()
target = torch.arange(B)


def torch_nce(symmetric):
    def run():
        p, q = t1.clone().requires_grad_(True), t2.clone().requires_grad_(True)
        logits = F.normalize(p, dim=1) @ F.normalize(q, dim=1).T / TAU
        loss = F.cross_entropy(logits, target)
        if symmetric:
            loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
        loss.backward()

    return run


for symmetric in (False, True):
    mine = median_time(lambda: recgoat.info_nce(n1, n2, temperature=TAU, symmetric=symmetric, threads=THREADS), reps=15)
    peer = median_time(torch_nce(symmetric), reps=15)
    kind = "symmetric" if symmetric else "one-way"
    row(f"InfoNCE {kind} fwd + bwd, B = 4096, d = 64 (ms)", mine * 1e3, "torch", peer * 1e3)

print("| workload | recgoat from Python | peer | peer's time | peer / ours |")
print("|---|---|---|---|---|")
for what, mine, name, peer, unit in rows:
    print(f"| {what} | {mine:.3g} {unit} | {name} | {peer:.3g} {unit} | {peer / mine:.2f}x |")
print(json.dumps({
    "recgoat": recgoat.__version__, "numpy": np.__version__, "pot": ot.__version__, "torch": torch.__version__,
    "threads": THREADS, "python": platform.python_version(), "machine": platform.processor() or platform.machine(),
}))
