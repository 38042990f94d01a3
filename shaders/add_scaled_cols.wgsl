// y[r, c] += x[r, c] * v[c]: a column-scaled accumulate (the diagonal terms of the dimension cost's
// gradient). One workgroup per row, its invocations over the columns.

struct Params {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn add_scaled_cols(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    if (r >= p.rows) {
        return;
    }
    for (var c = lid.x; c < p.d; c += 64u) {
        let o = r * p.d + c;
        y[o] += x[o] * v[c];
    }
}
