// requires: lib/ot_cost.wgsl
// The final measurement of a Sinkhorn solve, one side at a time: for every "self" index s against all
// "other" indices o, with the plan P(s, o) = exp(scal_self_s + scal_other_o - C(s, o) / eps)
// (scal = potential / eps + log weight),
//   mass_s = sum_o P(s, o)          (the plan's row or column sums)
//   cost_s = sum_o P(s, o) C(s, o)  (its share of <P, C>)
// as the CPU's measuring pass computes them (no max shift: the scalings of a finished solve keep the terms
// in range). One workgroup per index; the two sums are merged by a tree reduction in workgroup memory, a
// barrier at every level.

@group(0) @binding(2) var<storage, read> scal_self: array<f32>;
@group(0) @binding(3) var<storage, read> scal_other: array<f32>;
@group(0) @binding(4) var<storage, read_write> mass: array<f32>;
@group(0) @binding(5) var<storage, read_write> cost_share: array<f32>;

var<workgroup> pmass: array<f32, 128>;
var<workgroup> pcost: array<f32, 128>;

@compute @workgroup_size(128, 1, 1)
fn sinkhorn_measure(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let s = p.offset + wid.x;
    let live = s < p.n_self;
    let inv = 1.0 / p.eps;
    var sm = 0.0;
    var sc = 0.0;
    if (live) {
        let base = scal_self[s];
        for (var o = lid.x; o < p.n_other; o += W) {
            let cso = c(s, o);
            let e = exp(base + scal_other[o] - cso * inv);
            sm += e;
            sc += e * cso;
        }
    }
    pmass[lid.x] = sm;
    pcost[lid.x] = sc;
    workgroupBarrier();
    for (var half = W / 2u; half > 0u; half = half / 2u) {
        if (lid.x < half) {
            pmass[lid.x] += pmass[lid.x + half];
            pcost[lid.x] += pcost[lid.x + half];
        }
        workgroupBarrier();
    }
    if (live && lid.x == 0u) {
        mass[s] = pmass[0];
        cost_share[s] = pcost[0];
    }
}
