// requires: lib/ot_potential.wgsl
// Log-domain Sinkhorn passes over the online squared Euclidean cost, tiled like a matrix product: a
// workgroup of 16 x 16 invocations owns 64 "self" points (rows ty + 16 i of its tile) and walks all "other"
// points 64 at a time (columns tx + 16 j). For each 64 x 64 block the distances
// C(s, o) = sum_k (x_sk - y_ok)^2 are built from 16-coordinate slices staged in workgroup memory, so every
// coordinate loaded is used 64 times, then folded into per-row accumulators:
//   update mode:  lse_s = logsumexp_o (pot_other_o / eps + lw_other_o - C(s, o) / eps)  (running max + sum)
//                 then the potential update of lib/ot_potential.wgsl, as in sinkhorn_update.wgsl
//   measure mode: with P(s, o) = exp(pot_self_s + lw_self_s + pot_other_o + lw_other_o - C(s, o) / eps)
//                 (pot_* hold the log scalings, lw_* zeros), resid_s = sum_o P(s, o) and
//                 aux_s = sum_o P(s, o) C(s, o).
// The 16 partial accumulators of a row are merged by one invocation in a fixed order (deterministic).
// Points are stored transposed (d x n), so consecutive invocations load consecutive addresses.

struct Params {
    n_self: u32,
    n_other: u32,
    d: u32,
    // first self point of this dispatch
    offset: u32,
    // bit 1: write resid (update mode); bit 2: unbalanced (rho); bit 3: measure mode
    flags: u32,
    eps: f32,
    tau: f32,
    rho: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> p_self: array<f32>;
@group(0) @binding(2) var<storage, read> p_other: array<f32>;
@group(0) @binding(3) var<storage, read> w_self: array<f32>;
@group(0) @binding(4) var<storage, read> lw_self: array<f32>;
@group(0) @binding(5) var<storage, read> lw_other: array<f32>;
@group(0) @binding(6) var<storage, read> pot_other: array<f32>;
@group(0) @binding(7) var<storage, read_write> pot_self: array<f32>;
@group(0) @binding(8) var<storage, read_write> resid: array<f32>;
@group(0) @binding(9) var<storage, read_write> aux: array<f32>;

const TM: u32 = 64u;
const TK: u32 = 16u;
const NEG: f32 = -3.4e38;
// coordinate slices: ts[q][i] = x[row0 + i] coordinate k0 + q, to[q][j] = y[o0 + j] coordinate k0 + q;
// after the walk they hold the per-row partials (64 rows x 16, two quantities)
var<workgroup> ts: array<array<f32, 65>, 16>;
var<workgroup> to: array<array<f32, 65>, 16>;

fn coord_self(k: u32, s: u32) -> f32 {
    if (k >= p.d || s >= p.n_self) {
        return 0.0;
    }
    return p_self[k * p.n_self + s];
}

fn coord_other(k: u32, o: u32) -> f32 {
    if (k >= p.d || o >= p.n_other) {
        return 0.0;
    }
    return p_other[k * p.n_other + o];
}

// the per-row pair (u, v) folded with one more term: update mode keeps (max, sum) of a log-sum-exp of
// `t`, measure mode (sum P, sum P C) with P = exp(base + t) and C = `cost`
fn fold(acc: vec2<f32>, t: f32, base: f32, cost: f32, measure: bool) -> vec2<f32> {
    if (measure) {
        let e = exp(base + t);
        return vec2<f32>(acc.x + e, acc.y + e * cost);
    }
    if (t > acc.x) {
        return vec2<f32>(t, acc.y * exp(acc.x - t) + 1.0);
    }
    return vec2<f32>(acc.x, acc.y + exp(t - acc.x));
}

// folds other point o (distances c to the invocation's 4 self points, their log scalings bs in measure
// mode) into the 4 row accumulators; points past n_other are skipped
fn fold_column(
    o: u32,
    c: vec4<f32>,
    bs: vec4<f32>,
    ps: f32,
    inv: f32,
    measure: bool,
    r0: ptr<function, vec2<f32>>,
    r1: ptr<function, vec2<f32>>,
    r2: ptr<function, vec2<f32>>,
    r3: ptr<function, vec2<f32>>,
) {
    if (o >= p.n_other) {
        return;
    }
    let t = pot_other[o] * ps + lw_other[o];
    *r0 = fold(*r0, t - c.x * inv, bs.x, c.x, measure);
    *r1 = fold(*r1, t - c.y * inv, bs.y, c.y, measure);
    *r2 = fold(*r2, t - c.z * inv, bs.z, c.z, measure);
    *r3 = fold(*r3, t - c.w * inv, bs.w, c.w, measure);
}

fn merge(a: vec2<f32>, b: vec2<f32>, measure: bool) -> vec2<f32> {
    if (measure) {
        return a + b;
    }
    let m = max(a.x, b.x);
    if (m == NEG) {
        return vec2<f32>(NEG, 0.0);
    }
    return vec2<f32>(m, a.y * exp(a.x - m) + b.y * exp(b.x - m));
}

@compute @workgroup_size(16, 16, 1)
fn sinkhorn_online(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * 16u + tx;
    let row0 = p.offset + wid.x * TM;
    let measure = (p.flags & 8u) != 0u;
    let inv = 1.0 / p.eps;
    // potentials enter scaled by 1 / eps in update mode; measure mode gets log scalings directly
    var ps = inv;
    var init = vec2<f32>(NEG, 0.0);
    if (measure) {
        ps = 1.0;
        init = vec2<f32>(0.0, 0.0);
    }
    var r0 = init;
    var r1 = init;
    var r2 = init;
    var r3 = init;
    var bs = vec4<f32>(0.0);
    if (measure) {
        bs = vec4<f32>(
            self_scaling(row0 + ty),
            self_scaling(row0 + ty + 16u),
            self_scaling(row0 + ty + 32u),
            self_scaling(row0 + ty + 48u),
        );
    }
    for (var o0 = 0u; o0 < p.n_other; o0 += TM) {
        var acc0 = vec4<f32>(0.0);
        var acc1 = vec4<f32>(0.0);
        var acc2 = vec4<f32>(0.0);
        var acc3 = vec4<f32>(0.0);
        for (var k0 = 0u; k0 < p.d; k0 += TK) {
            for (var r = 0u; r < 4u; r++) {
                let e = flat + r * 256u;
                ts[e / TM][e % TM] = coord_self(k0 + e / TM, row0 + e % TM);
                to[e / TM][e % TM] = coord_other(k0 + e / TM, o0 + e % TM);
            }
            workgroupBarrier();
            for (var q = 0u; q < TK; q++) {
                let bv = vec4<f32>(to[q][tx], to[q][tx + 16u], to[q][tx + 32u], to[q][tx + 48u]);
                let d0 = ts[q][ty] - bv;
                let d1 = ts[q][ty + 16u] - bv;
                let d2 = ts[q][ty + 32u] - bv;
                let d3 = ts[q][ty + 48u] - bv;
                acc0 += d0 * d0;
                acc1 += d1 * d1;
                acc2 += d2 * d2;
                acc3 += d3 * d3;
            }
            workgroupBarrier();
        }
        // fold the 4 x 4 distances into the row accumulators, one column at a time
        let c0 = vec4<f32>(acc0.x, acc1.x, acc2.x, acc3.x);
        let c1 = vec4<f32>(acc0.y, acc1.y, acc2.y, acc3.y);
        let c2 = vec4<f32>(acc0.z, acc1.z, acc2.z, acc3.z);
        let c3 = vec4<f32>(acc0.w, acc1.w, acc2.w, acc3.w);
        fold_column(o0 + tx, c0, bs, ps, inv, measure, &r0, &r1, &r2, &r3);
        fold_column(o0 + tx + 16u, c1, bs, ps, inv, measure, &r0, &r1, &r2, &r3);
        fold_column(o0 + tx + 32u, c2, bs, ps, inv, measure, &r0, &r1, &r2, &r3);
        fold_column(o0 + tx + 48u, c3, bs, ps, inv, measure, &r0, &r1, &r2, &r3);
    }
    // partials of row ty + 16 i from invocation tx: ts[tx][row] (first), to[tx][row] (second)
    ts[tx][ty] = r0.x;
    to[tx][ty] = r0.y;
    ts[tx][ty + 16u] = r1.x;
    to[tx][ty + 16u] = r1.y;
    ts[tx][ty + 32u] = r2.x;
    to[tx][ty + 32u] = r2.y;
    ts[tx][ty + 48u] = r3.x;
    to[tx][ty + 48u] = r3.y;
    workgroupBarrier();
    // one invocation per row finishes it: 64 rows over the first 64 invocations
    if (flat < TM) {
        let s = row0 + flat;
        if (s < p.n_self) {
            var tot = vec2<f32>(ts[0][flat], to[0][flat]);
            for (var t = 1u; t < 16u; t++) {
                tot = merge(tot, vec2<f32>(ts[t][flat], to[t][flat]), measure);
            }
            if (measure) {
                resid[s] = tot.x;
                aux[s] = tot.y;
            } else {
                finish_potential(s, tot.x + log(tot.y), p.flags, p.eps, p.tau, p.rho);
            }
        }
    }
}

// measure mode: the log scaling of self point s (0 past the end)
fn self_scaling(s: u32) -> f32 {
    if (s >= p.n_self) {
        return 0.0;
    }
    return pot_self[s] + lw_self[s];
}
