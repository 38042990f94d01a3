// requires: lib/reduce64.wgsl
// Input gradient of layer normalisation: with gx = g * gamma,
//   dx = (gx - mean(gx) - xhat * mean(gx * xhat)) * inv_std.
// One workgroup per row; both means are tree reductions in workgroup memory, a barrier at every level.

struct Params {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> xhat: array<f32>;
@group(0) @binding(4) var<storage, read> inv_std: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn layer_norm_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    let live = r < p.rows;
    let fd = f32(p.d);
    var s = 0.0;
    var t = 0.0;
    if (live) {
        for (var c = lid.x; c < p.d; c += W) {
            let o = r * p.d + c;
            let gx = g[o] * gamma[c];
            s += gx;
            t += gx * xhat[o];
        }
    }
    let mean_g = reduce_sum(lid.x, s) / fd;
    let mean_gx = reduce_sum(lid.x, t) / fd;
    if (live) {
        let is = inv_std[r];
        for (var c = lid.x; c < p.d; c += W) {
            let o = r * p.d + c;
            dx[o] = (g[o] * gamma[c] - mean_g - xhat[o] * mean_gx) * is;
        }
    }
}
