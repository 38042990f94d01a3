// Elementwise product out[k] = a[k] * b[k] over `count` values (feature dropout's mask, and its backward).
// 256 values per workgroup, chunked by `offset` under the dispatch limit.

struct Params {
    count: u32,
    _pad: u32,
    offset: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn hadamard(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = p.offset + wid.x * 256u + lid.x;
    if (k < p.count) {
        out[k] = a[k] * b[k];
    }
}
