"""Type stubs of recgoat's native module (recgoat-core through PyO3).

Arrays are numpy float32 or float64 (the first array argument sets the dtype; the others must match it),
in C or Fortran order. Results are numpy arrays of that dtype. Bad input raises ValueError with the
library's message; a file that cannot be read or written raises OSError.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

FloatArray = Union[npt.NDArray[np.float32], npt.NDArray[np.float64]]
IntArray = npt.NDArray[np.integer]

__version__: str

class SinkhornResult(TypedDict, total=False):
    transport_cost: float
    value: float
    eps: float
    marginal_error: float
    iterations: int
    converged: bool
    f: FloatArray
    g: FloatArray
    plan: FloatArray
    grad_a: FloatArray
    grad_b: FloatArray
    grad_x: FloatArray
    grad_y: FloatArray

def sinkhorn(
    a: FloatArray,
    b: FloatArray,
    cost: Optional[FloatArray] = None,
    *,
    x: Optional[FloatArray] = None,
    y: Optional[FloatArray] = None,
    eps: float = 0.05,
    eps_scale: Optional[str] = None,
    domain: str = "log",
    tol: float = 1e-6,
    max_iter: int = 1000,
    reg_m_a: Optional[float] = None,
    reg_m_b: Optional[float] = None,
    return_plan: bool = True,
    threads: int = 0,
) -> SinkhornResult:
    """Entropic optimal transport between weights ``a`` (n) and ``b`` (m).

    The cost is ``cost`` (n x m), or the squared Euclidean distance between the point clouds ``x`` (n x d)
    and ``y`` (m x d), computed on the fly. ``eps`` is the regularisation, absolute, or with ``eps_scale``
    ("mean", "median", "max") a factor of that statistic of the cost. ``domain`` is "log" (stable for any
    eps) or "scaling". ``reg_m_a`` / ``reg_m_b`` relax a marginal to a KL penalty of that strength
    (unbalanced transport); balanced sides need equal masses. Stops when the marginal error (L1) is at most
    ``tol`` or after ``max_iter`` iterations (``converged`` says which). ``threads``: 0 every core, 1 the
    calling thread.

    Returns the dual potentials ``f``, ``g``, the plan (unless ``return_plan`` is false), the transport
    cost ``<P, C>``, the regularised ``value``, and the gradients of the value: ``grad_a``, ``grad_b``
    (envelope theorem; centred on balanced sides) and, for point clouds, ``grad_x``, ``grad_y``.

    >>> import numpy as np, recgoat
    >>> c = np.array([[0.0, 1.0], [1.0, 0.0]])
    >>> w = np.array([0.5, 0.5])
    >>> out = recgoat.sinkhorn(w, w, c, eps=0.05, tol=1e-9)
    >>> bool(out["converged"]), round(float(out["plan"][0, 0]), 6)
    (True, 0.5)
    """

class DivergenceResult(TypedDict):
    value: float
    ot_xy: float
    ot_xx: float
    ot_yy: float
    converged: bool
    grad_x: FloatArray
    grad_y: FloatArray
    grad_a: FloatArray
    grad_b: FloatArray

def sinkhorn_divergence(
    x: FloatArray,
    y: FloatArray,
    a: Optional[FloatArray] = None,
    b: Optional[FloatArray] = None,
    *,
    eps: float = 0.05,
    eps_scale: Optional[str] = None,
    tol: float = 1e-6,
    max_iter: int = 1000,
    threads: int = 0,
) -> DivergenceResult:
    """The debiased Sinkhorn divergence ``OT(x, y) - (OT(x, x) + OT(y, y)) / 2`` between weighted point
    clouds (uniform weights by default; squared Euclidean cost), with its gradients with respect to the
    points and the weights. Zero when the clouds coincide.

    >>> import numpy as np, recgoat
    >>> x = np.array([[0.0, 0.0], [1.0, 0.0]])
    >>> abs(recgoat.sinkhorn_divergence(x, x, eps=0.1, tol=1e-10)["value"]) < 1e-9
    True
    """

class AdaptiveResult(TypedDict, total=False):
    aligned: FloatArray
    plan: FloatArray
    cost: FloatArray
    value: float
    grad_m: FloatArray
    grad_z: FloatArray
    grad_delta: FloatArray

def adaptive_transport(
    m: FloatArray,
    z: FloatArray,
    delta: FloatArray,
    *,
    cost_scale: float = 100.0,
    eps: float = 0.05,
    eps_scale: Optional[str] = "mean",
    tol: float = 1e-5,
    max_iter: int = 500,
    barycentric: bool = True,
    gradient: str = "implicit",
    unrolled_iters: int = 20,
    grad_out: Optional[FloatArray] = None,
    grad_value: float = 0.0,
) -> AdaptiveResult:
    """RecGOAT's optimal adaptive transport (OAT): aligns a modality embedding ``m`` (I x d) to the
    collaborative one ``z`` (I x d) through a transport plan ``T`` between their dimensions (cost
    ``cost_scale * mean_i (m_ia - z_ib)^2``, entropic, uniform marginals) and a correction ``delta``
    (d x d): ``aligned = m (d T + delta)`` (``barycentric``; else ``m (T + delta)``). Returns ``aligned``,
    ``plan``, ``cost`` and the OT ``value``; with ``grad_out`` (the gradient of a loss with respect to
    ``aligned``) or ``grad_value`` (the OT value's weight in it), the loss's gradients with respect to
    ``m``, ``z`` and ``delta``, through the plan by implicit differentiation ("implicit"), as a constant
    ("detached", the released code's), or through ``unrolled_iters`` iterations ("unrolled")."""

class InfoNceResult(TypedDict, total=False):
    loss: float
    grad_v1: FloatArray
    grad_v2: FloatArray
    grad_negatives: FloatArray

def info_nce(
    v1: FloatArray,
    v2: FloatArray,
    *,
    temperature: float = 0.2,
    normalize: bool = True,
    symmetric: bool = False,
    negatives: Optional[FloatArray] = None,
    weights: Optional[FloatArray] = None,
    reduction: str = "mean",
    threads: int = 0,
) -> InfoNceResult:
    """InfoNCE over two views of B pairs (B x d each; row b of each is a positive pair, the other rows
    and ``negatives`` (K x d) the negatives), with its gradients ``dloss/dv1``, ``dloss/dv2`` (and
    ``dloss/dnegatives``). ``normalize`` uses cosine similarities; ``symmetric`` averages both directions;
    ``weights`` (B, >= 0) weigh the pairs; ``reduction`` is "mean" or "sum".

    >>> import numpy as np, recgoat
    >>> v = np.eye(2)
    >>> round(recgoat.info_nce(v, v, temperature=0.2)["loss"], 6)  # -log(e^5 / (e^5 + 1))
    0.006715
    """

class Graph:
    """A sparse graph (or matrix) in CSR form, float64 weights (a float32 twin is made for float32 ops)."""

    def __init__(
        self,
        indptr: IntArray,
        indices: IntArray,
        weights: Optional[npt.ArrayLike] = None,
        *,
        shape: Tuple[int, int],
    ) -> None:
        """From CSR arrays: ``indptr`` (n_rows + 1), ``indices`` (sorted and unique within each row),
        optional ``weights`` (one per edge)."""
    @staticmethod
    def from_edges(
        edges: IntArray, weights: Optional[npt.ArrayLike] = None, *, shape: Tuple[int, int]
    ) -> "Graph":
        """From an E x 2 array of (row, column) pairs; repeated pairs are summed."""
    @property
    def shape(self) -> Tuple[int, int]: ...
    @property
    def nnz(self) -> int: ...
    @property
    def indptr(self) -> npt.NDArray[np.int64]: ...
    @property
    def indices(self) -> npt.NDArray[np.int64]: ...
    @property
    def weights(self) -> Optional[npt.NDArray[np.float64]]: ...
    def sym_normalized(self) -> "Graph":
        """``D^-1/2 A D^-1/2``: LightGCN's normalised adjacency."""
    def with_self_loops(self) -> "Graph":
        """The graph with a self loop on every node."""
    def to_dense(self) -> npt.NDArray[np.float64]: ...
    def spmm(self, x: FloatArray, *, threads: int = 0) -> FloatArray:
        """``A @ x`` for features ``x`` (n_cols x d)."""
    def lightgcn_forward(self, e0: FloatArray, layers: int, *, threads: int = 0) -> FloatArray:
        """LightGCN's output: the mean of ``e0`` and its ``layers`` propagations over this graph."""
    def lightgcn_backward(self, grad_out: FloatArray, layers: int, *, threads: int = 0) -> FloatArray:
        """The gradient of ``lightgcn_forward`` with respect to ``e0`` for its output's gradient."""

def knn_graph(
    features: FloatArray,
    k: int,
    *,
    method: str = "exact",
    symmetric: bool = False,
    self_loops: bool = False,
    ef_construction: Optional[int] = None,
    ef_search: Optional[int] = None,
    seed: Optional[int] = None,
    threads: int = 0,
) -> Graph:
    """The cosine k-nearest-neighbour graph of the rows of ``features``: an unweighted edge from row i to
    each of its ``k`` most similar other rows (``symmetric`` adds the reverse edges, ``self_loops`` one per
    row). ``method`` is "exact" or
    "hnsw" (approximate, for large catalogues; ``ef_construction``, ``ef_search`` and ``seed`` tune it)."""

class GatResult(TypedDict, total=False):
    out: FloatArray
    grad_x: FloatArray
    grad_w: FloatArray
    grad_a_src: FloatArray
    grad_a_dst: FloatArray
    grad_bias: FloatArray
    grad_w_res: FloatArray

def gat(
    graph: Graph,
    x: FloatArray,
    w: FloatArray,
    a_src: FloatArray,
    a_dst: Optional[FloatArray] = None,
    *,
    heads: int,
    bias: Optional[FloatArray] = None,
    residual: bool = False,
    w_res: Optional[FloatArray] = None,
    concat: bool = True,
    scoring: str = "gat",
    negative_slope: float = 0.2,
    add_self_loops: bool = True,
    grad_out: Optional[FloatArray] = None,
    threads: int = 0,
) -> GatResult:
    """Graph attention over ``graph`` (row i attends over its columns): GATConv (``scoring="gat"``, with
    ``a_dst``) or GATv2 (``"gatv2"``, ``a_dst`` None). ``x`` is N x F_in, ``w`` F_in x (heads C),
    ``a_src`` / ``a_dst`` heads x C; ``concat`` concatenates the heads (else averages them); ``bias`` (the
    output width), ``residual`` (a projection ``w_res`` when the widths differ, else the identity). Returns
    ``out``, and with ``grad_out`` (the output's gradient) the gradients of every input."""

class Dataset:
    """A validated dataset: training, validation and test interactions and item features."""

    @staticmethod
    def load(path: str, features: Optional[Sequence[str]] = None) -> "Dataset":
        """From a folder (LightGCN split files or an MMRec .inter file, with .npy item features: every
        .npy by default) or a CSV / TSV interaction file with any ids (each user's last 10 % to test, the
        10 % before to validation)."""
    @staticmethod
    def from_arrays(
        train: IntArray,
        valid: IntArray,
        test: IntArray,
        features: Optional[Dict[str, npt.ArrayLike]] = None,
        *,
        name: str = "arrays",
    ) -> "Dataset":
        """From N x 2 integer arrays of (user, item) and item features ``{name: items x width}``."""
    def hold_out_items(self, fraction: float, seed: int) -> "Dataset":
        """A cold-item split: a seeded ``fraction`` of the items held out with all their interactions."""
    @property
    def n_users(self) -> int: ...
    @property
    def n_items(self) -> int: ...
    @property
    def train(self) -> npt.NDArray[np.int64]: ...
    @property
    def valid(self) -> npt.NDArray[np.int64]: ...
    @property
    def test(self) -> npt.NDArray[np.int64]: ...
    @property
    def features(self) -> List[Tuple[str, int]]: ...
    @property
    def cold_items(self) -> List[int]: ...
    @property
    def fingerprint(self) -> str: ...

class Trainer:
    """Trains a model with Adam and early stopping on validation Recall@20.

    >>> import recgoat  # doctest: +SKIP
    >>> data = recgoat.Dataset.load("data/lfm2k", ["text_feat"])  # doctest: +SKIP
    >>> t = recgoat.Trainer(data, "recgoat", epochs=20)  # doctest: +SKIP
    >>> t.fit()  # doctest: +SKIP
    >>> t.evaluate("test")["recall@20"]  # doctest: +SKIP
    """

    def __init__(self, dataset: Dataset, preset: str = "recgoat", *, threads: int = 0, **settings: Any) -> None:
        """``preset`` is "recgoat", "paper", "official_code" or "lightgcn"; any configuration field as a
        keyword (``epochs=50, lr=0.005, embedding_dim=64``)."""
    @staticmethod
    def resume(path: str, dataset: Dataset, *, threads: int = 0) -> "Trainer":
        """From a checkpoint (verified against ``dataset``)."""
    def run_epoch(self) -> Dict[str, Any]:
        """One epoch; its log (loss terms, seconds, validation Recall@20 and NDCG@20 when evaluated)."""
    def fit(self, *, progress: bool = True) -> None:
        """Epochs until the budget is spent or patience runs out (a line per epoch when ``progress``), then
        the best validation epoch's parameters. Ctrl-C stops between epochs."""
    def finish(self) -> None:
        """Restores the best validation epoch's parameters."""
    def evaluate(self, split: str = "test") -> Dict[str, Any]:
        """``recall@10`` ... ``hit@50`` and ``users`` over a split ("valid" or "test"), with ``warm`` and
        ``cold`` sub-dicts when it holds items without training interactions."""
    def save_checkpoint(self, path: str) -> None: ...
    def embeddings(self) -> Tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def recommender(self) -> "Recommender": ...
    @property
    def config(self) -> Dict[str, Any]: ...
    @property
    def state(self) -> Dict[str, Any]: ...

class Recommender:
    """Serves a trained model without the training data."""

    @staticmethod
    def load(path: str) -> "Recommender": ...
    def save(self, path: str) -> None: ...
    @property
    def shape(self) -> Tuple[int, int]: ...
    def recommend(self, users: Sequence[int], k: int = 10) -> List[List[Tuple[int, float]]]:
        """Each user's top ``k`` unseen items as (item, score)."""
    def recommend_history(
        self, history: Sequence[int], k: int = 10, *, user: Optional[int] = None
    ) -> List[Tuple[int, float]]:
        """The top ``k`` items for an item history (a new user, or ``user`` with new interactions), folded
        in without retraining."""
    def score(self, pairs: Sequence[Tuple[int, int]]) -> List[float]: ...
    def similar_items(self, item: int, k: int = 10) -> List[Tuple[int, float]]: ...
    def add_items(self, features: Dict[str, npt.ArrayLike], ids: Optional[List[str]] = None) -> Tuple[int, int]:
        """Adds new items from their feature rows (the training modalities and widths); their id range."""
    def embed_items(self, features: Dict[str, npt.ArrayLike]) -> npt.NDArray[np.float32]: ...
    @property
    def user_vectors(self) -> npt.NDArray[np.float32]: ...
    @property
    def item_vectors(self) -> npt.NDArray[np.float32]: ...
