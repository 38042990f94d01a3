// requires: lib/reduce256.wgsl
// RecGOAT's OAT map on the device, step 1 of its d x d solve (one workgroup of 256 invocations): the
// dimension cost from its moments, C_ab = max(0, s (|m_a|^2 / I + |z_b|^2 / I - 2 (M^T Z)_ab / I)) as
// transport::dimension_cost_from_moments computes it, and the Sinkhorn eps (factor x the mean cost, or the
// factor itself when absolute) written into the stage table of sinkhorn_small.wgsl, which solves next.

struct Params {
    d: u32,
    // the table word that holds the stage's eps
    eps_word: u32,
    // 1: eps = factor x mean cost; 0: eps = factor
    relative: u32,
    _pad0: u32,
    inv_rows: f32,
    scale: f32,
    factor: f32,
    _pad1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> mtz: array<f32>;
@group(0) @binding(2) var<storage, read> msq: array<f32>;
@group(0) @binding(3) var<storage, read> zsq: array<f32>;
@group(0) @binding(4) var<storage, read_write> cost: array<f32>;
@group(0) @binding(5) var<storage, read_write> table: array<u32>;

@compute @workgroup_size(256, 1, 1)
fn oat_prepare(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let dd = p.d * p.d;
    var acc = 0.0;
    for (var e = t; e < dd; e += T) {
        let a = e / p.d;
        let b = e % p.d;
        let c = (msq[a] * p.inv_rows + zsq[b] * p.inv_rows - 2.0 * p.inv_rows * mtz[e]) * p.scale;
        cost[e] = max(c, 0.0);
        acc += max(c, 0.0);
    }
    let total = reduce256(t, acc, false);
    if (t == 0u) {
        var eps = p.factor;
        if (p.relative == 1u) {
            eps = p.factor * total / f32(dd);
        }
        table[p.eps_word] = bitcast<u32>(eps);
    }
}
