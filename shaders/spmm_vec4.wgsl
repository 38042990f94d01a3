// Sparse x dense product Y = A X over a CSR graph (rows are destinations) for widths that are multiples of
// 4, and in the same pass LightGCN's running mean: sum = (sum + Y) * scale. The twin of `spmm.wgsl` with
// vec4 loads and stores. Baseline WGSL: f32 only, no subgroups, no atomics.
//
// A workgroup of 64 invocations covers 64 / lanes consecutive rows; in each row `lanes` invocations (a power
// of two, at most 64, picked by the host to match the width) walk the row's vec4 columns (c, c + lanes, ...),
// so one neighbour row is gathered in 16-byte loads side by side. Narrow widths put many rows in one group
// (d = 64: 16 lanes, 4 rows; d = 8: 2 lanes, 32 rows) instead of idling lanes.
//
// Balance: rows longer than `long_row` edges are skipped here and done by spmm_vec4_long, which gives each
// such row (listed by the host from the CSR's row lengths) a whole workgroup: its 64 / lanes groups of lanes
// split the row's edges and add their partial sums in workgroup memory. A hub row then takes as long as a row
// 64 / lanes times shorter instead of holding its workgroup's other rows' results back.

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
    // rows with more edges than this are spmm_vec4_long's (0xffffffff: none)
    long_row: u32,
    // spmm_vec4_long: how many rows `long_rows` lists
    n_long: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indptr: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read> weights: array<f32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> sum: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read> long_rows: array<u32>;

// the partial sums of spmm_vec4_long's groups of lanes
var<workgroup> part: array<vec4<f32>, 64>;

// the product of row r's edges start, start + step, ... below end with x's vec4 column c
fn gather(start: u32, end: u32, step: u32, c: u32) -> vec4<f32> {
    let weighted = (p.flags & 1u) != 0u;
    var acc = vec4<f32>(0.0);
    for (var e = start; e < end; e += step) {
        var w = 1.0;
        if (weighted) {
            w = weights[e];
        }
        acc += w * x[indices[e] * p.d4 + c];
    }
    return acc;
}

fn put(r: u32, c: u32, acc: vec4<f32>) {
    let o = r * p.d4 + c;
    y[o] = acc;
    if ((p.flags & 2u) != 0u) {
        sum[o] = (sum[o] + acc) * p.scale;
    }
}

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
    // the bindings both entry points share (the layout comes from what an entry point uses)
    _ = arrayLength(&long_rows);
    if (end - start > p.long_row) {
        return;
    }
    for (var c = lane; c < p.d4; c += p.lanes) {
        put(r, c, gather(start, end, 1u, c));
    }
}

// One workgroup per listed long row (`row_offset` chunks the list under the dispatch limit).
@compute @workgroup_size(64, 1, 1)
fn spmm_vec4_long(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    if (p.row_offset + wid.x >= p.n_long) {
        return;
    }
    let r = long_rows[p.row_offset + wid.x];
    let groups = 64u / p.lanes;
    let lane = li % p.lanes;
    let g = li / p.lanes;
    let start = indptr[r];
    let end = indptr[r + 1u];
    // uniform loop over the row's vec4 columns, `lanes` at a time (the barriers need uniform control flow)
    for (var c0 = 0u; c0 < p.d4; c0 += p.lanes) {
        let c = c0 + lane;
        var acc = vec4<f32>(0.0);
        if (c < p.d4) {
            acc = gather(start + g, end, groups, c);
        }
        part[li] = acc;
        workgroupBarrier();
        if (g == 0u && c < p.d4) {
            var total = part[lane];
            for (var q = 1u; q < groups; q++) {
                total += part[q * p.lanes + lane];
            }
            put(r, c, total);
        }
        workgroupBarrier();
    }
}
