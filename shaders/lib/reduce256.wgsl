// Shared by the kernels that run one workgroup of 256 invocations per problem (prepended to the files whose
// leading lines include `// requires: lib/reduce256.wgsl`).
//
// reduce256: the sum of `v` (or, with `take_max`, the largest) over the workgroup's 256 invocations,
// returned to every one of them as a uniform value (workgroupUniformLoad), so that loop bounds and exits may
// depend on it; a tree in workgroup memory with a barrier at every level. Call it from uniform control flow
// only.

const T: u32 = 256u;
var<workgroup> red: array<f32, 256>;
var<workgroup> red_total: f32;

fn reduce256(t: u32, v: f32, take_max: bool) -> f32 {
    red[t] = v;
    workgroupBarrier();
    for (var half = T / 2u; half > 0u; half = half / 2u) {
        if (t < half) {
            if (take_max) {
                red[t] = max(red[t], red[t + half]);
            } else {
                red[t] += red[t + half];
            }
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        red_total = red[0];
    }
    return workgroupUniformLoad(&red_total);
}

