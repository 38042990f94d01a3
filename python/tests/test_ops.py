"""The ops from Python: against POT and numpy references, gradients against finite differences, both
float types and both memory orders, and bad input raising ValueError."""

import threading
import time

import numpy as np
import ot
import pytest

import recgoat


def clouds(seed=0, n=6, m=5, d=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + 0.5
    a = rng.random(n) + 0.5
    b = rng.random(m) + 0.5
    return x, y, a / a.sum(), b / b.sum()


TIGHT = dict(tol=1e-12, max_iter=100_000)


@pytest.mark.parametrize("domain", ["log", "scaling"])
def test_sinkhorn_plan_matches_pot(domain):
    x, y, a, b = clouds()
    cost = ot.dist(x, y)
    want = ot.sinkhorn(a, b, cost, 0.1, numItermax=100_000, stopThr=1e-13)
    out = recgoat.sinkhorn(a, b, cost, eps=0.1, domain=domain, **TIGHT)
    assert out["converged"]
    np.testing.assert_allclose(out["plan"], want, atol=1e-10)
    assert out["transport_cost"] == pytest.approx(float((want * cost).sum()), rel=1e-9)
    # the same problem from the point clouds, the cost computed on the fly
    online = recgoat.sinkhorn(a, b, x=x, y=y, eps=0.1, **TIGHT)
    np.testing.assert_allclose(online["plan"], want, atol=1e-10)


def test_unbalanced_sinkhorn_matches_pot():
    x, y, a, b = clouds(1)
    a = 1.5 * a  # more mass on one side: only an unbalanced problem has a solution
    cost = ot.dist(x, y)
    want = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, 0.1, 1.0, numItermax=100_000, stopThr=1e-13)
    out = recgoat.sinkhorn(a, b, cost, eps=0.1, reg_m_a=1.0, reg_m_b=1.0, **TIGHT)
    np.testing.assert_allclose(out["plan"], want, atol=1e-10)
    with pytest.raises(ValueError, match="equal masses"):
        recgoat.sinkhorn(a, b, cost, eps=0.1)


@pytest.mark.filterwarnings("ignore:Sinkhorn did not converge")
def test_sinkhorn_divergence_against_pot_and_its_three_problems():
    x, y, a, b = clouds(2)
    out = recgoat.sinkhorn_divergence(x, y, a, b, eps=0.1, **TIGHT)
    solve = lambda p, q, u, v: recgoat.sinkhorn(p, q, x=u, y=v, eps=0.1, **TIGHT)
    xy, xx, yy = solve(a, b, x, y), solve(a, a, x, x), solve(b, b, y, y)
    # the debiased value of the regularised problems
    assert out["value"] == pytest.approx(xy["value"] - (xx["value"] + yy["value"]) / 2, rel=1e-8)
    # POT debiases the transport costs of the same three plans
    want = ot.bregman.empirical_sinkhorn_divergence(x, y, 0.1, a, b, numIterMax=100_000, stopThr=1e-13)
    got = xy["transport_cost"] - (xx["transport_cost"] + yy["transport_cost"]) / 2
    assert got == pytest.approx(float(want), rel=1e-6)
    assert abs(recgoat.sinkhorn_divergence(x, x, a, a, eps=0.1, **TIGHT)["value"]) < 1e-9


