// A batch of small log-domain Sinkhorn problems (n, m <= 256 each, dense costs) in one dispatch: one
// workgroup of 256 invocations per problem runs the problem's whole eps schedule, its iterations and its
// convergence checks on the device, with the stopping rule of transport::sinkhorn: every `check_every`
// iterations the row-side marginal error of the current iterate, in the configured norm, is measured during
// the f-update; at err <= tol the iterate before that pass is restored and the stage ends. Invocation s owns
// row s in the f-update and column s in the g-update (a sequential log-sum-exp over the other side, as in
// sinkhorn_update.wgsl, and the potential update of lib/ot_potential.wgsl written out for workgroup memory).
//
// table (u32): problem k at 8 k: n, m, cost offset, weights offset, potentials offset, stages, stage-table
//   offset, result offset. Stage s of a problem at its table offset + 12 s: max_iter, flags (bit 0
//   unbalanced rows, bit 1 unbalanced columns), history offset, _, then as f32 bits: eps, tau_a, tau_b,
//   rho_a, rho_b, _, _, _.
// cost: row-major n x m per problem. w: a (n), log a (n), b (m), log b (m) per problem.
// pot: f (n) then g (m) per problem: the warm start in, the result out.
// out (u32): per problem and stage at result offset + 3 s: iterations, termination (0 converged, 1 the
//   iteration cap), history length; the history (iteration, error as f32 bits) pairs at the stage's offset.
// Non-finite errors are judged on the host from the history (WGSL does not promise NaN comparisons).

struct Params {
    problems: u32,
    // first problem of this dispatch
    offset: u32,
    check_every: u32,
    // 0: L1, 1: L2, 2: LInf
    norm: u32,
    tol: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> cost: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> pot: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

const T: u32 = 256u;
const NEG: f32 = -3.4e38;

var<workgroup> f: array<f32, 256>;
var<workgroup> g: array<f32, 256>;
var<workgroup> fp: array<f32, 256>;
var<workgroup> gp: array<f32, 256>;
var<workgroup> red: array<f32, 256>;
var<workgroup> shared_u: u32;

// log-sum-exp over `count` terms: the running max and sum merged term by term
fn lse_push(acc: vec2<f32>, v: f32) -> vec2<f32> {
    if (v > acc.x) {
        return vec2<f32>(v, acc.y * exp(acc.x - v) + 1.0);
    }
    return vec2<f32>(acc.x, acc.y + exp(v - acc.x));
}

// one value of the table made uniform across the workgroup (loop bounds and exits around barriers)
fn uniform_u32(t: u32, v: u32) -> u32 {
    if (t == 0u) {
        shared_u = v;
    }
    return workgroupUniformLoad(&shared_u);
}

@compute @workgroup_size(256, 1, 1)
fn sinkhorn_small(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = lid.x;
    let k = min(p.offset + wid.x, p.problems - 1u);
    let live_problem = p.offset + wid.x < p.problems;
    let base = 8u * k;
    let n = table[base];
    let m = table[base + 1u];
    let c0 = table[base + 2u];
    let w0 = table[base + 3u];
    let p0 = table[base + 4u];
    let stage0 = table[base + 6u];
    let r0 = table[base + 7u];
    var stages = table[base + 5u];
    if (!live_problem) {
        stages = 0u;
    }
    let n_stages = uniform_u32(t, stages);
    if (t < n) {
        f[t] = pot[p0 + t];
    }
    if (t < m) {
        g[t] = pot[p0 + n + t];
    }
    workgroupBarrier();
    for (var s = 0u; s < n_stages; s++) {
        let so = stage0 + 12u * s;
        let max_iter = uniform_u32(t, table[so]);
        let flags = table[so + 1u];
        let h0 = table[so + 2u];
        let eps = bitcast<f32>(table[so + 4u]);
        let tau_a = bitcast<f32>(table[so + 5u]);
        let tau_b = bitcast<f32>(table[so + 6u]);
        let rho_a = bitcast<f32>(table[so + 7u]);
        let rho_b = bitcast<f32>(table[so + 8u]);
        let inv = 1.0 / eps;
        var iters = max_iter;
        var term = 1u;
        var hist = 0u;
        for (var it = 0u; it < max_iter; it++) {
            let check = (it % p.check_every) == 0u;
            if (check) {
                if (t < n) {
                    fp[t] = f[t];
                }
                if (t < m) {
                    gp[t] = g[t];
                }
            }
            // f-update (reads g and its own f)
            var resid = 0.0;
            var f_new = 0.0;
            if (t < n) {
                var acc = vec2<f32>(NEG, 0.0);
                for (var o = 0u; o < m; o++) {
                    acc = lse_push(acc, g[o] * inv + w[w0 + 2u * n + m + o] - cost[c0 + t * m + o] * inv);
                }
                let old = f[t];
                let log_r = old * inv + w[w0 + n + t] + acc.x + log(acc.y);
                var goal = w[w0 + t];
                if ((flags & 1u) != 0u) {
                    goal = goal * exp(-old / rho_a);
                }
                resid = exp(log_r) - goal;
                f_new = tau_a * (old - eps * (log_r - w[w0 + n + t]));
            }
            workgroupBarrier();
            if (t < n) {
                f[t] = f_new;
            }
            workgroupBarrier();
            // g-update (reads the new f and its own g)
            var g_new = 0.0;
            if (t < m) {
                var acc = vec2<f32>(NEG, 0.0);
                for (var i = 0u; i < n; i++) {
                    acc = lse_push(acc, f[i] * inv + w[w0 + n + i] - cost[c0 + i * m + t] * inv);
                }
                let old = g[t];
                let lb = w[w0 + 2u * n + m + t];
                let log_c = old * inv + lb + acc.x + log(acc.y);
                g_new = tau_b * (old - eps * (log_c - lb));
            }
            workgroupBarrier();
            if (t < m) {
                g[t] = g_new;
            }
            workgroupBarrier();
            if (check) {
                var e = 0.0;
                if (t < n) {
                    e = abs(resid);
                    if (p.norm == 1u) {
                        e = resid * resid;
                    }
                }
                red[t] = e;
                workgroupBarrier();
                for (var half = T / 2u; half > 0u; half = half / 2u) {
                    if (t < half) {
                        if (p.norm == 2u) {
                            red[t] = max(red[t], red[t + half]);
                        } else {
                            red[t] = red[t] + red[t + half];
                        }
                    }
                    workgroupBarrier();
                }
                var err = red[0];
                if (p.norm == 1u) {
                    err = sqrt(err);
                }
                if (t == 0u) {
                    out[h0 + 2u * hist] = it;
                    out[h0 + 2u * hist + 1u] = bitcast<u32>(err);
                }
                hist += 1u;
                let converged = uniform_u32(t, u32(err <= p.tol));
                if (converged == 1u) {
                    // the error belongs to the iterate before this pass: return that iterate
                    if (t < n) {
                        f[t] = fp[t];
                    }
                    if (t < m) {
                        g[t] = gp[t];
                    }
                    iters = it;
                    term = 0u;
                    workgroupBarrier();
                    break;
                }
            }
        }
        if (t == 0u) {
            out[r0 + 3u * s] = iters;
            out[r0 + 3u * s + 1u] = term;
            out[r0 + 3u * s + 2u] = hist;
        }
        workgroupBarrier();
    }
    if (live_problem) {
        if (t < n) {
            pot[p0 + t] = f[t];
        }
        if (t < m) {
            pot[p0 + n + t] = g[t];
        }
    }
}
