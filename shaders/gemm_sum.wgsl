// The second half of a split-K GEMM (gemm.wgsl): C[i, j] = sum_z part[z, i, j] + beta C[i, j], where the
// slices part[z] (each m x n, row-major, one after another) already carry alpha. One invocation per output
// element; `offset` chunks long outputs under the dispatch limit.

struct Params {
    m: u32,
    n: u32,
    slices: u32,
    ldc: u32,
    c_off: u32,
    offset: u32,
    beta: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn gemm_sum(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = p.offset + gid.x;
    let mn = p.m * p.n;
    if (e >= mn) {
        return;
    }
    var v = 0.0;
    for (var z = 0u; z < p.slices; z++) {
        v += part[z * mn + e];
    }
    let o = p.c_off + (e / p.n) * p.ldc + e % p.n;
    if (p.beta != 0.0) {
        v += p.beta * c[o];
    }
    c[o] = v;
}
