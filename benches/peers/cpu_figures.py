"""The CPU side-by-side in one run: this crate's criterion benchmarks and the peers' scripts on the same
machine, one after the other, then one table of medians, ratios against the peers and ratios against the
floors measured in the same run.

Run from the checkout's root with the peers' environment (benches/peers/requirements.txt):

    .venv/bin/python benches/peers/cpu_figures.py            # measure, print, and write the table
    .venv/bin/python benches/peers/cpu_figures.py --no-write # measure and print only
    .venv/bin/python benches/peers/cpu_figures.py --reuse    # rebuild the table from the last run's figures

It writes target/cpu-figures/figures.json (every number, with the machine and versions), the table between
the `cpu-figures` markers of docs/RESULTS.md, and the speed line between the same markers of README.md.
Quote no speed figure that is not in its output: the machine is shared and drifts between minutes, so only
figures of one run are compared.
"""
import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import textwrap

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PEERS = os.path.join(ROOT, "benches", "peers")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
OUT = os.path.join(TARGET, "cpu-figures")

# (bench file, criterion filter): the benchmarks the table reads
BENCHES = [
    ("graph", "gat_knn_7050/|knn_7050x384/|lightgcn_baby/(spmm_into_d64|propagate_3layers_fwd_into|floor_gather_cached)"),
    ("contrastive", "info_nce_4096x64/"),
    ("transport", "sinkhorn_log_2000/dense_(10|30)iters"),
]
PEER_SCRIPTS = ["graph_peers.py", "infonce_torch.py", "pot_sinkhorn.py"]


def run(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, text=True, capture_output=True, **kw)


def criterion_median_ms(group, function, value):
    path = os.path.join(TARGET, "criterion", group, function, value, "new", "estimates.json")
    with open(path) as fh:
        return json.load(fh)["median"]["point_estimate"] / 1e6


def measure():
    figures = {"rust": {}, "peers": {}, "notes": {}}
    for bench, filt in BENCHES:
        res = run(["cargo", "bench", "--bench", bench, "--", "--noplot", filt])
        m = re.search(r"gather floor, \d+ interleaved pairs.*ratio median ([0-9.]+)x \(quartiles ([0-9.]+)x\.\.([0-9.]+)x\)",
                      res.stderr)
        if m:
            figures["notes"]["spmm_over_gather_floor_interleaved"] = [float(g) for g in m.groups()]
        for name in ["one_way", "symmetric"]:
            m = re.search(rf"info_nce over its three products, \d+ interleaved pairs.*?{name} ratio median "
                          r"([0-9.]+)x \(quartiles ([0-9.]+)x\.\.([0-9.]+)x\)", res.stderr)
            if m:
                figures["notes"][f"info_nce_{name}_over_products_interleaved"] = [float(g) for g in m.groups()]
    for group, functions in {
        "gat_knn_7050": ["forward", "forward_backward"],
        "knn_7050x384": ["k20"],
        "lightgcn_baby": ["spmm_into_d64", "propagate_3layers_fwd_into", "floor_gather_cached"],
        "info_nce_4096x64": ["fwd_bwd_one_way", "fwd_bwd_symmetric", "gemm_b_by_b", "gemm_three_products"],
        "sinkhorn_log_2000": ["dense_10iters", "dense_30iters"],
    }.items():
        for f in functions:
            for value in ["cpu_seq", "cpu_rayon"]:
                figures["rust"][f"{group}/{f}/{value}"] = criterion_median_ms(group, f, value)
    for script in PEER_SCRIPTS:
        res = run([sys.executable, os.path.join(PEERS, script)])
        figures["peers"].update(json.loads(res.stdout))
    figures["machine"] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "rustc": run(["rustc", "--version"]).stdout.strip(),
        "python": platform.python_version(),
    }
    figures["date"] = datetime.date.today().isoformat()
    return figures


def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def wrap(text):
    return textwrap.fill(text, width=110, break_long_words=False, break_on_hyphens=False)


