// Shared by the row kernels that run 64 invocations per workgroup (prepended to the files whose leading lines
// include `// requires: lib/reduce64.wgsl`).
//
// reduce_sum: the sum of `v` over the workgroup's 64 invocations, returned to every one of them; a tree in
// workgroup memory with a barrier at every level. Call it from uniform control flow only.

const W: u32 = 64u;
var<workgroup> part: array<f32, 64>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    part[lid] = v;
    workgroupBarrier();
    for (var half = W / 2u; half > 0u; half = half / 2u) {
        if (lid < half) {
            part[lid] += part[lid + half];
        }
        workgroupBarrier();
    }
    let total = part[0];
    workgroupBarrier();
    return total;
}

