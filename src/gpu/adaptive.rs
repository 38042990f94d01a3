//! RecGOAT's OAT map on the GPU: `aligned = M (d T + Delta)` with the plan `T` of the dimension cost, forward
//! and backward, the same semantics and configuration as [`crate::transport::AdaptiveTransport`].
//!
//! Everything of size `I x d` runs on the device: the moments of the cost (`M^T Z` by GEMM, the column sums
//! of squares), the map product, and the backward GEMMs and column-scaled terms. So does the `d x d` part
//! for the detached and the implicit (conjugate-gradient) plan gradients, with a log-domain eps that is
//! absolute or relative to the mean cost, and `d <= 256`: `shaders/oat_prepare.wgsl` forms the cost and
//! eps, `shaders/sinkhorn_small.wgsl` solves with the CPU path's stopping rule, `shaders/oat_map.wgsl`
//! forms the plan and the map, and `shaders/oat_implicit.wgsl` runs the implicit plan gradient in one
//! workgroup. A forward and backward pass then reads nothing back. The other configurations (unrolled
//! gradients, the dense linear solver, other eps statistics or schedules) solve the `d x d` part on the host
//! with the CPU path's code.
//!
//! On the device, the two things the CPU path reports as errors, an eps that is not positive (a constant
//! cost) and CG that does not reach its tolerance, are recorded in a status the cache keeps:
//! [`adaptive_transport_forward`] and [`adaptive_transport_backward`] read it and return the error, and
//! [`adaptive_transport_forward_with`] and [`GpuAdaptiveCache::check`] leave the reading to the caller (a
//! bad eps also makes the plan NaN, so nothing downstream looks valid).
//!
//! [`PlanGradient`]: crate::transport::PlanGradient

use super::elementwise::{record_add_scaled_cols, record_col_sums, row_vector};
use super::gemm::{record_gemm, Operand};
use super::pool::Buf;
use super::transport::{record_small, u32_of, SMALL_PROBLEM};
use super::{context::Kernel, GpuContext, GpuMatrix};
use crate::backend::{Backend, Par};
use crate::error::{check_finite, Error, Result};
use crate::transport::{
    dimension_cost_from_moments, AdaptiveTransport, Domain, EpsScale, EpsSchedule, Epsilon,
    ImplicitConfig, LinearSolver, PlanGradient, PlanState,
};
use ndarray::{Array2, ArrayView2};

/// What [`adaptive_transport_backward`] needs from the forward pass.
#[derive(Debug)]
pub struct GpuAdaptiveCache {
    solve: Solve,
    map: GpuMatrix,
    shape: (usize, usize),
}

/// Where the `d x d` part was solved.
#[derive(Debug)]
enum Solve {
    Host(Box<PlanState<f32>>),
    Device(Box<DeviceSolve>),
}

/// The device-side `d x d` state of one map.
#[derive(Debug)]
struct DeviceSolve {
    cost: GpuMatrix,
    plan: GpuMatrix,
    /// The small solver's table (its eps word is [`EPS_WORD`]).
    table: Buf,
    /// `f` then `g`.
    pot: Buf,
    /// `[eps invalid (0 / 1), CG iterations or -1, CG relative residual]`.
    status: GpuMatrix,
    /// The implicit gradient's settings (`None`: detached), as the forward pass found them.
    implicit: Option<ImplicitConfig<f32>>,
}

/// The stage table word of the one-problem table that holds eps (header of 8 words, then the stage's 4
/// integer words).
const EPS_WORD: u32 = 12;

impl GpuAdaptiveCache {
    /// The transport plan `T` (d x d).
    ///
    /// # Errors
    /// [`Error::Gpu`] when reading the device fails.
    pub fn plan(&self, ctx: &GpuContext) -> Result<Array2<f32>> {
        match &self.solve {
            Solve::Host(s) => Ok(s.plan.clone()),
            Solve::Device(s) => s.plan.download(ctx),
        }
    }

    /// The dimension cost `C` (d x d).
    ///
    /// # Errors
    /// [`Error::Gpu`] when reading the device fails.
    pub fn cost(&self, ctx: &GpuContext) -> Result<Array2<f32>> {
        match &self.solve {
            Solve::Host(s) => Ok(s.cost.clone()),
            Solve::Device(s) => s.cost.download(ctx),
        }
    }

