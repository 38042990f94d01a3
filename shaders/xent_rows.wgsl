// InfoNCE's softmax cross-entropy over similarity rows, in place. Row r of s (scaled logits, row stride ld,
// m columns) belongs to anchor b = pos_offset + r, whose positive is column b:
//   loss[b] = coef[b] (logsumexp_j s_rj - s_rb)
//   s_rj   <- coef[b] (softmax_j(s_r) - [j == b])          (dloss / ds, ready for the backward GEMMs)
// One workgroup per row; max and sum are tree reductions in workgroup memory, a barrier at every level.

struct Params {
    rows: u32,
    m: u32,
    ld: u32,
    row_offset: u32,
    pos_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> coef: array<f32>;
@group(0) @binding(2) var<storage, read_write> s: array<f32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;

const W: u32 = 256u;
var<workgroup> part: array<f32, 256>;

fn reduce_max(lid: u32) -> f32 {
    workgroupBarrier();
    for (var half = W / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            part[lid] = max(part[lid], part[lid + half]);
        }
        workgroupBarrier();
    }
    let v = part[0];
    workgroupBarrier();
    return v;
}

fn reduce_sum(lid: u32) -> f32 {
    workgroupBarrier();
    for (var half = W / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            part[lid] += part[lid + half];
        }
        workgroupBarrier();
    }
    let v = part[0];
    workgroupBarrier();
    return v;
}

@compute @workgroup_size(256, 1, 1)
fn xent_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    let live = r < p.rows;
    let base = r * p.ld;
    var mx = -3.4e38;
    if (live) {
        for (var j = lid.x; j < p.m; j += W) {
            mx = max(mx, s[base + j]);
        }
    }
    part[lid.x] = mx;
    let row_max = reduce_max(lid.x);
    var se = 0.0;
    if (live) {
        for (var j = lid.x; j < p.m; j += W) {
            se += exp(s[base + j] - row_max);
        }
    }
    part[lid.x] = se;
    let lse = row_max + log(reduce_sum(lid.x));
    if (live) {
        let pos = p.pos_offset + r;
        let w = coef[pos];
        if (lid.x == 0u) {
            loss[pos] = w * (lse - s[base + pos]);
        }
    }
    // the positive's logit is read above before any invocation overwrites the row
    storageBarrier();
    if (live) {
        let pos = p.pos_offset + r;
        let w = coef[pos];
        for (var j = lid.x; j < p.m; j += W) {
            var v = exp(s[base + j] - lse);
            if (j == pos) {
                v -= 1.0;
            }
            s[base + j] = w * v;
        }
    }
}
