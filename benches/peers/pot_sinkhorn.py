"""POT's Sinkhorn on the benchmark problem of benches/transport.rs, for a side-by-side comparison.

n = m = 2000 points in 64 dimensions (standard normal, float32 costs as POT computes them from float64 clouds
cast to float32), squared Euclidean cost, uniform weights, eps = 0.01 x mean cost. Reports per-iteration time
of ot.bregman.sinkhorn_log as (t(30 iters) - t(10 iters)) / 20, the same difference the Rust bench uses, and
what sinkhorn_knopp (scaling domain) does on the same problem.

Run: .venv/bin/python benches/peers/pot_sinkhorn.py  (needs numpy and POT; not a dependency of the crate)
"""
import json
import warnings

import numpy as np
import ot
from timing import median_time, sinkhorn_problem

n, d = 2000, 64
C, a, eps = sinkhorn_problem(n, d)


def log_iters(k):
    return lambda: ot.bregman.sinkhorn_log(a, a, C, eps, numItermax=k, stopThr=0.0, warn=False)


t10, t30 = median_time(log_iters(10), reps=7, warmup=1), median_time(log_iters(30), reps=7, warmup=1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    P, log = ot.bregman.sinkhorn_knopp(a, a, C, eps, numItermax=100, stopThr=1e-9, log=True, warn=True)
knopp = {
    "iterations": int(log.get("niter", -1)),
    "plan_finite": bool(np.isfinite(P).all()),
    "plan_mass": float(np.nan_to_num(P).sum()),
    "warnings": sorted({str(w.message).split("\n")[0] for w in caught}),
}
print(json.dumps({
    "pot_version": ot.__version__,
    "numpy_version": np.__version__,
    "n": n, "d": d, "eps": eps,
    "sinkhorn_log_10iters_s": t10,
    "sinkhorn_log_30iters_s": t30,
    "sinkhorn_log_per_iter_ms": (t30 - t10) / 20 * 1e3,
    "sinkhorn_knopp": knopp,
}, indent=1))
