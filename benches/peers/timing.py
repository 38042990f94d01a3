"""Timing helper shared by the peer benchmark scripts."""
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