def central_difference(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        old = x[idx]
        x[idx] = old + h
        up = f(x)
        x[idx] = old - h
        down = f(x)
        x[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def test_sinkhorn_gradients_match_finite_differences():
    x, y, a, b = clouds(3)
    out = recgoat.sinkhorn(a, b, x=x, y=y, eps=0.5, **TIGHT)
    value = lambda xx: recgoat.sinkhorn(a, b, x=xx, y=y, eps=0.5, **TIGHT)["value"]
    np.testing.assert_allclose(out["grad_x"], central_difference(value, x.copy()), atol=1e-6)
    value_y = lambda yy: recgoat.sinkhorn(a, b, x=x, y=yy, eps=0.5, **TIGHT)["value"]
    np.testing.assert_allclose(out["grad_y"], central_difference(value_y, y.copy()), atol=1e-6)
    div = recgoat.sinkhorn_divergence(x, y, a, b, eps=0.5, **TIGHT)
    dvalue = lambda xx: recgoat.sinkhorn_divergence(xx, y, a, b, eps=0.5, **TIGHT)["value"]
    np.testing.assert_allclose(div["grad_x"], central_difference(dvalue, x.copy()), atol=1e-6)


def info_nce_reference(v1, v2, tau, symmetric):
    n1 = v1 / np.linalg.norm(v1, axis=1, keepdims=True)
    n2 = v2 / np.linalg.norm(v2, axis=1, keepdims=True)
    logits = n1 @ n2.T / tau

    def one_way(z):
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - np.diag(z)))

    return (one_way(logits) + one_way(logits.T)) / 2 if symmetric else one_way(logits)


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_against_numpy_and_finite_differences(symmetric):
    rng = np.random.default_rng(4)
    v1, v2 = rng.normal(size=(7, 3)), rng.normal(size=(7, 3))
    out = recgoat.info_nce(v1, v2, temperature=0.3, symmetric=symmetric)
    assert out["loss"] == pytest.approx(info_nce_reference(v1, v2, 0.3, symmetric), rel=1e-12)
    loss1 = lambda z: info_nce_reference(z, v2, 0.3, symmetric)
    loss2 = lambda z: info_nce_reference(v1, z, 0.3, symmetric)
    np.testing.assert_allclose(out["grad_v1"], central_difference(loss1, v1.copy()), atol=1e-7)
    np.testing.assert_allclose(out["grad_v2"], central_difference(loss2, v2.copy()), atol=1e-7)
    # the library's documented value: each anchor against one other at cosine 0
    assert recgoat.info_nce(np.eye(2), np.eye(2))["loss"] == pytest.approx(np.log1p(np.exp(-5.0)), rel=1e-12)


def test_float32_and_fortran_order_give_the_float64_results():
    rng = np.random.default_rng(5)
    v1, v2 = rng.normal(size=(16, 8)), rng.normal(size=(16, 8))
    want = recgoat.info_nce(v1, v2)
    f32 = recgoat.info_nce(v1.astype(np.float32), v2.astype(np.float32))
    assert f32["grad_v1"].dtype == np.float32
    assert f32["loss"] == pytest.approx(want["loss"], rel=1e-5)
    np.testing.assert_allclose(f32["grad_v1"], want["grad_v1"], atol=1e-5)
    fortran = recgoat.info_nce(np.asfortranarray(v1), np.asfortranarray(v2))
    np.testing.assert_allclose(fortran["grad_v2"], want["grad_v2"], rtol=1e-12, atol=1e-15)
    x, y, a, b = clouds(6)
    s64 = recgoat.sinkhorn(a, b, x=x, y=y, eps=0.1)
    s32 = recgoat.sinkhorn(*(v.astype(np.float32) for v in (a, b)), x=x.astype(np.float32), y=y.astype(np.float32), eps=0.1)
    assert s32["plan"].dtype == np.float32
    np.testing.assert_allclose(s32["plan"], s64["plan"], atol=1e-5)


def ring(n=6):
    edges = [(i, (i + 1) % n) for i in range(n)] + [((i + 1) % n, i) for i in range(n)]
    return recgoat.Graph.from_edges(np.array(edges), shape=(n, n))


