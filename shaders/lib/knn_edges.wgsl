// What the kNN graph's edge passes (knn_degrees.wgsl, knn_fill.wgsl) share: their parameters, the top-k
// lists of topk_rows.wgsl (row i's k neighbours at lists[i k ..]), and the test for a reverse edge. One
// invocation per listed edge e = offset + global id (`offset` chunks long lists under the dispatch limit).

struct Params {
    n: u32,
    k: u32,
    offset: u32,
    // 1: symmetrise as a union (add the reverse edges); 0: the lists alone
    symmetric: u32,
    // 1: each row also holds itself
    self_loop: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lists: array<u32>;

// whether node i is in node j's list
fn listed(j: u32, i: u32) -> bool {
    for (var t = 0u; t < p.k; t++) {
        if (lists[j * p.k + t] == i) {
            return true;
        }
    }
    return false;
}

// the listed edge of invocation `gid` (`edge_exists` says whether there is one)
fn edge_index(gid: vec3<u32>) -> u32 {
    return p.offset + gid.x;
}

fn edge_exists(e: u32) -> bool {
    return e < p.n * p.k;
}
