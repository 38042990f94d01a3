// Sparse x dense product Y = A X over a CSR graph (rows are destinations), and in the same pass LightGCN's
// running mean: sum = (sum + Y) * scale. Baseline WGSL: f32 only, no subgroups, no atomics.
//
// One workgroup covers ROWS consecutive rows; in each row the LANES invocations walk the feature columns
// (c, c + LANES, ...), so the gathers of one neighbour row are coalesced.

struct Params {
    n_rows: u32,
    d: u32,
    // first row of this dispatch (large graphs are chunked under the device's dispatch limit)
    row_offset: u32,
    // bit 0: the graph has edge weights; bit 1: also update `sum`
    flags: u32,
    scale: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indptr: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read_write> sum: array<f32>;

const LANES: u32 = 64u;
const ROWS: u32 = 4u;

@compute @workgroup_size(64, 4, 1)
fn spmm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x * ROWS + lid.y;
    if (r >= p.n_rows) {
        return;
    }
    let start = indptr[r];
    let end = indptr[r + 1u];
    let weighted = (p.flags & 1u) != 0u;
    let accumulate = (p.flags & 2u) != 0u;
    for (var c = lid.x; c < p.d; c += LANES) {
        var acc = 0.0;
        for (var e = start; e < end; e++) {
            var w = 1.0;
            if (weighted) {
                w = weights[e];
            }
            acc += w * x[indices[e] * p.d + c];
        }
        let o = r * p.d + c;
        y[o] = acc;
        if (accumulate) {
            sum[o] = (sum[o] + acc) * p.scale;
        }
    }
}