def test_lightgcn_against_dense_numpy_and_its_adjoint():
    g = ring().sym_normalized()
    dense = g.to_dense()
    rng = np.random.default_rng(7)
    e0 = rng.normal(size=(6, 4))
    want, h = [e0], e0
    for _ in range(3):
        h = dense @ h
        want.append(h)
    out = g.lightgcn_forward(e0, 3)
    np.testing.assert_allclose(out, np.mean(want, axis=0), atol=1e-12)
    np.testing.assert_allclose(g.spmm(e0), dense @ e0, atol=1e-12)
    # the backward pass is the adjoint: <F(e0), G> = <e0, B(G)>
    grad = rng.normal(size=(6, 4))
    assert float((out * grad).sum()) == pytest.approx(float((e0 * g.lightgcn_backward(grad, 3)).sum()), rel=1e-12)
    f32 = g.lightgcn_forward(e0.astype(np.float32), 3)
    assert f32.dtype == np.float32
    np.testing.assert_allclose(f32, out, atol=1e-5)


def test_graph_round_trips_its_arrays_and_refuses_bad_ones():
    g = ring()
    again = recgoat.Graph(g.indptr, g.indices, shape=g.shape)
    np.testing.assert_array_equal(again.to_dense(), g.to_dense())
    with pytest.raises(ValueError, match="out of range"):
        recgoat.Graph.from_edges(np.array([[0, 9]]), shape=(3, 3))
    with pytest.raises(ValueError):
        recgoat.Graph(np.array([0, 2, 1]), np.array([1, 0]), shape=(2, 2))  # indptr decreases
    with pytest.raises(ValueError, match="integers"):
        recgoat.Graph(np.array([0.0, 1.0]), np.array([0]), shape=(1, 1))


@pytest.mark.parametrize("method", ["exact", "hnsw"])
def test_knn_graph_against_brute_force(method):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(40, 5))
    g = recgoat.knn_graph(x, 4, method=method)
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = n @ n.T
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1)[:, :4]
    got = [set(g.indices[g.indptr[i] : g.indptr[i + 1]]) for i in range(40)]
    found = np.mean([len(got[i] & set(want[i])) / 4 for i in range(40)])
    assert found == 1.0 if method == "exact" else found >= 0.9


