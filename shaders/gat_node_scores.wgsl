// requires: lib/gat.wgsl
// GATConv node scores: scores[i, h] = a_src[h] . g[i, h] and scores[i, H + h] = a_dst[h] . g[i, h] (rows of
// 2H). One invocation per (node, head).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> g: array<f32>;
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn gat_node_scores(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = p.offset + wid.x * 256u + lid.x;
    if (idx >= p.count) {
        return;
    }
    let i = idx / p.heads;
    let h = idx % p.heads;
    let hc = p.heads * p.c;
    var s = 0.0;
    var t = 0.0;
    for (var k = 0u; k < p.c; k++) {
        let gv = g[i * hc + h * p.c + k];
        s += a[h * p.c + k] * gv;
        t += a[hc + h * p.c + k] * gv;
    }
    scores[i * 2u * p.heads + h] = s;
    scores[i * 2u * p.heads + p.heads + h] = t;
}
