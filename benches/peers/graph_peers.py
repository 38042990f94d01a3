"""DGL and PyG on the problems of benches/graph.rs, for a side-by-side comparison (CPU, 2 threads).

* GAT: 7050 nodes, exact cosine kNN (k = 20) of random 64-d features, symmetrised as a union, self loops;
  GATConv 64 -> 8 heads x 8, float32, no dropout; forward, and forward + backward of sum(out * G).
* LightGCN: one propagation (torch.sparse.mm) on the Baby user-item graph, d = 64.
* kNN: 7050 x 384 features, k = 20, with torch (full similarity matrix + topk).

Run: .venv/bin/python benches/peers/graph_peers.py   (requirements.txt beside this file)
"""
import json
import os
import torch

torch.set_num_threads(2)
os.environ.setdefault("DGLBACKEND", "pytorch")
import dgl  # noqa: E402
from dgl.nn import GATConv as DglGAT  # noqa: E402
import torch_geometric  # noqa: E402
from torch_geometric.nn import GATConv as PygGAT  # noqa: E402

from timing import baby_adjacency, median_time  # noqa: E402


def knn_edges(x, k):
    xn = torch.nn.functional.normalize(x, dim=1)
    s = xn @ xn.T
    s.fill_diagonal_(-float("inf"))
    nbr = s.topk(k, dim=1).indices
    n = x.shape[0]
    dst = torch.arange(n).repeat_interleave(k)
    src = nbr.reshape(-1)
    pairs = torch.cat([torch.stack([dst, src]), torch.stack([src, dst]), torch.arange(n).repeat(2, 1)], dim=1)
    return torch.unique(pairs, dim=1)  # (2, E): row 0 destination, row 1 source


n, k = 7050, 20
g_ = torch.Generator().manual_seed(7050)
feats = torch.randn(n, 64, generator=g_)
edges = knn_edges(feats, k)
dst, src = edges[0], edges[1]
x = torch.randn(n, 64, generator=g_)
G = torch.randn(n, 64, generator=g_)
out = {"torch": torch.__version__, "dgl": dgl.__version__, "torch_geometric": torch_geometric.__version__,
       "threads": torch.get_num_threads(), "gat_nodes": n, "gat_edges": int(edges.shape[1])}

dg = dgl.graph((src, dst), num_nodes=n)
dconv = DglGAT(64, 8, num_heads=8, allow_zero_in_degree=True)
pconv = PygGAT(64, 8, heads=8, concat=True, add_self_loops=False)
ei = torch.stack([src, dst])  # PyG: (source, target)


def dgl_fwd():
    with torch.no_grad():
        dconv(dg, x)


def dgl_fwd_bwd():
    xx = x.clone().requires_grad_(True)
    (dconv(dg, xx).reshape(n, 64) * G).sum().backward()


def pyg_fwd():
    with torch.no_grad():
        pconv(x, ei)


def pyg_fwd_bwd():
    xx = x.clone().requires_grad_(True)
    (pconv(xx, ei) * G).sum().backward()


out["dgl_gat_forward_ms"] = median_time(dgl_fwd) * 1e3
out["dgl_gat_forward_backward_ms"] = median_time(dgl_fwd_bwd) * 1e3
out["pyg_gat_forward_ms"] = median_time(pyg_fwd) * 1e3
out["pyg_gat_forward_backward_ms"] = median_time(pyg_fwd_bwd) * 1e3

# LightGCN propagation on the real Baby graph
A = baby_adjacency()
N = A.shape[0]
E = torch.randn(N, 64, generator=g_) * 0.1
out["baby_nodes"], out["baby_nnz"] = int(N), int(A._nnz())
out["torch_sparse_spmm_d64_ms"] = median_time(lambda: torch.sparse.mm(A, E), reps=50) * 1e3

f384 = torch.randn(n, 384, generator=g_)
out["torch_knn_7050x384_k20_ms"] = median_time(lambda: knn_edges(f384, 20), reps=5, warmup=1) * 1e3
print(json.dumps(out, indent=1))
