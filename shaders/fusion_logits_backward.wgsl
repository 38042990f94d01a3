// requires: lib/fusion.wgsl
// The gradient of the fusion logits from sums[v, c] = column c's sum of view_v * dL/dy:
// dw_v = sum_c sums[v, c]; softmax: grad[v] = w_v (dw_v - sum_u w_u dw_u); free scalars: grad[v] = dw_v.
// One workgroup per view; its first invocation does the (V x d) work, sequentially.
// Bindings: 0 params, 1 logits (V), 2 sums (V x d), 3 grad (V).

@group(0) @binding(2) var<storage, read> sums: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad: array<f32>;

fn view_total(v: u32) -> f32 {
    var s = 0.0;
    for (var c = 0u; c < p.d; c++) {
        s += sums[v * p.d + c];
    }
    return s;
}

@compute @workgroup_size(64, 1, 1)
fn fusion_logits_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let v = p.row_offset + wid.x;
    if (v >= p.rows || lid.x != 0u) {
        return;
    }
    let dv = view_total(v);
    if ((p.flags & 1u) == 0u) {
        grad[v] = dv;
        return;
    }
    var s = 0.0;
    for (var u = 0u; u < p.rows; u++) {
        s += view_weight(u) * view_total(u);
    }
    grad[v] = view_weight(v) * (dv - s);
}
