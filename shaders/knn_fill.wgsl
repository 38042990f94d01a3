// requires: lib/knn_edges.wgsl
// The kNN graph's column indices, on the device: row i starts with its own k neighbours and its self loop if
// asked, then the reverse edges that knn_degrees.wgsl counted, each placed by an integer atomic cursor of its
// row. The rows are sorted afterwards (sort_rows.wgsl).

@group(0) @binding(2) var<storage, read> indptr: array<u32>;
@group(0) @binding(3) var<storage, read_write> cursor: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> indices: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn knn_fill(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = edge_index(gid);
    if (!edge_exists(e)) {
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