def ms(x):
    if x is None:
        return ""
    return f"{x:.3g} ms" if x < 100 else f"{x:.0f} ms"


def rows(fig):
    """(workload, ours 2 threads, ours 1 thread, peer name, peer ms, floor name, floor ms) per line."""
    r, p = fig["rust"], fig["peers"]

    def ours(key):
        return r[f"{key}/cpu_rayon"], r[f"{key}/cpu_seq"]

    def per_iter(value):
        return (r[f"sinkhorn_log_2000/dense_30iters/{value}"] - r[f"sinkhorn_log_2000/dense_10iters/{value}"]) / 20

    products = r["info_nce_4096x64/gemm_three_products/cpu_rayon"]
    spmm, gat_f, gat_fb = ours("lightgcn_baby/spmm_into_d64"), ours("gat_knn_7050/forward"), ours(
        "gat_knn_7050/forward_backward")
    return [
        ("SpMM, Baby user-item graph, d = 64 (`spmm_into`)", *spmm, "torch.sparse.mm (CSR)",
         p["torch_sparse_spmm_d64_ms"], "gather floor", r["lightgcn_baby/floor_gather_cached/cpu_rayon"]),
        ("LightGCN, 3 layers forward (`lightgcn_forward_into`)", *ours("lightgcn_baby/propagate_3layers_fwd_into"),
         "", None, "", None),
        ("InfoNCE fwd + bwd, B = 4096, d = 64, one-way", *ours("info_nce_4096x64/fwd_bwd_one_way"), "torch",
         p["torch_infonce_fwd_bwd_one_way_ms"], "its 3 products", products),
        ("InfoNCE fwd + bwd, B = 4096, d = 64, symmetric", *ours("info_nce_4096x64/fwd_bwd_symmetric"), "torch",
         p["torch_infonce_fwd_bwd_symmetric_ms"], "its 3 products", products),
        ("GATConv forward, 7,050 nodes, 64 -> 8 x 8", *gat_f, "DGL", p["dgl_gat_forward_ms"], "", None),
        ("GATConv forward, 7,050 nodes, 64 -> 8 x 8", *gat_f, "PyG", p["pyg_gat_forward_ms"], "", None),
        ("GATConv forward + backward", *gat_fb, "DGL", p["dgl_gat_forward_backward_ms"], "", None),
        ("GATConv forward + backward", *gat_fb, "PyG", p["pyg_gat_forward_backward_ms"], "", None),
        ("exact kNN graph, 7,050 x 384, k = 20", *ours("knn_7050x384/k20"), "torch (matrix + topk)",
         p["torch_knn_7050x384_k20_ms"], "", None),
        ("log-domain Sinkhorn, one iteration, n = m = 2000", per_iter("cpu_rayon"), per_iter("cpu_seq"),
         "POT `sinkhorn_log`", p["sinkhorn_log_per_iter_ms"], "", None),
    ]


