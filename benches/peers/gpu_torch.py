"""PyTorch CUDA on the problems of benches/gpu.rs, for the CPU/GPU/PyTorch-CUDA comparison on a real GPU.

The same formulas as the Rust GPU path, float32 everywhere (TF32 off, PyTorch's default for matmul):

* SpMM and LightGCN (3 layers, mean of the 4 layer outputs) on the Baby user-item graph, d = 64, CSR;
  LightGCN backward = the same propagation (the normalised graph is symmetric, so A^T = A).
* InfoNCE at B = 4096, d = 64: normalised rows, tau = 0.2, one way, mean; forward + backward (autograd).
* Log-domain Sinkhorn, uniform weights, squared Euclidean cost of 64-d standard-normal clouds,
  eps = 0.01 x mean cost: n = m = 2000 with the cost materialised once (20 iterations), and n = m = 16384
  (3 iterations) with the cost built inside the timed region (PyTorch has no online cost; the Rust path
  recomputes it per pass). Each solve ends with the row-marginal error, as the Rust solver's check does.
* kNN graph: 7050 x 384 features, cosine, k = 20, diagonal excluded, symmetrised union (torch.unique).
* GATConv 64 -> 8 heads x 8 (PyTorch Geometric) on a 7050-node cosine kNN graph (k = 20, union, self loops),
  forward + backward of sum(out * G).
* A training epoch of LightGCN on Baby as the `lightgcn()` preset trains it (embedding 64, 3 layers, batch
  2048, one uniform negative per pair rejecting positives, BPR + 1e-3 x the batch's ego-embedding L2, Adam at
  lr 5e-3, the whole graph propagated for every batch); negatives drawn on the host, as the Rust trainer does.

Times are medians of CUDA-event intervals after warm-up. Run on the GPU machine:
    python3 benches/peers/gpu_torch.py [out.json]
"""
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from timing import baby_adjacency, baby_pairs

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
dev = torch.device(os.environ.get("RECGOAT_TORCH_DEVICE", "cuda"))  # "cpu": a smoke run of this script


def medians_ms(fn, reps=50, warmup=5):
    """(device, wall) medians of `fn()` in ms: CUDA-event intervals, and the host wall clock to a synchronised
    device (as the Rust benchmarks time a GPU call, launch overhead in). On the CPU (smoke run) one timed
    call, reported as both."""
    if dev.type != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        t = (time.perf_counter() - t0) * 1e3
        return t, t
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    walls = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        walls.append((time.perf_counter() - t0) * 1e3)
    ts = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts), statistics.median(walls)


def timed(name, fn, **kw):
    """out[name_ms]: device time (CUDA events); out[name_wall_ms]: host wall clock to a synchronised device."""
    out[f"{name}_ms"], out[f"{name}_wall_ms"] = medians_ms(fn, **kw)


out = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}
g_ = torch.Generator().manual_seed(2026)

# --- SpMM / LightGCN on Baby
A = baby_adjacency().to(dev)
N = A.shape[0]
E = (torch.randn(N, 64, generator=g_) * 0.1).to(dev)
out["baby_nodes"], out["baby_nnz"] = N, int(A._nnz())


def lightgcn(adj, e, layers=3):
    acc, cur = e.clone(), e
    for _ in range(layers):
        cur = torch.sparse.mm(adj, cur)
        acc += cur
    return acc / (layers + 1)


timed("spmm", lambda: torch.sparse.mm(A, E), reps=200)
timed("lightgcn_3_fwd", lambda: lightgcn(A, E), reps=200)
timed("lightgcn_3_bwd", lambda: lightgcn(A, E), reps=200)

# --- InfoNCE
B, D, TAU = 4096, 64, 0.2
v1, v2 = torch.randn(B, D, generator=g_).to(dev), torch.randn(B, D, generator=g_).to(dev)
target = torch.arange(B, device=dev)


def infonce():
    a, b = v1.clone().requires_grad_(True), v2.clone().requires_grad_(True)
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / TAU
    loss = F.cross_entropy(logits, target)
    loss.backward()
    return loss.item()  # the Rust GPU call reads the loss back too


timed("infonce_b4096_fwd_bwd", infonce, reps=100)


# --- Sinkhorn (log domain)
def sinkhorn_log(C, iters):
    n, m = C.shape
    eps = 0.01 * C.mean()
    loga = torch.full((n,), -np.log(n), device=dev)
    logb = torch.full((m,), -np.log(m), device=dev)
    f = torch.zeros(n, device=dev)
    g = torch.zeros(m, device=dev)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[None, :] - C) / eps + logb[None, :], dim=1)
        g = -eps * torch.logsumexp((f[:, None] - C) / eps + loga[:, None], dim=0)
    row = torch.exp((f[:, None] + g[None, :] - C) / eps + loga[:, None] + logb[None, :]).sum(1)
    return (row - loga.exp()).abs().sum().item()


