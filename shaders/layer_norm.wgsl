// requires: lib/reduce64.wgsl
// Layer normalisation of each row: xhat = (x - mean) / sqrt(var + eps), y = gamma * xhat + beta; keeps xhat
// and 1 / sqrt(var + eps) for the backward pass. One workgroup per row; mean and variance are tree
// reductions in workgroup memory (two passes over the row), a barrier at every level.

struct Params {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
    eps: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> xhat: array<f32>;
@group(0) @binding(6) var<storage, read_write> inv_std: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn layer_norm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    let live = r < p.rows;
    let fd = f32(p.d);
    var s = 0.0;
    if (live) {
        for (var c = lid.x; c < p.d; c += W) {
            s += x[r * p.d + c];
        }
    }
    let mean = reduce_sum(lid.x, s) / fd;
    var q = 0.0;
    if (live) {
        for (var c = lid.x; c < p.d; c += W) {
            let v = x[r * p.d + c] - mean;
            q += v * v;
        }
    }
    let var_ = reduce_sum(lid.x, q) / fd;
    let is = 1.0 / sqrt(var_ + p.eps);
    if (live) {
        for (var c = lid.x; c < p.d; c += W) {
            let o = r * p.d + c;
            let h = (x[o] - mean) * is;
            xhat[o] = h;
            y[o] = gamma[c] * h + beta[c];
        }
        if (lid.x == 0u) {
            inv_std[r] = is;
        }
    }
}
