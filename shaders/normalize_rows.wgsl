// requires: lib/reduce64.wgsl
// Row L2 normalisation: y_i = x_i / ||x_i||, norms_i = ||x_i|| (a zero row gives y_i = 0, norm 0; callers
// check the norms). One workgroup per row; the sum of squares is a tree reduction in workgroup memory.

struct Params {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage, read_write> norms: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn normalize_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    // every invocation of the workgroup reaches every barrier: no early return, guarded work instead
    let live = r < p.rows;
    var s = 0.0;
    if (live) {
        for (var c = lid.x; c < p.d; c += W) {
            let v = x[r * p.d + c];
            s += v * v;
        }
    }
    let norm = sqrt(reduce_sum(lid.x, s));
    if (live) {
        var inv = 0.0;
        if (norm > 0.0) {
            inv = 1.0 / norm;
        }
        for (var c = lid.x; c < p.d; c += W) {
            y[r * p.d + c] = x[r * p.d + c] * inv;
        }
        if (lid.x == 0u) {
            norms[r] = norm;
        }
    }
}
