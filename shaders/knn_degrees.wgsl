// The kNN graph's symmetrisation on the device, first pass: for every listed edge i -> j (j = lists[i k + t],
// the top-k lists of topk_rows.wgsl) whose reverse j -> i is not in j's own list, row j gains i:
// extra[j] += 1 (an integer atomic). Row i then holds its k neighbours, its self loop if asked, and extra[i]
// reverse edges. One invocation per listed edge; `offset` chunks long lists under the dispatch limit.

struct Params {
    n: u32,
    k: u32,
    offset: u32,
    _pad0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> lists: array<u32>;
@group(0) @binding(2) var<storage, read_write> extra: array<atomic<u32>>;

// whether node i is in node j's list
fn listed(j: u32, i: u32) -> bool {
    for (var t = 0u; t < p.k; t++) {
        if (lists[j * p.k + t] == i) {
            return true;
        }
    }
    return false;
}

@compute @workgroup_size(256, 1, 1)
fn knn_degrees(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = p.offset + gid.x;
    if (e >= p.n * p.k) {
        return;
    }
    let i = e / p.k;
    let j = lists[e];
    if (!listed(j, i)) {
        atomicAdd(&extra[j], 1u);
    }
}
