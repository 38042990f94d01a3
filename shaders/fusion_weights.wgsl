// requires: lib/fusion.wgsl
// The fusion's view weights from its logits, each broadcast over a row: out[v, c] = weight(v) for c < d
// (the column scales of the weighted sum). One workgroup per view, its invocations over the columns.
// Bindings: 0 params, 1 logits (V), 2 out (V x d).

@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn fusion_weights(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let v = p.row_offset + wid.x;
    if (v >= p.rows) {
        return;
    }
    let w = view_weight(v);
    for (var c = lid.x; c < p.d; c += 64u) {
        out[v * p.d + c] = w;
    }
}
