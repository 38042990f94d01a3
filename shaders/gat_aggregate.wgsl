// requires: lib/gat.wgsl
// Softmax of the logits over each node's incoming edges (per head) and the attention-weighted sum of the
// neighbours' projected features: alpha[e, h] (before attention dropout) and out[i] (heads concatenated or
// averaged, plus the bias), each coefficient scaled by the attention-dropout mask when one is bound.
// One workgroup per node; the per-head max and sum are computed by invocations 0..H-1 and shared through
// workgroup memory (a barrier before use). Needs H <= 64.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indptr: array<u32>;
@group(0) @binding(2) var<storage, read> indices: array<u32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read> logits: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read> mask: array<f32>;
@group(0) @binding(7) var<storage, read_write> alpha: array<f32>;
@group(0) @binding(8) var<storage, read_write> out: array<f32>;

fn coef(e: u32, h: u32, mx: f32, sum: f32) -> f32 {
    let w = exp(logits[e * p.heads + h] - mx) / sum;
    if (has_mask(p)) {
        return w * mask[e * p.heads + h];
    }
    return w;
}

var<workgroup> hmax: array<f32, 64>;
var<workgroup> hsum: array<f32, 64>;

@compute @workgroup_size(64, 1, 1)
fn gat_aggregate(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let i = p.offset + wid.x;
    let live = i < p.n;
    var start = 0u;
    var end = 0u;
    if (live) {
        start = indptr[i];
        end = indptr[i + 1u];
    }
    let hn = p.heads;
    if (live && lid.x < hn) {
        var mx = -3.4e38;
        for (var e = start; e < end; e++) {
            mx = max(mx, logits[e * hn + lid.x]);
        }
        var s = 0.0;
        for (var e = start; e < end; e++) {
            s += exp(logits[e * hn + lid.x] - mx);
        }
        hmax[lid.x] = mx;
        hsum[lid.x] = s;
    }
    workgroupBarrier();
    if (!live) {
        return;
    }
    for (var q = lid.x; q < (end - start) * hn; q += 64u) {
        let e = start + q / hn;
        let h = q % hn;
        alpha[e * hn + h] = exp(logits[e * hn + h] - hmax[h]) / hsum[h];
    }
    let hc = hn * p.c;
    let with_bias = (p.flags & 4u) != 0u;
    if (is_concat(p)) {
        for (var f = lid.x; f < hc; f += 64u) {
            let h = f / p.c;
            var acc = 0.0;
            for (var e = start; e < end; e++) {
                acc += coef(e, h, hmax[h], hsum[h]) * g[indices[e] * hc + f];
            }
            if (with_bias) {
                acc += bias[f];
            }
            out[i * hc + f] = acc;
        }
    } else {
        for (var k = lid.x; k < p.c; k += 64u) {
            var acc = 0.0;
            for (var h = 0u; h < hn; h++) {
                for (var e = start; e < end; e++) {
                    acc += coef(e, h, hmax[h], hsum[h]) * g[indices[e] * hc + h * p.c + k];
                }
            }
            acc *= p.inv_heads;
            if (with_bias) {
                acc += bias[k];
            }
            out[i * p.c + k] = acc;
        }
    }
}
