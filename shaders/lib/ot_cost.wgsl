// Shared by the dense-cost Sinkhorn kernels (prepended to the files whose leading lines include
// `// requires: lib/ot_cost.wgsl`): their parameters, the cost binding, and the cost C(s, o) between "self"
// index s and "other" index o of the dense matrix (index s * cs_self + o * cs_other: rows for the f-side,
// columns for the g-side). The online squared Euclidean cost has its own tiled kernel,
// sinkhorn_online.wgsl.

struct Params {
    n_self: u32,
    n_other: u32,
    _pad_d: u32,
    offset: u32,
    cs_self: u32,
    cs_other: u32,
    // bit 1: write resid; bit 2: unbalanced (rho)
    flags: u32,
    _pad: u32,
    eps: f32,
    tau: f32,
    rho: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> cost: array<f32>;

const W: u32 = 128u;
const NEG: f32 = -3.4e38;

fn c(s: u32, o: u32) -> f32 {
    return cost[s * p.cs_self + o * p.cs_other];
}
