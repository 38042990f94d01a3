// requires: lib/gat.wgsl
// Graph-attention backward, destination pass (one workgroup per node i, over its incoming edges):
//   dalpha[e, h] = mask[e, h] dacc[i, h] . g[j, h]   (dacc: dout, or dout / H broadcast over the heads;
//                                                    mask: attention dropout's, when bound)
//   dlogit[e, h] = alpha[e, h] (dalpha[e, h] - sum_e' alpha[e', h] dalpha[e', h])
//   GATConv: ds[e, h] = dlogit[e, h] LeakyReLU'(el[j, h] + er[i, h]) (stored in dlogit),
//            node_out[i, h] = sum_e ds[e, h]                        (er's gradient, rows of H)
//   GATv2:   node_out[i, f] = sum_e dlogit[e, h] a[f] LeakyReLU'(z_e,f) (the destination's share of dg, rows
//            of H C) and a_node[i, f] = sum_e dlogit[e, h] LeakyReLU(z_e,f), z_e = g[j] + g[i].
// Per-head sums by invocations 0..H-1 through workgroup memory; storage writes of one step are read by
// other invocations only after a storage barrier. Needs H <= 64.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indptr: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read> dout: array<f32>;
@group(0) @binding(5) var<storage, read> alpha: array<f32>;
@group(0) @binding(6) var<storage, read> scores: array<f32>;
@group(0) @binding(7) var<storage, read> a: array<f32>;
@group(0) @binding(8) var<storage, read> mask: array<f32>;
@group(0) @binding(9) var<storage, read_write> dlogit: array<f32>;
@group(0) @binding(10) var<storage, read_write> node_out: array<f32>;
@group(0) @binding(11) var<storage, read_write> a_node: array<f32>;

var<workgroup> hdot: array<f32, 64>;

fn dacc(i: u32, f: u32) -> f32 {
    if (is_concat(p)) {
        return dout[i * p.heads * p.c + f];
    }
    return dout[i * p.c + f % p.c] * p.inv_heads;
}

@compute @workgroup_size(64, 1, 1)
fn gat_backward_dst(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = p.offset + wid.x;
    let live = i < p.n;
    var start = 0u;
    var end = 0u;
    if (live) {
        start = indptr[i];
        end = indptr[i + 1u];
    }
    let hn = p.heads;
    let hc = hn * p.c;
    let pairs = (end - start) * hn;
    // dalpha into dlogit
    for (var q = lid.x; q < pairs; q += 64u) {
        let e = start + q / hn;
        let h = q % hn;
        let j = indices[e];
        var s = 0.0;
        for (var k = 0u; k < p.c; k++) {
            let f = h * p.c + k;
            s += dacc(i, f) * g[j * hc + f];
        }
        if (has_mask(p)) {
            s *= mask[e * hn + h];
        }
        dlogit[e * hn + h] = s;
    }
    storageBarrier();
    if (lid.x < hn) {
        var s = 0.0;
        for (var e = start; e < end; e++) {
            s += alpha[e * hn + lid.x] * dlogit[e * hn + lid.x];
        }
        hdot[lid.x] = s;
    }
    workgroupBarrier();
    for (var q = lid.x; q < pairs; q += 64u) {
        let e = start + q / hn;
        let h = q % hn;
        var d = alpha[e * hn + h] * (dlogit[e * hn + h] - hdot[h]);
        if (!is_v2(p)) {
            let j = indices[e];
            let two_h = 2u * hn;
            d *= leaky_grad(scores[j * two_h + h] + scores[i * two_h + hn + h], p.slope);
        }
        dlogit[e * hn + h] = d;
    }
    storageBarrier();
    if (!live) {
        return;
    }
    if (!is_v2(p)) {
        if (lid.x < hn) {
            var s = 0.0;
            for (var e = start; e < end; e++) {
                s += dlogit[e * hn + lid.x];
            }
            node_out[i * hn + lid.x] = s;
        }
    } else {
        for (var f = lid.x; f < hc; f += 64u) {
            let h = f / p.c;
            var dz = 0.0;
            var da = 0.0;
            for (var e = start; e < end; e++) {
                let z = g[indices[e] * hc + f] + g[i * hc + f];
                let dl = dlogit[e * hn + h];
                dz += dl * a[f] * leaky_grad(z, p.slope);
                da += dl * leaky(z, p.slope);
            }
            node_out[i * hc + f] = dz;
            a_node[i * hc + f] = da;
        }
    }
}