    /// The regularised OT value `<a, f> + <b, g> - eps (sum T - 1)`.
    ///
    /// # Errors
    /// [`Error::Gpu`] when reading the device fails.
    pub fn value(&self, ctx: &GpuContext) -> Result<f32> {
        const OP: &str = "GpuAdaptiveCache::value";
        match &self.solve {
            Solve::Host(s) => Ok(s.value),
            Solve::Device(s) => {
                let (d, word) = (self.shape.1, EPS_WORD as usize);
                // the table's eps word holds f32 bits
                let parts = [(&*s.pot, 2 * d), (&s.table, word + 1), (&s.plan.buf, d * d)];
                let [pot, table, plan]: [Vec<f32>; 3] = ctx
                    .read_many(OP, &parts)?
                    .try_into()
                    .expect("three parts read");
                let side = pot.iter().sum::<f32>() / d as f32;
                Ok(side - table[word] * (plan.iter().sum::<f32>() - 1.0))
            }
        }
    }

    /// Reads the status of the device solve: an eps that is not positive and finite
    /// ([`Error::Param`], as the CPU path) and, after [`adaptive_transport_backward_with`], conjugate
    /// gradients that did not converge ([`Error::NotConverged`]). A host solve has reported its errors
    /// already.
    ///
    /// # Errors
    /// Those two, and [`Error::Gpu`] when reading the device fails.
    pub fn check(&self, ctx: &GpuContext, oat: &AdaptiveTransport<f32>) -> Result<()> {
        match &self.solve {
            Solve::Host(_) => Ok(()),
            Solve::Device(s) => judge(&s.status.download_flat(ctx)?.to_vec(), oat),
        }
    }

    /// The device status `[eps invalid, CG iterations or -1, CG residual]`, for a caller that reads it
    /// with other values and passes it to [`judge`]; `None` for a host solve.
    pub(crate) fn status(&self) -> Option<&GpuMatrix> {
        match &self.solve {
            Solve::Host(_) => None,
            Solve::Device(s) => Some(&s.status),
        }
    }
}

/// The error a device status stands for, if any.
pub(crate) fn judge(status: &[f32], oat: &AdaptiveTransport<f32>) -> Result<()> {
    const OP: &str = "gpu::adaptive_transport";
    if status.first().is_some_and(|&v| v != 0.0) {
        return Err(Error::param(
            OP,
            "sinkhorn.eps",
            format!("{:?}", oat.config().sinkhorn.eps),
            "resolves to an eps that is not positive and finite (is the dimension cost constant, or \
             non-finite?)",
        ));
    }
    if status.get(1).is_some_and(|&v| v < 0.0) {
        let (max_iter, tol) = match &oat.config().gradient {
            PlanGradient::Implicit(ic) => (ic.max_iter, f64::from(ic.tol)),
            _ => (0, f64::NAN),
        };
        return Err(Error::NotConverged {
            op: OP,
            residual: status.get(2).map_or(f64::NAN, |&v| f64::from(v)),
            iterations: max_iter,
            tolerance: tol,
        });
    }
    Ok(())
}

/// Gradients of [`adaptive_transport_backward`], on the device.
#[derive(Debug)]
pub struct GpuAdaptiveGrads {
    /// `dL/dM` (I x d).
    pub grad_m: GpuMatrix,
    /// `dL/dZ` (I x d).
    pub grad_z: GpuMatrix,
    /// `dL/dDelta` (d x d).
    pub grad_delta: GpuMatrix,
}

fn check_pair(op: &'static str, m: &GpuMatrix, z: &GpuMatrix) -> Result<()> {
    if (m.rows(), m.cols()) != (z.rows(), z.cols()) {
        return Err(Error::shape(
            op,
            "collaborative embedding z vs modality embedding m",
            (m.rows(), m.cols()),
            (z.rows(), z.cols()),
        ));
    }
    if m.rows() == 0 || m.cols() == 0 {
        return Err(Error::Empty {
            op,
            what: format!("embeddings of shape {:?}", (m.rows(), m.cols())),
        });
    }
    Ok(())
}

