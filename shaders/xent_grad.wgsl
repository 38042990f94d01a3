// requires: lib/gemm_tile.wgsl
// InfoNCE's backward products with the softmax cross-entropy's gradient formed as A is loaded, so the
// similarity block written by xent_logits.wgsl is only read: C = alpha op(G) op(B) + beta C
// (lib/gemm_tile.wgsl), where A is that block (stored at element 0 of its buffer, row stride lda, stored row
// r belonging to anchor pos = aux0 + r) and
//   G[r, j] = coef[pos] (exp(s_rj - lse[pos]) - [j == pos])
// is dloss / ds. Transposed or not, split K or not, as gemm.wgsl. Grid: (ceil(n / 64), ceil(m / 64), K slices).

@group(0) @binding(4) var<storage, read> coef: array<f32>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;

fn load_a(i: u32, q: u32, k_end: u32) -> f32 {
    if (!a_inside(i, q, k_end)) {
        return 0.0;
    }
    let idx = a_index(i, q);
    let pos = p.aux0 + idx / p.lda;
    var g = exp(a[idx] - lse[pos]);
    if (idx % p.lda == pos) {
        g -= 1.0;
    }
    return coef[pos] * g;
}

@compute @workgroup_size(16, 16, 1)
fn xent_grad(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    store_tile(lid, wid, gemm_tile(lid, wid));
}
