// RecGOAT's OAT map on the device, step 3 of its d x d solve (after oat_prepare.wgsl and
// sinkhorn_small.wgsl): the plan P_ab = a_a b_b exp((f_a + g_b - C_ab) / eps) from the solved potentials and
// the map factor P + Delta, one invocation per entry. An eps that is not positive and finite (a constant cost,
// NaN inputs) makes the plan NaN, so that nothing downstream looks valid, and sets status[0] to 1.
//
// w: a (d), log a (d), b (d), log b (d). pot: f (d) then g (d).

struct Params {
    d: u32,
    eps_word: u32,
    _pad0: u32,
    _pad1: u32,
    factor: f32,
    _pad2: f32,
    _pad3: f32,
    _pad4: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> cost: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read> pot: array<f32>;
@group(0) @binding(5) var<storage, read> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> plan: array<f32>;
@group(0) @binding(7) var<storage, read_write> map: array<f32>;
@group(0) @binding(8) var<storage, read_write> status: array<f32>;

@compute @workgroup_size(256, 1, 1)
fn oat_map(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    let d = p.d;
    if (e >= d * d) {
        return;
    }
    let bits = table[p.eps_word];
    let eps = bitcast<f32>(bits);
    // NaN compares false: a NaN eps fails this too
    let ok = eps > 0.0 && eps <= 3.4028235e38;
    let a = e / d;
    let b = e % d;
    var pl = exp((pot[a] + pot[d + b] - cost[e]) / eps + w[d + a] + w[3u * d + b]);
    if (!ok) {
        // exponent all ones, mantissa non-zero: a quiet NaN
        pl = bitcast<f32>(bits | 0x7fc00000u);
    }
    plan[e] = pl;
    map[e] = p.factor * pl + delta[e];
    if (e == 0u) {
        status[0] = select(1.0, 0.0, ok);
    }
}
