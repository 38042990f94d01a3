// requires: lib/gat.wgsl
// Graph-attention backward, source pass (one workgroup per node j, over its outgoing edges through the
// transposed graph: t_indices holds the destinations, t_edge_ids the original edge ids; no atomics):
//   dg[j, f] = sum_{e: j -> i} alpha[e, h] mask[e, h] dacc[i, f]   (mask: attention dropout's, when bound)
//            + GATConv: (sum_e ds[e, h]) a_src[f] + er_grad[j, h] a_dst[f], and a_node[j] holds
//              (sum_e ds[e, h]) g[j, f] then er_grad[j, h] g[j, f] (rows of 2 H C) for the a gradients;
//            + GATv2:   sum_e dlogit[e, h] a[f] LeakyReLU'(g[j, f] + g[i, f]) + node_in[j, f] (the
//              destination's share from the other pass).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> t_indptr: array<u32>;
@group(0) @binding(2) var<storage, read> t_indices: array<u32>;
@group(0) @binding(3) var<storage, read> t_edge_ids: array<u32>;
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read> dout: array<f32>;
@group(0) @binding(6) var<storage, read> alpha: array<f32>;
@group(0) @binding(7) var<storage, read> dlogit: array<f32>;
@group(0) @binding(8) var<storage, read> a: array<f32>;
@group(0) @binding(9) var<storage, read> node_in: array<f32>;
@group(0) @binding(10) var<storage, read> mask: array<f32>;
@group(0) @binding(11) var<storage, read_write> dg: array<f32>;
@group(0) @binding(12) var<storage, read_write> a_node: array<f32>;

fn dacc(i: u32, f: u32) -> f32 {
    if (is_concat(p)) {
        return dout[i * p.heads * p.c + f];
    }
    return dout[i * p.c + f % p.c] * p.inv_heads;
}

@compute @workgroup_size(64, 1, 1)
fn gat_backward_src(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = p.offset + wid.x;
    if (j >= p.n) {
        return;
    }
    let start = t_indptr[j];
    let end = t_indptr[j + 1u];
    let hn = p.heads;
    let hc = hn * p.c;
    for (var f = lid.x; f < hc; f += 64u) {
        let h = f / p.c;
        var acc = 0.0;
        var dsum = 0.0;
        for (var t = start; t < end; t++) {
            let e = t_edge_ids[t];
            let i = t_indices[t];
            var w = alpha[e * hn + h];
            if (has_mask(p)) {
                w *= mask[e * hn + h];
            }
            acc += w * dacc(i, f);
            if (is_v2(p)) {
                acc += dlogit[e * hn + h] * a[f] * leaky_grad(g[j * hc + f] + g[i * hc + f], p.slope);
            } else {
                dsum += dlogit[e * hn + h];
            }
        }
        if (is_v2(p)) {
            acc += node_in[j * hc + f];
        } else {
            let er_grad = node_in[j * hn + h];
            acc += dsum * a[f] + er_grad * a[hc + f];
            a_node[j * 2u * hc + f] = dsum * g[j * hc + f];
            a_node[j * 2u * hc + hc + f] = er_grad * g[j * hc + f];
        }
        dg[j * hc + f] = acc;
    }
}