def table(fig):
    m, p = fig["machine"], fig["peers"]
    lines = [
        wrap(f"Measured {fig['date']} on {m['cpu']} ({m['cores']} cores), {m['rustc']}, criterion medians; peers "
        f"right after in the same run with 2 threads: torch {p.get('torch', '?')}, DGL {p.get('dgl', '?')}, "
        f"PyG {p.get('torch_geometric', '?')}, POT {p.get('pot_version', '?')}. Command: "
        "`.venv/bin/python benches/peers/cpu_figures.py`."),
        "",
        "| workload | ours, 2 threads | ours, 1 thread | peer, 2 threads | peer / ours | floor, 2 threads | ours / floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, two, one, peer, peer_ms, floor, floor_ms in rows(fig):
        lines.append(
            f"| {name} | **{ms(two)}** | {ms(one)} | {peer + ' ' + ms(peer_ms) if peer else ''} | "
            f"{f'{peer_ms / two:.1f}x' if peer_ms else ''} | {floor + ' ' + ms(floor_ms) if floor else ''} | "
            f"{f'{two / floor_ms:.2f}x' if floor_ms else ''} |")
    notes = fig["notes"]
    inter = notes.get("spmm_over_gather_floor_interleaved")
    if inter:
        lines += ["", wrap(f"SpMM over the gather floor in 400 back-to-back pairs of the same run: median "
                           f"{inter[0]:.2f}x (quartiles {inter[1]:.2f}x-{inter[2]:.2f}x).")]
    one, sym = (notes.get(f"info_nce_{n}_over_products_interleaved") for n in ["one_way", "symmetric"])
    gemm = fig["rust"].get("info_nce_4096x64/gemm_b_by_b/cpu_rayon")
    if one and sym and gemm:
        lines += ["", wrap(
            "InfoNCE's floor is its three products (`S = A P^T`, `dA = S P`, `dP = S^T A`) in its shapes and "
            "row blocks, with nothing else; over it in 40 back-to-back pairs of the same run: one-way median "
            f"{one[0]:.2f}x (quartiles {one[1]:.2f}x-{one[2]:.2f}x), symmetric {sym[0]:.2f}x (quartiles "
            f"{sym[1]:.2f}x-{sym[2]:.2f}x). The backward's two products (inner dimension B) run more slowly in "
            f"this GEMM than the forward's: three products of the forward's shape, `B x d` by `d x B`, take "
            f"{ms(3 * gemm)} (one-way {fig['rust']['info_nce_4096x64/fwd_bwd_one_way/cpu_rayon'] / (3 * gemm):.2f}x "
            "that).")]
    return "\n".join(lines)


def summary(fig):
    by = {(name, peer): (two, peer_ms) for name, two, _, peer, peer_ms, _, _ in rows(fig) if peer_ms}

    def x(start, peer):
        (two, peer_ms), = [v for (name, p), v in by.items() if name.startswith(start) and p == peer]
        return f"{peer_ms / two:.1f}x"

    return wrap(f"Speed against peers on one machine, 2 threads each (`docs/RESULTS.md`, {fig['date']}, "
            f"{fig['machine']['cpu']}): the log-domain Sinkhorn iteration "
            f"{x('log-domain Sinkhorn', 'POT `sinkhorn_log`')} faster than POT's, GATConv forward + backward "
            f"{x('GATConv forward + backward', 'DGL')} faster than DGL and "
            f"{x('GATConv forward + backward', 'PyG')} than PyTorch Geometric, InfoNCE forward + backward "
            f"{x('InfoNCE fwd + bwd, B = 4096, d = 64, one-way', 'torch')} (one-way) and "
            f"{x('InfoNCE fwd + bwd, B = 4096, d = 64, symmetric', 'torch')} (symmetric) faster than PyTorch, "
            f"SpMM {x('SpMM', 'torch.sparse.mm (CSR)')} faster than `torch.sparse.mm` and the exact kNN graph "
            f"{x('exact kNN graph', 'torch (matrix + topk)')} faster than PyTorch.")


def replace_block(path, text):
    with open(path) as fh:
        content = fh.read()
    begin, end = "<!-- cpu-figures:begin -->", "<!-- cpu-figures:end -->"
    if begin not in content or end not in content:
        sys.exit(f"{path}: no {begin} ... {end} block to write into")
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{head}{begin}\n{text}\n{end}{tail}")
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-write", action="store_true", help="print the table, write no file under docs/")
    ap.add_argument("--reuse", action="store_true", help="rebuild the table from target/cpu-figures/figures.json")
    args = ap.parse_args()
    path = os.path.join(OUT, "figures.json")
    if args.reuse:
        with open(path) as fh:
            fig = json.load(fh)
    else:
        fig = measure()
        os.makedirs(OUT, exist_ok=True)
        with open(path, "w") as fh:
            json.dump(fig, fh, indent=1)
    print(table(fig))
    print()
    print(summary(fig))
    if not args.no_write:
        replace_block(os.path.join(ROOT, "docs", "RESULTS.md"), table(fig))
        replace_block(os.path.join(ROOT, "README.md"), summary(fig))


if __name__ == "__main__":
    main()
