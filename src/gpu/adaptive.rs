//! RecGOAT's OAT map on the GPU: `aligned = M (d T + Delta)` with the plan `T` of the dimension cost, forward
//! and backward, the same semantics and configuration as [`crate::transport::AdaptiveTransport`].
//!
//! Everything of size `I x d` runs on the device: the moments of the cost (`M^T Z` by GEMM, the column sums
//! of squares), the map product, and the backward GEMMs and column-scaled terms. The `d x d` part (the cost
//! from its moments, the Sinkhorn solve, the plan's gradient through the configured [`PlanGradient`]) is
//! small and runs on the host with the CPU path's code, so every gradient mode is available.
//!
//! [`PlanGradient`]: crate::transport::PlanGradient

use super::dense::{record_add_scaled_cols, record_col_sums, record_gemm, row_vector, Operand};
use super::{GpuContext, GpuMatrix};
use crate::backend::{Backend, Par};
use crate::error::{check_finite, Error, Result};
use crate::transport::{dimension_cost_from_moments, AdaptiveTransport, PlanState};
use ndarray::{Array2, ArrayView2};

/// What [`adaptive_transport_backward`] needs from the forward pass.
#[derive(Debug)]
pub struct GpuAdaptiveCache {
    state: PlanState<f32>,
    map: GpuMatrix,
    shape: (usize, usize),
}

impl GpuAdaptiveCache {
    /// The transport plan `T` (d x d).
    pub fn plan(&self) -> &Array2<f32> {
        &self.state.plan
    }
    /// The dimension cost `C` (d x d).
    pub fn cost(&self) -> &Array2<f32> {
        &self.state.cost
    }
    /// The regularised OT value.
    pub fn value(&self) -> f32 {
        self.state.value
    }
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

/// [`AdaptiveTransport::forward`] with the `I x d` work on the device: `(aligned, cache)`.
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
    check_pair(OP, m, z)?;
    let (n, d) = (m.rows(), m.cols());
    if delta.dim() != (d, d) {
        return Err(Error::shape(OP, "delta", (d, d), delta.dim()));
    }
    check_finite(OP, "delta", delta.iter().copied())?;
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
    ctx.submit(OP, enc)?;
    let cost = dimension_cost_from_moments(
        mtz.download(ctx)?,
        &msq.download_flat(ctx)?,
        &zsq.download_flat(ctx)?,
        n,
        oat.config().cost_scale,
    );
    // the d x d solve on the host
    let state = oat.solve_plan(cost, &Backend::Cpu(Par::Seq))?;
    let map = GpuMatrix::upload(ctx, oat.map(&state, delta).view())?;
    let aligned = GpuMatrix::zeros(ctx, n, d)?;
    let mut enc = ctx.encoder();
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
            state,
            map,
            shape: (n, d),
        },
    ))
}

/// [`AdaptiveTransport::backward`] with the `I x d` work on the device: gradients of
/// `L = <grad_out, aligned> + grad_value * OT value` for the `m` and `z` of the forward pass.
///
/// # Errors
/// [`Error::Shape`] when `m`, `z` or `grad_out` do not match the forward pass, [`Error::NotConverged`] from
/// the implicit solve, [`Error::Gpu`].
pub fn adaptive_transport_backward(
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
    let mut grad_plan = None;
    if let Some(go) = grad_out {
        // dM = G map^T, dDelta = M^T G
        let mut enc = ctx.encoder();
        let g = Operand::of(go, false);
        let (mapt, gm) = (Operand::of(&cache.map, true), Operand::of(&grad_m, false));
        record_gemm(ctx, &mut enc, (n, d, d), 1.0, g, mapt, 0.0, gm)?;
        let (mt, gd) = (Operand::of(m, true), Operand::of(&grad_delta, false));
        record_gemm(ctx, &mut enc, (d, d, n), 1.0, mt, g, 0.0, gd)?;
        ctx.submit(OP, enc)?;
        grad_plan = Some(oat.plan_gradient(&grad_delta.download(ctx)?));
    }
    // the d x d part on the host: dL/dC through the plan and the value
    let gc = oat.cost_gradient(&cache.state, grad_plan, grad_value)?;
    // dimension-cost backward: dM += k (M * rowsum(dC) - Z dC^T), dZ = k (Z * colsum(dC) - M dC)
    let k = 2.0 * oat.config().cost_scale / n as f32;
    let rows = row_vector(ctx, &(gc.sum_axis(ndarray::Axis(1)) * k))?;
    let cols = row_vector(ctx, &(gc.sum_axis(ndarray::Axis(0)) * k))?;
    let gcd = GpuMatrix::upload(ctx, gc.view())?;
    let mut enc = ctx.encoder();
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
