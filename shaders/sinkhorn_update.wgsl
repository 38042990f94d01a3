// requires: lib/ot_cost.wgsl
// requires: lib/ot_potential.wgsl
// One side of a log-domain Sinkhorn iteration with absorbed potentials. For every "self" index s (a row for
// the f-update, a column for the g-update) against all "other" indices o:
//   lse_s   = logsumexp_o (pot_other_o / eps + log w_other_o - C(s, o) / eps)
//   log r_s = pot_self_s / eps + log w_self_s + lse_s          (log of the plan's sum along s)
//   resid_s = exp(log r_s) - goal_s,  goal_s = w_self_s (balanced) or w_self_s exp(-pot_self_s / rho)
//   pot_self_s <- tau (pot_self_s - eps (log r_s - log w_self_s))
// The dense cost C comes from lib/ot_cost.wgsl, the last three lines from lib/ot_potential.wgsl. One
// workgroup per index; the
// log-sum-exp is kept online per invocation (running max and sum) and merged by a tree reduction in
// workgroup memory, a barrier at every level.

@group(0) @binding(2) var<storage, read> w_self: array<f32>;
@group(0) @binding(3) var<storage, read> lw_self: array<f32>;
@group(0) @binding(4) var<storage, read> lw_other: array<f32>;
@group(0) @binding(5) var<storage, read> pot_other: array<f32>;
@group(0) @binding(6) var<storage, read_write> pot_self: array<f32>;
@group(0) @binding(7) var<storage, read_write> resid: array<f32>;

var<workgroup> pmax: array<f32, 128>;
var<workgroup> psum: array<f32, 128>;

@compute @workgroup_size(128, 1, 1)
fn sinkhorn_update(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = p.offset + wid.x;
    let live = s < p.n_self;
    let inv = 1.0 / p.eps;
    var mx = NEG;
    var sm = 0.0;
    if (live) {
        for (var o = lid.x; o < p.n_other; o += W) {
            let v = pot_other[o] * inv + lw_other[o] - c(s, o) * inv;
            if (v > mx) {
                sm = sm * exp(mx - v) + 1.0;
                mx = v;
            } else {
                sm += exp(v - mx);
            }
        }
    }
    pmax[lid.x] = mx;
    psum[lid.x] = sm;
    workgroupBarrier();
    for (var half = W / 2u; half > 0u; half = half / 2u) {
        if (lid.x < half) {
            let m1 = pmax[lid.x];
            let m2 = pmax[lid.x + half];
            let mm = max(m1, m2);
            psum[lid.x] = psum[lid.x] * exp(m1 - mm) + psum[lid.x + half] * exp(m2 - mm);
            pmax[lid.x] = mm;
        }
        workgroupBarrier();
    }
    if (live && lid.x == 0u) {
        finish_potential(s, pmax[0] + log(psum[0]), p.flags, p.eps, p.tau, p.rho);
    }
}
