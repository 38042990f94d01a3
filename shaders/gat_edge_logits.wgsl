// requires: lib/gat.wgsl
// Attention logits of every (edge, head): edge e = (j -> i) with i = edge_dst[e], j = indices[e].
//   GATConv: LeakyReLU(el[j, h] + er[i, h]) from the node scores (rows of 2H: el then er);
//   GATv2:   sum_c a[h, c] LeakyReLU(g[j, h, c] + g[i, h, c]).
// One invocation per (edge, head).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indices: array<u32>;
@group(0) @binding(2) var<storage, read> edge_dst: array<u32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read> a: array<f32>;
@group(0) @binding(5) var<storage, read> scores: array<f32>;
@group(0) @binding(6) var<storage, read_write> logits: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn gat_edge_logits(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let idx = p.offset + wid.x * 256u + lid.x;
    if (idx >= p.count) {
        return;
    }
    let e = idx / p.heads;
    let h = idx % p.heads;
    let i = edge_dst[e];
    let j = indices[e];
    if (is_v2(p)) {
        let hc = p.heads * p.c;
        var s = 0.0;
        for (var k = 0u; k < p.c; k++) {
            let f = h * p.c + k;
            s += a[f] * leaky(g[j * hc + f] + g[i * hc + f], p.slope);
        }
        logits[idx] = s;
    } else {
        let two_h = 2u * p.heads;
        logits[idx] = leaky(scores[j * two_h + h] + scores[i * two_h + p.heads + h], p.slope);
    }
}
