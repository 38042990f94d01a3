// requires: lib/reduce256.wgsl
// RecGOAT's OAT map on the device: the d x d part of its backward pass (one workgroup of 256 invocations,
// d <= 256; invocation t owns row t and column t). With G = factor x dL/dDelta = dL/dT:
//
//   dL/dC = grad_value T  (the value's envelope term)
//         + T * (wf 1^T + 1 wg^T - G) / eps  (through the plan, when `through_plan`),
//
// with (wf, wg) from the implicit function theorem as transport::implicit_plan_vjp computes them for
// balanced marginals: the Schur system (diag(c) - P^T diag(1 / r) P + ridge I) wg = ehg - P^T (ehf / r),
// solved by conjugate gradients with the CPU path's stopping rule, then wf = (ehf - P wg) / r, where r and
// c are the plan's row and column sums, ehf and ehg those of G * P, and ridge = ridge_factor x max c.
// Also writes k x the row sums and k x the column sums of dL/dC (the dimension cost's backward scales the
// embeddings' columns by them), status[1]: the CG iterations, or -1 when CG did not reach `tol`, and
// status[2]: CG's final relative residual.
// Every loop bound and exit is made uniform through workgroupUniformLoad.

struct Params {
    d: u32,
    through_plan: u32,
    max_iter: u32,
    eps_word: u32,
    factor: f32,
    grad_value: f32,
    k: f32,
    ridge_factor: f32,
    tol: f32,
    _pad0: f32,
    _pad1: f32,
    _pad2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> table: array<u32>;
@group(0) @binding(2) var<storage, read> plan: array<f32>;
@group(0) @binding(3) var<storage, read> gdelta: array<f32>;
@group(0) @binding(4) var<storage, read_write> gc: array<f32>;
@group(0) @binding(5) var<storage, read_write> row_sums: array<f32>;
@group(0) @binding(6) var<storage, read_write> col_sums: array<f32>;
@group(0) @binding(7) var<storage, read_write> status: array<f32>;

var<workgroup> ehf: array<f32, 256>;
var<workgroup> dinv: array<f32, 256>;
var<workgroup> dir: array<f32, 256>;
var<workgroup> u: array<f32, 256>;

@compute @workgroup_size(256, 1, 1)
fn oat_implicit(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    let d = p.d;
    let live = t < d;
    let eps = bitcast<f32>(table[p.eps_word]);
    // the plan's row (column) sums and those of G * P
    var r = 0.0;
    var ehf_t = 0.0;
    var c = 0.0;
    var ehg_t = 0.0;
    if (live) {
        for (var j = 0u; j < d; j++) {
            let pij = plan[t * d + j];
            r += pij;
            ehf_t += p.factor * gdelta[t * d + j] * pij;
        }
        for (var i = 0u; i < d; i++) {
            let pij = plan[i * d + t];
            c += pij;
            ehg_t += p.factor * gdelta[i * d + t] * pij;
        }
    }
    var wf_t = 0.0;
    var wg_t = 0.0;
    var state = 0.0;
    var rel = 0.0;
    if (p.through_plan == 1u) {
        var dinv_t = 0.0;
        if (live) {
            dinv_t = 1.0 / r;
        }
        dinv[t] = dinv_t;
        ehf[t] = ehf_t;
        let ridge = p.ridge_factor * reduce256(t, c, true);
        var rhs = 0.0;
        if (live) {
            rhs = ehg_t;
            for (var i = 0u; i < d; i++) {
                rhs -= plan[i * d + t] * ehf[i] * dinv[i];
            }
        }
        // conjugate gradients from x = 0
        var x_t = 0.0;
        var res_t = rhs;
        dir[t] = rhs;
        var rr = reduce256(t, rhs * rhs, false);
        let bnorm = sqrt(rr);
        var iters = 0u;
        var converged = bnorm == 0.0;
        if (!converged) {
            iters = p.max_iter;
            for (var it = 0u; it < p.max_iter; it++) {
                if (sqrt(rr) <= p.tol * bnorm) {
                    converged = true;
                    iters = it;
                    break;
                }
                // ad = (diag(c) + ridge) dir - P^T ((P dir) / r)
                if (live) {
                    var s = 0.0;
                    for (var j = 0u; j < d; j++) {
                        s += plan[t * d + j] * dir[j];
                    }
                    u[t] = s * dinv_t;
                }
                workgroupBarrier();
                var ad = 0.0;
                if (live) {
                    var s = 0.0;
                    for (var i = 0u; i < d; i++) {
                        s += plan[i * d + t] * u[i];
                    }
                    ad = (c + ridge) * dir[t] - s;
                }
                let curv = reduce256(t, dir[t] * ad, false);
                if (!(curv > 0.0 && curv <= 3.4028235e38)) {
                    break;
                }
                let step = rr / curv;
                x_t += step * dir[t];
                res_t -= step * ad;
                let rr_new = reduce256(t, res_t * res_t, false);
                dir[t] = res_t + (rr_new / rr) * dir[t];
                rr = rr_new;
                workgroupBarrier();
            }
            if (!converged) {
                converged = sqrt(rr) <= p.tol * bnorm;
            }
        }
        // wf = (ehf - P wg) / r, with wg = x
        u[t] = x_t;
        workgroupBarrier();
        if (live) {
            var s = 0.0;
            for (var j = 0u; j < d; j++) {
                s += plan[t * d + j] * u[j];
            }
            wf_t = (ehf_t - s) * dinv_t;
        }
        wg_t = x_t;
        state = select(-1.0, f32(iters), converged);
        if (bnorm > 0.0) {
            rel = sqrt(rr) / bnorm;
        }
        workgroupBarrier();
    }
    // dL/dC, its row sums (invocation t's row) and column sums (invocation t's column)
    ehf[t] = wf_t;
    dir[t] = wg_t;
    workgroupBarrier();
    let inv = 1.0 / eps;
    if (live) {
        var rs = 0.0;
        for (var j = 0u; j < d; j++) {
            let e = t * d + j;
            var v = p.grad_value * plan[e];
            if (p.through_plan == 1u) {
                v += plan[e] * (wf_t + dir[j] - p.factor * gdelta[e]) * inv;
            }
            gc[e] = v;
            rs += v;
        }
        row_sums[t] = p.k * rs;
        var cs = 0.0;
        for (var i = 0u; i < d; i++) {
            let e = i * d + t;
            var v = p.grad_value * plan[e];
            if (p.through_plan == 1u) {
                v += plan[e] * (ehf[i] + wg_t - p.factor * gdelta[e]) * inv;
            }
            cs += v;
        }
        col_sums[t] = p.k * cs;
    }
    if (t == 0u) {
        status[1] = state;
        status[2] = rel;
    }
}