@pytest.mark.parametrize("scoring", ["gat", "gatv2"])
def test_gat_gradients_match_finite_differences(scoring):
    rng = np.random.default_rng(9)
    g = ring(5)
    x = rng.normal(size=(5, 3))
    w = rng.normal(size=(3, 4))
    a_src = rng.normal(size=(2, 2))
    a_dst = rng.normal(size=(2, 2)) if scoring == "gat" else None
    bias = rng.normal(size=4)
    r = rng.normal(size=(5, 4))
    kw = dict(heads=2, bias=bias, scoring=scoring)
    out = recgoat.gat(g, x, w, a_src, a_dst, grad_out=r, **kw)
    assert out["out"].shape == (5, 4)
    loss = lambda xx: float((recgoat.gat(g, xx, w, a_src, a_dst, **kw)["out"] * r).sum())
    np.testing.assert_allclose(out["grad_x"], central_difference(loss, x.copy()), atol=1e-6)
    loss_w = lambda ww: float((recgoat.gat(g, x, ww, a_src, a_dst, **kw)["out"] * r).sum())
    np.testing.assert_allclose(out["grad_w"], central_difference(loss_w, w.copy()), atol=1e-6)
    loss_a = lambda aa: float((recgoat.gat(g, x, w, aa, a_dst, **kw)["out"] * r).sum())
    np.testing.assert_allclose(out["grad_a_src"], central_difference(loss_a, a_src.copy()), atol=1e-6)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: recgoat.info_nce(np.ones((3, 2)), np.ones((4, 2))), "shape"),
        (lambda: recgoat.info_nce(np.ones((3, 2)), np.ones((3, 2), dtype=np.float32)), "float64"),
        (lambda: recgoat.info_nce(np.array([[np.nan, 1.0], [1.0, 0.0]]), np.eye(2)), "NaN"),
        (lambda: recgoat.info_nce(np.eye(2), np.eye(2), temperature=0.0), "temperature"),
        (lambda: recgoat.info_nce([[1.0, 0.0]], [[1.0, 0.0]]), "numpy array"),
        (lambda: recgoat.info_nce(np.eye(2), np.eye(2), reduction="max"), "reduction"),
        (lambda: recgoat.sinkhorn(np.ones(2) / 2, np.ones(3) / 3, np.ones((2, 2))), "shape"),
        (lambda: recgoat.sinkhorn(np.ones(2) / 2, np.ones(2) / 2), "cost matrix"),
        (lambda: recgoat.sinkhorn(np.ones(2) / 2, np.ones(2) / 2, np.ones((2, 2)), eps=-1.0), "eps"),
        (lambda: recgoat.sinkhorn(np.ones(2) / 2, np.ones(2) / 2, np.ones((2, 2)), domain="x"), "domain"),
        (lambda: recgoat.knn_graph(np.ones((4, 2)), 9), "k"),
        (lambda: recgoat.knn_graph(np.ones(4), 2), "2-D"),
    ],
)
def test_bad_input_raises_value_error_with_the_library_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_adaptive_transport_gradients_match_finite_differences():
    rng = np.random.default_rng(10)
    m, z = rng.normal(size=(6, 3)), rng.normal(size=(6, 3))
    delta = 0.1 * rng.normal(size=(3, 3))
    r = rng.normal(size=(6, 3))
    kw = dict(cost_scale=1.0, eps=0.5, eps_scale=None, tol=1e-13, max_iter=100_000)
    out = recgoat.adaptive_transport(m, z, delta, grad_out=r, grad_value=0.7, **kw)
    np.testing.assert_allclose(out["plan"].sum(axis=1), np.full(3, 1 / 3), atol=1e-10)
    np.testing.assert_allclose(out["aligned"], m @ (3 * out["plan"] + delta), atol=1e-12)

    def loss(mm, zz, dd):
        o = recgoat.adaptive_transport(mm, zz, dd, **kw)
        return float((o["aligned"] * r).sum()) + 0.7 * o["value"]

    np.testing.assert_allclose(out["grad_m"], central_difference(lambda v: loss(v, z, delta), m.copy()), atol=1e-6)
    np.testing.assert_allclose(out["grad_z"], central_difference(lambda v: loss(m, v, delta), z.copy()), atol=1e-6)
    np.testing.assert_allclose(out["grad_delta"], central_difference(lambda v: loss(m, z, v), delta.copy()), atol=1e-6)
    with pytest.raises(ValueError, match="gradient"):
        recgoat.adaptive_transport(m, z, delta, gradient="guess")


def test_the_gil_is_released_while_an_op_computes():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(1500, 16))
    w = np.full(1500, 1 / 1500)
    done = threading.Event()

    def work():
        recgoat.sinkhorn(w, w, x=x, y=x + 0.1, eps=0.01, eps_scale="mean", tol=1e-30, max_iter=30,
                         return_plan=False, threads=1)
        done.set()

    worker = threading.Thread(target=work)
    start = last = time.perf_counter()
    longest = 0.0
    worker.start()
    while not done.is_set():
        # Python code runs here only while the op has let go of the GIL: holding it would stall this loop
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    worker.join()
    took = time.perf_counter() - start
    assert took > 0.2, f"the op took {took:.3f} s: too short to tell"
    assert longest < took / 3, f"this thread stalled {longest:.3f} s of the op's {took:.3f} s"


def test_the_docstring_examples_run():
    import doctest

    import recgoat._recgoat as native

    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    public = [n for n in dir(native) if not n.startswith("_")]
    tests = [t for n in public for t in finder.find(getattr(native, n), n, module=False) if t.examples]
    named = {t.name.rsplit(".", 1)[-1] for t in tests}
    want = {"sinkhorn", "sinkhorn_divergence", "info_nce", "Graph", "knn_graph", "gat", "adaptive_transport",
            "Dataset", "Trainer", "Recommender"}
    assert want <= named, f"examples missing from {sorted(want - named)}"
    for t in tests:
        runner.run(t)
    assert runner.failures == 0, f"{runner.failures} docstring examples failed"
    assert runner.tries >= 30, runner.tries
