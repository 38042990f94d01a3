// The kNN graph's column indices, on the device: row i starts with its own k neighbours (lists[i k ..], the
// top-k lists of topk_rows.wgsl) and its self loop if asked (`self_loop` 1), then the reverse edges that
// knn_degrees.wgsl counted, each placed by an integer atomic cursor of its row. The rows are sorted afterwards
// (sort_rows.wgsl). One invocation per listed edge; `offset` chunks long lists under the dispatch limit.

struct Params {
    n: u32,
    k: u32,
    offset: u32,
    // 1: symmetrise as a union (add the reverse edges); 0: the lists alone
    symmetric: u32,
    self_loop: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lists: array<u32>;
@group(0) @binding(2) var<storage, read> indptr: array<u32>;
@group(0) @binding(3) var<storage, read_write> cursor: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> indices: array<u32>;

fn listed(j: u32, i: u32) -> bool {
    for (var t = 0u; t < p.k; t++) {
        if (lists[j * p.k + t] == i) {
            return true;
        }
    }
    return false;
}

@compute @workgroup_size(256, 1, 1)
fn knn_fill(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = p.offset + gid.x;
    if (e >= p.n * p.k) {
        return;
    }
    let i = e / p.k;
    let t = e % p.k;
    let j = lists[e];
    indices[indptr[i] + t] = j;
    if (t == 0u && p.self_loop == 1u) {
        indices[indptr[i] + p.k] = i;
    }
    if (p.symmetric == 1u && !listed(j, i)) {
        let at = atomicAdd(&cursor[j], 1u);
        indices[indptr[j] + p.k + p.self_loop + at] = i;
    }
}
