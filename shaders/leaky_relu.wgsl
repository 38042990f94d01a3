// LeakyReLU with an optional dropout mask, elementwise over `count` values (a branch layer's activation in
// the model): forward y = leaky(x) * mask; backward dx = g * mask * (x > 0 ? 1 : slope) from the input x.
// Without a mask (flag bit 0 clear) the mask binding is a placeholder and reads as 1. 256 values per
// workgroup, chunked by `offset` under the dispatch limit.

struct Params {
    count: u32,
    offset: u32,
    flags: u32,
    _pad: u32,
    slope: f32,
    _pad1: f32,
    _pad2: f32,
    _pad3: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> mask: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

fn mask_at(k: u32) -> f32 {
    if ((p.flags & 1u) != 0u) {
        return mask[k];
    }
    return 1.0;
}

@compute @workgroup_size(256, 1, 1)
fn leaky_relu_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    // both entry points bind the same buffers (the layout comes from what an entry point uses)
    _ = arrayLength(&g);
    let k = p.offset + wid.x * 256u + lid.x;
    if (k < p.count) {
        let v = x[k];
        out[k] = select(p.slope * v, v, v > 0.0) * mask_at(k);
    }
}

@compute @workgroup_size(256, 1, 1)
fn leaky_relu_backward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = p.offset + wid.x * 256u + lid.x;
    if (k < p.count) {
        out[k] = g[k] * mask_at(k) * select(p.slope, 1.0, x[k] > 0.0);
    }
}
