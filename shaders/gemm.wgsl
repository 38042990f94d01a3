// requires: lib/gemm_tile.wgsl
// General matrix product C = alpha * op(A) op(B) + beta * C, op(X) = X or X^T, on row-major f32 buffers
// addressed in place (leading dimensions and offsets): the tiled body of lib/gemm_tile.wgsl with A read as
// stored. Grid: (ceil(n / 64), ceil(m / 64), K slices).

fn load_a(i: u32, q: u32, k_end: u32) -> f32 {
    return a_at(i, q, k_end);
}

@compute @workgroup_size(16, 16, 1)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    store_tile(lid, wid, gemm_tile(lid, wid));
}
