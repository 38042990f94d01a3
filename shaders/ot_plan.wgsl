// Rows r0 .. r0 + k of an entropic plan over the squared Euclidean cost, in place: `p` holds the block of
// X Y^T (k x m, from gemm.wgsl) and becomes
//   P[i, j] = exp(alpha_i + beta_j - C_ij / eps),  C_ij = max(|x_i|^2 + |y_j|^2 - 2 x_i . y_j, 0)
// (alpha, beta the log scalings of a solved Sinkhorn problem; the clamp as on the CPU, where rounding can
// make the expanded form slightly negative for coincident points). 256 values per workgroup, chunked by
// `offset` under the dispatch limit.

struct Params {
    count: u32,
    offset: u32,
    m: u32,
    row0: u32,
    inv_eps: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> plan: array<f32>;
@group(0) @binding(2) var<storage, read> alpha: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> xsq: array<f32>;
@group(0) @binding(5) var<storage, read> ysq: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn ot_plan(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = p.offset + wid.x * 256u + lid.x;
    if (k < p.count) {
        let i = p.row0 + k / p.m;
        let j = k % p.m;
        let c = max(xsq[i] + ysq[j] - 2.0 * plan[k], 0.0);
        plan[k] = exp(alpha[i] + beta[j] - c * p.inv_eps);
    }
}
