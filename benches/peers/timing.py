"""Helpers shared by the peer benchmark scripts: median timing and the Baby LightGCN graph."""
import os
import statistics
import time


def median_time(fn, reps=20, warmup=3):
    """Median wall time of `fn()` in seconds over `reps` calls, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def sinkhorn_problem(n=2000, d=64):
    """The Sinkhorn benchmark problem of benches/transport.rs: float32 squared Euclidean costs between two
    standard normal clouds of `n` points in `d` dimensions (seed 2000), uniform weights, eps = 0.01 x mean
    cost. Returns (C, a, eps)."""
    import numpy as np
    import ot

    rng = np.random.default_rng(2000)
    x = rng.standard_normal((n, d)).astype(np.float32)
    y = rng.standard_normal((n, d)).astype(np.float32)
    C = ot.dist(x, y).astype(np.float32)
    a = np.full(n, 1.0 / n, dtype=np.float32)
    return C, a, float(0.01 * C.mean())


def baby_pairs():
    """The unique (user, item) pairs of the bundled Baby training split, sorted, as an int64 array."""
    import numpy as np

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    pairs = []
    with open(os.path.join(root, "data", "baby", "train.txt")) as fh:
        for line in fh:
            t = [int(v) for v in line.split()]
            pairs += [(t[0], i) for i in t[1:]]
    return np.unique(np.array(pairs, dtype=np.int64), axis=0)


def baby_adjacency():
    """The symmetric-normalised Baby user-item graph D^-1/2 A D^-1/2 (unique train pairs) as a CPU
    torch CSR tensor, as benches/common/mod.rs builds it for the Rust benchmarks."""
    import numpy as np
    import torch

    pairs = baby_pairs()
    users, items = pairs[:, 0].max() + 1, pairs[:, 1].max() + 1
    n = int(users + items)
    r = np.concatenate([pairs[:, 0], pairs[:, 1] + users])
    c = np.concatenate([pairs[:, 1] + users, pairs[:, 0]])
    deg = np.bincount(r, minlength=n).astype(np.float32)
    w = 1.0 / np.sqrt(deg[r] * deg[c])
    a = torch.sparse_coo_tensor(torch.tensor(np.stack([r, c])), torch.tensor(w, dtype=torch.float32), (n, n))
    return a.coalesce().to_sparse_csr()