def sq_cost(x, y):
    return ((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T).clamp_min_(0.0)


x2, y2 = torch.randn(2000, 64, generator=g_).to(dev), torch.randn(2000, 64, generator=g_).to(dev)
C2 = sq_cost(x2, y2)
timed("sinkhorn_dense_2000_20iters", lambda: sinkhorn_log(C2, 20), reps=30)
x16, y16 = torch.randn(16384, 64, generator=g_).to(dev), torch.randn(16384, 64, generator=g_).to(dev)
timed("sinkhorn_16384_3iters_cost_built", lambda: sinkhorn_log(sq_cost(x16, y16), 3), reps=10,
                                                            warmup=2)


# --- kNN graph
def knn_edges(x, k):
    xn = F.normalize(x, dim=1)
    s = xn @ xn.T
    s.fill_diagonal_(-float("inf"))
    nbr = s.topk(k, dim=1).indices
    n = x.shape[0]
    dst = torch.arange(n, device=x.device).repeat_interleave(k)
    src = nbr.reshape(-1)
    return torch.unique(torch.cat([torch.stack([dst, src]), torch.stack([src, dst])], dim=1), dim=1)


f384 = torch.randn(7050, 384, generator=g_).to(dev)
timed("knn_7050x384_k20", lambda: knn_edges(f384, 20), reps=30)

# --- GATConv (PyG)
try:
    from torch_geometric.nn import GATConv

    n = 7050
    feats = torch.randn(n, 64, generator=g_).to(dev)
    e = knn_edges(feats, 20)
    loops = torch.arange(n, device=dev).repeat(2, 1)
    e = torch.unique(torch.cat([e, loops], dim=1), dim=1)
    ei = torch.stack([e[1], e[0]])  # PyG: (source, target)
    conv = GATConv(64, 8, heads=8, concat=True, add_self_loops=False).to(dev)
    G = torch.randn(n, 64, generator=g_).to(dev)

    def gat_fwd_bwd():
        xx = feats.clone().requires_grad_(True)
        (conv(xx, ei) * G).sum().backward()

    def gat_fwd():
        with torch.no_grad():
            conv(feats, ei)

    out["gat_edges"] = int(ei.shape[1])
    timed("pyg_gat_fwd", gat_fwd, reps=100)
    timed("pyg_gat_fwd_bwd", gat_fwd_bwd, reps=100)
except ImportError as err:
    out["pyg"] = f"not available: {err}"


# --- A LightGCN training epoch on Baby (the `lightgcn()` preset as `model_epoch_lightgcn_baby` runs it)
PAIRS = baby_pairs()
N_USERS = int(PAIRS[:, 0].max()) + 1
N_ITEMS = N - N_USERS
POS_KEYS = np.sort(PAIRS[:, 0] * N_ITEMS + PAIRS[:, 1])
rng_np = np.random.default_rng(2026)


def sample_epoch():
    """Shuffled (user, pos, neg) triples, one uniform negative per pair, rejecting the user's positives."""
    order = rng_np.permutation(len(PAIRS))
    u, i = PAIRS[order, 0], PAIRS[order, 1]
    j = rng_np.integers(0, N_ITEMS, len(u))
    while True:
        bad = np.isin(u * N_ITEMS + j, POS_KEYS)
        if not bad.any():
            return u, i, j
        j[bad] = rng_np.integers(0, N_ITEMS, int(bad.sum()))


emb = torch.nn.Parameter(torch.nn.init.xavier_uniform_(torch.empty(N, 64)).to(dev))
opt = torch.optim.Adam([emb], lr=5e-3)
BATCH, REG = 2048, 1e-3


def lightgcn_epoch():
    u, i, j = (torch.from_numpy(v).to(dev) for v in sample_epoch())
    for s in range(0, len(u), BATCH):
        bu, bi, bj = u[s : s + BATCH], i[s : s + BATCH] + N_USERS, j[s : s + BATCH] + N_USERS
        final = lightgcn(A, emb)
        pos = (final[bu] * final[bi]).sum(1)
        neg = (final[bu] * final[bj]).sum(1)
        loss = F.softplus(neg - pos).mean()
        for ids in (bu, bi, bj):
            loss = loss + REG * emb[ids].pow(2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return loss.item()


out["lightgcn_epoch_batches"] = (len(PAIRS) + BATCH - 1) // BATCH
timed("lightgcn_baby_epoch", lightgcn_epoch, reps=10, warmup=2)

text = json.dumps(out, indent=1)
print(text)
if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as fh:
        fh.write(text + "\n")
