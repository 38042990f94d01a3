// Sparse x dense product Y = A X over a CSR graph (rows are destinations) for widths that are multiples of
// 4, and in the same pass LightGCN's running mean: sum = (sum + Y) * scale. The twin of `spmm.wgsl` with
// vec4 loads and stores. Baseline WGSL: f32 only, no subgroups, no atomics.
//
// A workgroup of 64 invocations covers 64 / lanes consecutive rows; in each row `lanes` invocations (a power
// of two, at most 64, picked by the host to match the width) walk the row's vec4 columns (c, c + lanes, ...),
// so one neighbour row is gathered in 16-byte loads side by side. Narrow widths put many rows in one group
// (d = 64: 16 lanes, 4 rows; d = 8: 2 lanes, 32 rows) instead of idling lanes.

struct Params {
    n_rows: u32,
    // the width in vec4s (d / 4)
    d4: u32,
    // first row of this dispatch (large graphs are chunked under the device's dispatch limit)
    row_offset: u32,
    // bit 0: the graph has edge weights; bit 1: also update `sum`
    flags: u32,
    scale: f32,
    // invocations per row: 1, 2, 4, ..., 64
    lanes: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indptr: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> sum: array<vec4<f32>>;

@compute @workgroup_size(64, 1, 1)
fn spmm_vec4(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let rows_per_group = 64u / p.lanes;
    let lane = li % p.lanes;
    let r = p.row_offset + wid.x * rows_per_group + li / p.lanes;
    if (r >= p.n_rows) {
        return;
    }
    let start = indptr[r];
    let end = indptr[r + 1u];
    let weighted = (p.flags & 1u) != 0u;
    let accumulate = (p.flags & 2u) != 0u;
    for (var c = lane; c < p.d4; c += p.lanes) {
        var acc = vec4<f32>(0.0);
        for (var e = start; e < end; e++) {
            var w = 1.0;
            if (weighted) {
                w = weights[e];
            }
            acc += w * x[indices[e] * p.d4 + c];
        }
        let o = r * p.d4 + c;
        y[o] = acc;
        if (accumulate) {
            sum[o] = (sum[o] + acc) * p.scale;
        }
    }
}
