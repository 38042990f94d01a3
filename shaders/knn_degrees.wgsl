// requires: lib/knn_edges.wgsl
// The kNN graph's symmetrisation on the device, first pass: for every listed edge i -> j (j = lists[i k + t])
// whose reverse j -> i is not in j's own list, row j gains i: extra[j] += 1 (an integer atomic). Row i then
// holds its k neighbours, its self loop if asked, and extra[i] reverse edges. Run only to symmetrise.

@group(0) @binding(2) var<storage, read_write> extra: array<atomic<u32>>;

@compute @workgroup_size(256, 1, 1)
fn knn_degrees(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = edge_index(gid);
    if (!edge_exists(e)) {
        return;
    }
    let j = lists[e];
    if (!listed(j, e / p.k)) {
        atomicAdd(&extra[j], 1u);
    }
}
