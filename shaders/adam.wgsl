// One Adam step over `count` parameters (nn::Adam::update): the L2 weight decay added to the gradient, the
// moments updated in place, the bias corrections c1 = 1 - beta1^t and c2 = 1 - beta2^t computed on the host.
// 256 values per workgroup, chunked by `offset` under the dispatch limit.

struct Params {
    count: u32,
    offset: u32,
    _pad: vec2<u32>,
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    c1: f32,
    c2: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m: array<f32>;
@group(0) @binding(4) var<storage, read_write> v: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn adam(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let k = p.offset + wid.x * 256u + lid.x;
    if (k < p.count) {
        let g = grad[k] + p.weight_decay * param[k];
        let mk = p.beta1 * m[k] + (1.0 - p.beta1) * g;
        let vk = p.beta2 * v[k] + (1.0 - p.beta2) * g * g;
        m[k] = mk;
        v[k] = vk;
        param[k] = param[k] - p.lr * (mk / p.c1) / (sqrt(vk / p.c2) + p.eps);
    }
}
