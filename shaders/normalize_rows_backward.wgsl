// requires: lib/reduce64.wgsl
// Backward of row L2 normalisation: dx_i = (g_i - (g_i . y_i) y_i) / ||x_i|| (0 for a zero row). One
// workgroup per row; the dot product is a tree reduction in workgroup memory.

struct Params {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> norms: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn normalize_rows_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    let live = r < p.rows;
    var s = 0.0;
    if (live) {
        for (var c = lid.x; c < p.d; c += W) {
            s += g[r * p.d + c] * y[r * p.d + c];
        }
    }
    let dot = reduce_sum(lid.x, s);
    if (live) {
        let norm = norms[r];
        var inv = 0.0;
        if (norm > 0.0) {
            inv = 1.0 / norm;
        }
        for (var c = lid.x; c < p.d; c += W) {
            let o = r * p.d + c;
            dx[o] = (g[o] - dot * y[o]) * inv;
        }
    }
}
