// requires: lib/reduce64.wgsl
// BPR and the ego-embedding regulariser of one batch of B triples, row by row (nn::bpr_loss and
// nn::l2_regularization). `zu` holds the batch's final user vectors (B x d), `zi` its final item vectors
// stacked [positives; negatives] (2B x d), `e` the ego embeddings stacked [users; positives; negatives]
// (3B x d). Per triple b, with x = z_u . z_n - z_u . z_p:
//   terms[2b] = softplus(x),  terms[2b + 1] = |e_u|^2 + |e_p|^2 + |e_n|^2,
//   gu row: g (z_p - z_n); gi rows: p: g z_u, n: -g z_u; with g = -sigmoid(x) / B,
//   ge rows: 2 reg e / B,
// so the BPR loss is sum(terms[2b]) / B and the regulariser reg * sum(terms[2b + 1]) / B (summed on the host).
// One workgroup per triple; the three dot products are tree reductions in workgroup memory.

struct Params {
    b: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
    inv_b: f32,
    reg: f32,
    _pad1: vec2<f32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> zu: array<f32>;
@group(0) @binding(2) var<storage, read> zi: array<f32>;
@group(0) @binding(3) var<storage, read> e: array<f32>;
@group(0) @binding(4) var<storage, read_write> gu: array<f32>;
@group(0) @binding(5) var<storage, read_write> gi: array<f32>;
@group(0) @binding(6) var<storage, read_write> ge: array<f32>;
@group(0) @binding(7) var<storage, read_write> terms: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn bpr_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    // every invocation reaches every barrier: no early return, guarded work instead
    let live = r < p.b;
    let d = p.d;
    let ru = r * d;
    let rp = (p.b + r) * d;
    let rn = (2u * p.b + r) * d;
    // the item rows in zi / gi
    let ip = r * d;
    let iq = (p.b + r) * d;
    var sp = 0.0;
    var sn = 0.0;
    var ss = 0.0;
    if (live) {
        for (var c = lid.x; c < d; c += W) {
            let u = zu[ru + c];
            sp += u * zi[ip + c];
            sn += u * zi[iq + c];
            let eu = e[ru + c];
            let ep = e[rp + c];
            let en = e[rn + c];
            ss += eu * eu + ep * ep + en * en;
        }
    }
    let pos = reduce_sum(lid.x, sp);
    let neg = reduce_sum(lid.x, sn);
    let sq = reduce_sum(lid.x, ss);
    if (live) {
        let x = neg - pos;
        var sig: f32;
        if (x >= 0.0) {
            sig = 1.0 / (1.0 + exp(-x));
        } else {
            sig = exp(x) / (1.0 + exp(x));
        }
        let g = -sig * p.inv_b;
        let k = 2.0 * p.reg * p.inv_b;
        for (var c = lid.x; c < d; c += W) {
            let u = zu[ru + c];
            gu[ru + c] = g * (zi[ip + c] - zi[iq + c]);
            gi[ip + c] = g * u;
            gi[iq + c] = -g * u;
            ge[ru + c] = k * e[ru + c];
            ge[rp + c] = k * e[rp + c];
            ge[rn + c] = k * e[rn + c];
        }
        if (lid.x == 0u) {
            terms[2u * r] = max(x, 0.0) + log(1.0 + exp(-abs(x)));
            terms[2u * r + 1u] = sq;
        }
    }
}
