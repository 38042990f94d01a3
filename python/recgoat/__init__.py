"""RecGOAT's math over recgoat-core (Rust): entropic optimal transport, InfoNCE, graph attention and
LightGCN propagation on numpy arrays, each with its gradient, and the reference multimodal recommender
(datasets, training, serving).

Every op takes float32 or float64 arrays in C or Fortran order (no copy), releases the GIL while it
computes, and raises ``ValueError`` with the library's message for bad input. See the type stubs
(``_recgoat.pyi``) for each function's arguments and results.

Example::

    import numpy as np, recgoat
    x = np.random.default_rng(0).normal(size=(5, 2))
    y = x + 0.1
    w = np.full(5, 0.2)
    out = recgoat.sinkhorn(w, w, x=x, y=y, eps=0.05)
    out["transport_cost"], out["plan"].sum()
"""

from ._recgoat import (
    Dataset,
    Graph,
    Recommender,
    Trainer,
    __version__,
    adaptive_transport,
    gat,
    info_nce,
    knn_graph,
    sinkhorn,
    sinkhorn_divergence,
)


def graph_from_scipy(matrix):
    """A :class:`Graph` from a scipy.sparse matrix (converted to CSR with sorted, summed duplicates)."""
    csr = matrix.tocsr()
    csr.sum_duplicates()
    csr.sort_indices()
    return Graph(csr.indptr, csr.indices, csr.data, shape=csr.shape)


__all__ = [
    "Dataset",
    "Graph",
    "Recommender",
    "Trainer",
    "__version__",
    "adaptive_transport",
    "gat",
    "graph_from_scipy",
    "info_nce",
    "knn_graph",
    "sinkhorn",
    "sinkhorn_divergence",
]