/// Whether the `d x d` part of `oat` runs on the device, and with which implicit configuration (`None`:
/// detached).
fn device_plan(oat: &AdaptiveTransport<f32>, d: usize) -> Option<Option<&ImplicitConfig<f32>>> {
    let s = &oat.config().sinkhorn;
    let eps_ok = matches!(
        s.eps,
        Epsilon::Absolute(_)
            | Epsilon::Relative {
                scale: EpsScale::Mean,
                ..
            }
    );
    if d > SMALL_PROBLEM
        || s.domain != Domain::Log
        || s.schedule != EpsSchedule::Constant
        || !eps_ok
    {
        return None;
    }
    match &oat.config().gradient {
        PlanGradient::Detached => Some(None),
        PlanGradient::Implicit(ic) if ic.solver == LinearSolver::ConjugateGradient => {
            Some(Some(ic))
        }
        _ => None,
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PrepareParams {
    d: u32,
    eps_word: u32,
    relative: u32,
    _pad0: u32,
    inv_rows: f32,
    scale: f32,
    factor: f32,
    _pad1: f32,
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct MapParams {
    d: u32,
    eps_word: u32,
    _pad0: [u32; 2],
    factor: f32,
    _pad1: [f32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ImplicitParams {
    d: u32,
    through_plan: u32,
    max_iter: u32,
    eps_word: u32,
    factor: f32,
    grad_value: f32,
    k: f32,
    ridge_factor: f32,
    tol: f32,
    _pad: [f32; 3],
}

/// [`AdaptiveTransport::forward`] with the `I x d` work on the device, for a `delta` on the host:
/// `(aligned, cache)`. Reads the solve's status back (see [`adaptive_transport_forward_with`]).
///
/// # Errors
/// [`Error::Shape`] / [`Error::Empty`] for mismatched or empty embeddings or a `delta` that is not `d x d`,
/// [`Error::NonFinite`] for NaN/Inf in `delta`, the Sinkhorn errors, [`Error::Gpu`].
pub fn adaptive_transport_forward(
    ctx: &GpuContext,
    oat: &AdaptiveTransport<f32>,
    m: &GpuMatrix,
    z: &GpuMatrix,
    delta: ArrayView2<'_, f32>,
) -> Result<(GpuMatrix, GpuAdaptiveCache)> {
    const OP: &str = "gpu::adaptive_transport_forward";
    let d = m.cols();
    if delta.dim() != (d, d) {
        return Err(Error::shape(OP, "delta", (d, d), delta.dim()));
    }
    check_finite(OP, "delta", delta.iter().copied())?;
    let (aligned, cache) =
        adaptive_transport_forward_with(ctx, oat, m, z, &GpuMatrix::upload(ctx, delta)?)?;
    cache.check(ctx, oat)?;
    Ok((aligned, cache))
}

/// [`adaptive_transport_forward`] for a `delta` on the device. Where the `d x d` part runs on the device
/// (see the module documentation) nothing is read back, so a bad eps is not an error here: call
/// [`GpuAdaptiveCache::check`] (or read [`GpuAdaptiveCache`]'s status with other values) to see it.
///
/// # Errors
/// [`Error::Shape`] / [`Error::Empty`] for mismatched or empty embeddings or a `delta` that is not `d x d`,
/// the Sinkhorn errors of a host solve, [`Error::Gpu`].
pub fn adaptive_transport_forward_with(
    ctx: &GpuContext,
    oat: &AdaptiveTransport<f32>,
    m: &GpuMatrix,
    z: &GpuMatrix,
    delta: &GpuMatrix,
) -> Result<(GpuMatrix, GpuAdaptiveCache)> {
    const OP: &str = "gpu::adaptive_transport_forward";
    check_pair(OP, m, z)?;
    let (n, d) = (m.rows(), m.cols());
    if (delta.rows(), delta.cols()) != (d, d) {
        return Err(Error::shape(
            OP,
            "delta",
            (d, d),
            (delta.rows(), delta.cols()),
        ));
    }
    // the moments of the cost on the device
    let mtz = GpuMatrix::zeros(ctx, d, d)?;
    let (msq, zsq) = (GpuMatrix::zeros(ctx, 1, d)?, GpuMatrix::zeros(ctx, 1, d)?);
    let mut enc = ctx.encoder();
    let (mt, zo, out) = (
        Operand::of(m, true),
        Operand::of(z, false),
        Operand::of(&mtz, false),
    );
    record_gemm(ctx, &mut enc, (d, d, n), 1.0, mt, zo, 0.0, out)?;
    record_col_sums(ctx, &mut enc, m, Some(m), &msq)?;
    record_col_sums(ctx, &mut enc, z, Some(z), &zsq)?;
    let scale = oat.config().cost_scale;
    let map = GpuMatrix::zeros(ctx, d, d)?;
    let solve = if let Some(implicit) = device_plan(oat, d) {
        let moments = (&mtz, &msq, &zsq);
        let ic = implicit.copied();
        let s = record_device_solve(ctx, &mut enc, (oat, ic), n, moments, (delta, &map))?;
        Solve::Device(Box::new(s))
    } else {
        // the d x d solve on the host
        ctx.submit(OP, enc)?;
        enc = ctx.encoder();
        let cost = dimension_cost_from_moments(
            mtz.download(ctx)?,
            &msq.download_flat(ctx)?,
            &zsq.download_flat(ctx)?,
            n,
            scale,
        );
        let state = oat.solve_plan(cost, &Backend::Cpu(Par::Seq))?;
        let delta = delta.download(ctx)?;
        check_finite(OP, "delta", delta.iter().copied())?;
        map.write(
            ctx,
            oat.map(&state, delta.view())
                .as_slice()
                .expect("standard layout"),
        )?;
        Solve::Host(Box::new(state))
    };
    let aligned = GpuMatrix::zeros(ctx, n, d)?;
    let (mo, mp, out) = (
        Operand::of(m, false),
        Operand::of(&map, false),
        Operand::of(&aligned, false),
    );
    record_gemm(ctx, &mut enc, (n, d, d), 1.0, mo, mp, 0.0, out)?;
    ctx.submit(OP, enc)?;
    Ok((
        aligned,
        GpuAdaptiveCache {
            solve,
            map,
            shape: (n, d),
        },
    ))
}

/// Records the device solve of one map (`implicit`: its gradient's settings, `None` for detached): the cost
/// and eps, the Sinkhorn iterations, the plan and `map`.
fn record_device_solve(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    (oat, implicit): (&AdaptiveTransport<f32>, Option<ImplicitConfig<f32>>),
    n: usize,
    (mtz, msq, zsq): (&GpuMatrix, &GpuMatrix, &GpuMatrix),
    (delta, map): (&GpuMatrix, &GpuMatrix),
) -> Result<DeviceSolve> {
    const OP: &str = "gpu::adaptive_transport_forward";
    let cfg = &oat.config().sinkhorn;
    let d = mtz.rows();
    let du = u32_of(OP, d)?;
    let max_iter = u32_of(OP, cfg.max_iter)?;
    let results = 3 + 2 * (cfg.max_iter / cfg.check_every + 1);
    // one problem: the header (n, m, cost, weights and potentials offsets, stages, stage table, results)
    // and its one stage (max_iter, flags, history offset, _, eps (set on the device), tau and rho)
    let mut table: Vec<u32> = vec![du, du, 0, 0, 0, 1, 8, 0];
    table.extend([max_iter, 0, 3, 0]);
    table.extend([0.0f32, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0].map(f32::to_bits));
    debug_assert_eq!(table.len() as u32, EPS_WORD + 8);
    let wv = 1.0 / d as f32;
    let w: Vec<f32> = [wv, wv.ln(), wv, wv.ln()]
        .iter()
        .flat_map(|&v| std::iter::repeat(v).take(d))
        .collect();
    ctx.check_binding(OP, "results", (results * 4) as u64)?;
    let table = ctx.storage_from("oat table", &table);
    let w = ctx.storage_from("oat weights", &w);
    let pot = ctx.storage_zeroed("oat potentials", (2 * d * 4) as u64);
    let out = ctx.storage_zeroed("oat results", (results * 4) as u64);
    let cost = GpuMatrix::zeros(ctx, d, d)?;
    let plan = GpuMatrix::zeros(ctx, d, d)?;
    let status = GpuMatrix::zeros(ctx, 1, 3)?;
    let (relative, factor) = match cfg.eps {
        Epsilon::Absolute(e) => (0, e),
        Epsilon::Relative { factor, .. } => (1, factor),
    };
    let prep = ctx.uniform_from(&PrepareParams {
        d: du,
        eps_word: EPS_WORD,
        relative,
        _pad0: 0,
        inv_rows: 1.0 / n as f32,
        scale: oat.config().cost_scale,
        factor,
        _pad1: 0.0,
    });
    let k = Kernel::new("oat_prepare.wgsl", "oat_prepare");
    let bufs = [&prep, &mtz.buf, &msq.buf, &zsq.buf, &cost.buf, &table];
    ctx.dispatch(enc, k, &bufs, 1)?;
    record_small(ctx, enc, cfg, 1, [&table, &cost.buf, &w, &pot, &out])?;
    let mp = ctx.uniform_from(&MapParams {
        d: du,
        eps_word: EPS_WORD,
        _pad0: [0; 2],
        factor: oat.plan_factor(d),
        _pad1: [0.0; 3],
    });
    let k = Kernel::new("oat_map.wgsl", "oat_map");
    let bufs = [
        &mp,
        &table,
        &cost.buf,
        &w,
        &pot,
        &delta.buf,
        &plan.buf,
        &map.buf,
        &status.buf,
    ];
    ctx.dispatch(enc, k, &bufs, u32_of(OP, (d * d).div_ceil(256))?)?;
    Ok(DeviceSolve {
        cost,
        plan,
        table,
        pot,
        status,
        implicit,
    })
}

/// [`AdaptiveTransport::backward`] with the `I x d` work on the device: gradients of
/// `L = <grad_out, aligned> + grad_value * OT value` for the `m` and `z` of the forward pass. Reads the
/// solve's status back (see [`adaptive_transport_backward_with`]).
///
/// # Errors
/// [`Error::Shape`] when `m`, `z` or `grad_out` do not match the forward pass, [`Error::NotConverged`] from
/// the implicit solve, [`Error::Param`] for the forward pass's bad eps, [`Error::Gpu`].
pub fn adaptive_transport_backward(
    ctx: &GpuContext,
    oat: &AdaptiveTransport<f32>,
    cache: &GpuAdaptiveCache,
    m: &GpuMatrix,
    z: &GpuMatrix,
    grad_out: Option<&GpuMatrix>,
    grad_value: f32,
) -> Result<GpuAdaptiveGrads> {
    let g = adaptive_transport_backward_with(ctx, oat, cache, m, z, grad_out, grad_value)?;
    cache.check(ctx, oat)?;
    Ok(g)
}

/// [`adaptive_transport_backward`] without reading the status of a device solve: where the `d x d` part
/// runs on the device nothing is read back, and CG's convergence is left to [`GpuAdaptiveCache::check`].
///
/// # Errors
/// [`Error::Shape`] when `m`, `z` or `grad_out` do not match the forward pass, [`Error::Param`] for a
/// non-finite `grad_value`, a host solve's [`Error::NotConverged`], [`Error::Gpu`].
pub fn adaptive_transport_backward_with(
    ctx: &GpuContext,
    oat: &AdaptiveTransport<f32>,
    cache: &GpuAdaptiveCache,
    m: &GpuMatrix,
    z: &GpuMatrix,
    grad_out: Option<&GpuMatrix>,
    grad_value: f32,
) -> Result<GpuAdaptiveGrads> {
    const OP: &str = "gpu::adaptive_transport_backward";
    check_pair(OP, m, z)?;
    let (n, d) = cache.shape;
    for (what, x) in [("m", Some(m)), ("z", Some(z)), ("grad_out", grad_out)] {
        if let Some(x) = x {
            if (x.rows(), x.cols()) != (n, d) {
                return Err(Error::shape(OP, what, (n, d), (x.rows(), x.cols())));
            }
        }
    }
    if !grad_value.is_finite() {
        return Err(Error::param(OP, "grad_value", grad_value, "must be finite"));
    }
    let grad_m = GpuMatrix::zeros(ctx, n, d)?;
    let grad_z = GpuMatrix::zeros(ctx, n, d)?;
    let grad_delta = GpuMatrix::zeros(ctx, d, d)?;
    let mut enc = ctx.encoder();
    if let Some(go) = grad_out {
        // dM = G map^T, dDelta = M^T G
        let g = Operand::of(go, false);
        let (mapt, gm) = (Operand::of(&cache.map, true), Operand::of(&grad_m, false));
        record_gemm(ctx, &mut enc, (n, d, d), 1.0, g, mapt, 0.0, gm)?;
        let (mt, gd) = (Operand::of(m, true), Operand::of(&grad_delta, false));
        record_gemm(ctx, &mut enc, (d, d, n), 1.0, mt, g, 0.0, gd)?;
    }
    // dL/dC through the plan and the value, and k x its row and column sums
    let k = 2.0 * oat.config().cost_scale / n as f32;
    let (gcd, rows, cols) = match &cache.solve {
        Solve::Device(s) => {
            let ic = s.implicit.as_ref();
            let gc = GpuMatrix::zeros(ctx, d, d)?;
            let (rows, cols) = (GpuMatrix::zeros(ctx, 1, d)?, GpuMatrix::zeros(ctx, 1, d)?);
            let ip = ctx.uniform_from(&ImplicitParams {
                d: u32_of(OP, d)?,
                through_plan: u32::from(ic.is_some() && grad_out.is_some()),
                max_iter: u32_of(OP, ic.map_or(0, |c| c.max_iter))?,
                eps_word: EPS_WORD,
                factor: oat.plan_factor(d),
                grad_value,
                k,
                ridge_factor: ic.map_or(0.0, |c| c.ridge),
                tol: ic.map_or(0.0, |c| c.tol),
                _pad: [0.0; 3],
            });
            let kern = Kernel::new("oat_implicit.wgsl", "oat_implicit");
            let bufs = [
                &ip,
                &s.table,
                &s.plan.buf,
                &grad_delta.buf,
                &gc.buf,
                &rows.buf,
                &cols.buf,
                &s.status.buf,
            ];
            ctx.dispatch(&mut enc, kern, &bufs, 1)?;
            (gc, rows, cols)
        }
        Solve::Host(state) => {
            ctx.submit(OP, enc)?;
            enc = ctx.encoder();
            let grad_plan = match grad_out {
                Some(_) => Some(oat.plan_gradient(&grad_delta.download(ctx)?)),
                None => None,
            };
            let gc = oat.cost_gradient(state, grad_plan, grad_value)?;
            let rows = row_vector(ctx, &(gc.sum_axis(ndarray::Axis(1)) * k))?;
            let cols = row_vector(ctx, &(gc.sum_axis(ndarray::Axis(0)) * k))?;
            (GpuMatrix::upload(ctx, gc.view())?, rows, cols)
        }
    };
    // dimension-cost backward: dM += k (M * rowsum(dC) - Z dC^T), dZ = k (Z * colsum(dC) - M dC)
    let (zo, mo) = (Operand::of(z, false), Operand::of(m, false));
    let (gm, gz) = (Operand::of(&grad_m, false), Operand::of(&grad_z, false));
    let (gct, gcn) = (Operand::of(&gcd, true), Operand::of(&gcd, false));
    record_gemm(ctx, &mut enc, (n, d, d), -k, zo, gct, 1.0, gm)?;
    record_add_scaled_cols(ctx, &mut enc, m, &rows, &grad_m)?;
    record_gemm(ctx, &mut enc, (n, d, d), -k, mo, gcn, 0.0, gz)?;
    record_add_scaled_cols(ctx, &mut enc, z, &cols, &grad_z)?;
    ctx.submit(OP, enc)?;
    Ok(GpuAdaptiveGrads {
        grad_m,
        grad_z,
        grad_delta,
    })
}
