// InfoNCE's row losses from the statistics of xent_logits.wgsl: row r of the similarity block s (row stride
// ld) belongs to anchor pos = pos_offset + r, whose positive is column pos; its `slots` tile statistics
// (maximum, sum of exp(s - maximum)) at part[(r slots + t) 2 ..] give
//   lse[pos]  = log sum_j exp(s_rj)
//   loss[pos] = coef[pos] (lse[pos] - s_r,pos)
// One invocation per row, 64 per workgroup; `row_offset` chunks long blocks under the dispatch limit.

struct Params {
    rows: u32,
    slots: u32,
    ld: u32,
    pos_offset: u32,
    row_offset: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read> s: array<f32>;
@group(0) @binding(3) var<storage, read> coef: array<f32>;
@group(0) @binding(4) var<storage, read_write> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> loss: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn xent_lse(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = p.row_offset + gid.x;
    if (r >= p.rows) {
        return;
    }
    let base = r * p.slots * 2u;
    var mx = -3.4e38;
    for (var t = 0u; t < p.slots; t++) {
        mx = max(mx, part[base + 2u * t]);
    }
    var se = 0.0;
    for (var t = 0u; t < p.slots; t++) {
        se += part[base + 2u * t + 1u] * exp(part[base + 2u * t] - mx);
    }
    let l = mx + log(se);
    let pos = p.pos_offset + r;
    lse[pos] = l;
    loss[pos] = coef[pos] * (l - s[r * p.ld + pos]);
}
