//! Row normalisations on the GPU: L2 normalisation of rows with its backward
//! (`shaders/normalize_rows*.wgsl`) and layer normalisation with its backward (`shaders/layer_norm*.wgsl`,
//! parameter gradients by `shaders/col_sums.wgsl`).

use super::context::Kernel;
use super::elementwise::{record_col_sums, record_rows, row_vector};
use super::matrix::same_shape;
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};

/// Records `y = x / |x|` per row and the norms (`rows x 1`); zero rows give zero rows and norm 0.
pub(crate) fn record_normalize(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    x: &GpuMatrix,
    y: &GpuMatrix,
    norms: &GpuMatrix,
) -> Result<()> {
    let kernel = Kernel::new("normalize_rows.wgsl", "normalize_rows");
    record_rows(
        ctx,
        enc,
        kernel,
        (x.rows(), x.cols()),
        1,
        0,
        &[&x.buf, &y.buf, &norms.buf],
    )
}

/// Records `dx = (g - (g . y) y) / norm` per row (0 for a zero norm).
pub(crate) fn record_normalize_backward(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    y: &GpuMatrix,
    norms: &GpuMatrix,
    g: &GpuMatrix,
    dx: &GpuMatrix,
) -> Result<()> {
    let kernel = Kernel::new("normalize_rows_backward.wgsl", "normalize_rows_backward");
    let bufs = [&y.buf, &norms.buf, &g.buf, &dx.buf];
    record_rows(ctx, enc, kernel, (y.rows(), y.cols()), 1, 0, &bufs)
}

/// Rows divided by their L2 norms on the device: `(y, norms)` with `norms` a `rows x 1` matrix (the GPU
/// twin of [`crate::nn::l2_normalize`]).
///
/// # Errors
/// [`Error::Param`] naming the first zero row (the norms are read back to check); [`Error::Gpu`].
pub fn l2_normalize(ctx: &GpuContext, x: &GpuMatrix) -> Result<(GpuMatrix, GpuMatrix)> {
    const OP: &str = "gpu::l2_normalize";
    let (y, norms) = l2_normalize_unchecked(ctx, x)?;
    check_norms(ctx, OP, "x", &norms)?;
    Ok((y, norms))
}

/// [`l2_normalize`] without reading the norms back: the caller checks them with [`judge_norms`] (zero
/// rows give non-finite output).
pub(crate) fn l2_normalize_unchecked(
    ctx: &GpuContext,
    x: &GpuMatrix,
) -> Result<(GpuMatrix, GpuMatrix)> {
    const OP: &str = "gpu::l2_normalize";
    let (y, norms) = (
        GpuMatrix::zeros(ctx, x.rows(), x.cols())?,
        GpuMatrix::zeros(ctx, x.rows(), 1)?,
    );
    let mut enc = ctx.encoder();
    record_normalize(ctx, &mut enc, x, &y, &norms)?;
    ctx.submit(OP, enc)?;
    Ok((y, norms))
}

/// Refuses a zero row, as the CPU path does, after reading the norms back (one float per row).
pub(crate) fn check_norms(
    ctx: &GpuContext,
    op: &'static str,
    what: &str,
    norms: &GpuMatrix,
) -> Result<()> {
    judge_norms(op, what, &norms.download_flat(ctx)?.to_vec())
}

/// The error for the first row norm (read back) that is not positive and finite, if any.
pub(crate) fn judge_norms(op: &'static str, what: &str, norms: &[f32]) -> Result<()> {
    if let Some(i) = norms.iter().position(|&v| !(v > 0.0 && v.is_finite())) {
        return Err(Error::Param {
            op,
            name: "rows",
            value: format!("row {i} of {what}"),
            reason: format!("norm {}: cannot be L2-normalised", norms[i]),
        });
    }
    Ok(())
}

/// Backward of [`l2_normalize`]: `dx = (dy - y (y . dy)) / |x|` on the device.
///
/// # Errors
/// [`Error::Shape`] when `y`, `norms` and `grad_y` disagree; [`Error::Gpu`].
pub fn l2_normalize_backward(
    ctx: &GpuContext,
    y: &GpuMatrix,
    norms: &GpuMatrix,
    grad_y: &GpuMatrix,
) -> Result<GpuMatrix> {
    const OP: &str = "gpu::l2_normalize_backward";
    if (grad_y.rows(), grad_y.cols()) != (y.rows(), y.cols())
        || (norms.rows(), norms.cols()) != (y.rows(), 1)
    {
        return Err(Error::shape(
            OP,
            "y, norms (rows x 1), grad_y",
            (y.rows(), y.cols()),
            ((grad_y.rows(), grad_y.cols()), (norms.rows(), norms.cols())),
        ));
    }
    let dx = GpuMatrix::zeros(ctx, y.rows(), y.cols())?;
    let mut enc = ctx.encoder();
    record_normalize_backward(ctx, &mut enc, y, norms, grad_y, &dx)?;
    ctx.submit(OP, enc)?;
    Ok(dx)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LnParams {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
    eps: f32,
    _pad1: [f32; 3],
}

/// What [`layer_norm_backward`] needs, on the device.
#[derive(Debug)]
pub struct GpuLayerNormCache {
    xhat: GpuMatrix,
    inv_std: GpuMatrix,
}

/// [`crate::nn::LayerNorm::forward`] on the device: `y = gamma (x - mean) / sqrt(var + eps) + beta` per
/// row, and the cache for the backward pass.
///
/// # Errors
/// [`Error::Shape`] for a width other than `gamma`'s (or `beta`'s), [`Error::Param`] for `eps <= 0`,
/// [`Error::NonFinite`] for NaN/Inf parameters, [`Error::Gpu`].
pub fn layer_norm_forward(
    ctx: &GpuContext,
    ln: &crate::nn::LayerNorm<f32>,
    x: &GpuMatrix,
) -> Result<(GpuMatrix, GpuLayerNormCache)> {
    check_layer_norm("gpu::layer_norm_forward", ln, x.cols())?;
    layer_norm_forward_with(ctx, &GpuLayerNorm::upload_checked(ctx, ln)?, x)
}

/// A LayerNorm's parameters on the device (`gamma`, `beta` as `1 x d`), so that training can keep them there.
#[derive(Debug)]
pub struct GpuLayerNorm {
    gamma: GpuMatrix,
    beta: GpuMatrix,
    eps: f32,
}

impl GpuLayerNorm {
    /// Copies `ln` to the device.
    ///
    /// # Errors
    /// [`Error::Shape`] for `gamma` and `beta` of different widths, [`Error::Param`] for `eps <= 0`,
    /// [`Error::NonFinite`] for NaN/Inf parameters, [`Error::Gpu`].
    pub fn upload(ctx: &GpuContext, ln: &crate::nn::LayerNorm<f32>) -> Result<GpuLayerNorm> {
        check_layer_norm("GpuLayerNorm::upload", ln, ln.gamma.len())?;
        Self::upload_checked(ctx, ln)
    }

    /// [`GpuLayerNorm::upload`] of parameters the caller has checked.
    fn upload_checked(ctx: &GpuContext, ln: &crate::nn::LayerNorm<f32>) -> Result<GpuLayerNorm> {
        Ok(GpuLayerNorm {
            gamma: row_vector(ctx, &ln.gamma)?,
            beta: row_vector(ctx, &ln.beta)?,
            eps: ln.eps,
        })
    }

    /// The parameters back on the host.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a failed read.
    pub fn download(&self, ctx: &GpuContext) -> Result<crate::nn::LayerNorm<f32>> {
        Ok(crate::nn::LayerNorm {
            gamma: self.gamma.download_flat(ctx)?,
            beta: self.beta.download_flat(ctx)?,
            eps: self.eps,
        })
    }

    /// Parameters already on the device (`1 x d` handles on the given buffers).
    ///
    /// # Errors
    /// [`Error::Shape`] for `gamma` and `beta` of different shapes or not one row; [`Error::Param`] for
    /// `eps <= 0`.
    pub(crate) fn from_parts(gamma: &GpuMatrix, beta: &GpuMatrix, eps: f32) -> Result<Self> {
        const OP: &str = "GpuLayerNorm::from_parts";
        if gamma.rows() != 1 || (gamma.rows(), gamma.cols()) != (beta.rows(), beta.cols()) {
            return Err(Error::shape(
                OP,
                "gamma, beta (1 x d)",
                (1, gamma.cols()),
                ((gamma.rows(), gamma.cols()), (beta.rows(), beta.cols())),
            ));
        }
        if !(eps > 0.0 && eps.is_finite()) {
            return Err(Error::param(OP, "eps", eps, "must be finite and > 0"));
        }
        Ok(GpuLayerNorm {
            gamma: gamma.alias(),
            beta: beta.alias(),
            eps,
        })
    }

    fn check(&self, op: &'static str, x: &GpuMatrix) -> Result<()> {
        if self.gamma.cols() != x.cols() {
            return Err(Error::shape(
                op,
                "gamma, beta vs the width of x",
                x.cols(),
                self.gamma.cols(),
            ));
        }
        Ok(())
    }
}

/// [`layer_norm_forward`] with the parameters already on the device.
///
/// # Errors
/// [`Error::Shape`] for a width other than the parameters'; [`Error::Gpu`].
pub fn layer_norm_forward_with(
    ctx: &GpuContext,
    ln: &GpuLayerNorm,
    x: &GpuMatrix,
) -> Result<(GpuMatrix, GpuLayerNormCache)> {
    const OP: &str = "gpu::layer_norm_forward";
    ln.check(OP, x)?;
    let (n, d) = (x.rows(), x.cols());
    let (gamma, beta) = (&ln.gamma, &ln.beta);
    let (y, xhat) = (GpuMatrix::zeros(ctx, n, d)?, GpuMatrix::zeros(ctx, n, d)?);
    let inv_std = GpuMatrix::zeros(ctx, n, 1)?;
    let kernel = Kernel::new("layer_norm.wgsl", "layer_norm");
    let mut enc = ctx.encoder();
    for (start, groups) in ctx.row_dispatches(n, 1) {
        let params = ctx.uniform_from(&LnParams {
            rows: n as u32,
            d: d as u32,
            row_offset: start as u32,
            _pad: 0,
            eps: ln.eps,
            _pad1: [0.0; 3],
        });
        ctx.dispatch(
            &mut enc,
            kernel,
            &[
                &params,
                &x.buf,
                &gamma.buf,
                &beta.buf,
                &y.buf,
                &xhat.buf,
                &inv_std.buf,
            ],
            groups,
        )?;
    }
    ctx.submit(OP, enc)?;
    Ok((y, GpuLayerNormCache { xhat, inv_std }))
}

/// `ln`'s parameters: widths `width` (that of the input), `eps > 0`, finite values.
fn check_layer_norm(op: &'static str, ln: &crate::nn::LayerNorm<f32>, width: usize) -> Result<()> {
    if ln.gamma.len() != width || ln.beta.len() != width {
        return Err(Error::shape(
            op,
            "gamma, beta vs the width of x",
            width,
            (ln.gamma.len(), ln.beta.len()),
        ));
    }
    if !(ln.eps > 0.0 && ln.eps.is_finite()) {
        return Err(Error::param(op, "eps", ln.eps, "must be finite and > 0"));
    }
    crate::error::check_finite_array(op, "gamma", &ln.gamma.view())?;
    crate::error::check_finite_array(op, "beta", &ln.beta.view())
}

/// [`crate::nn::LayerNorm::backward`] on the device: `(dL/dx, dL/dgamma, dL/dbeta)`, the parameter
/// gradients as `1 x d` matrices.
///
/// # Errors
/// [`Error::Shape`] when `grad_y` does not match the cache or the layer; [`Error::Gpu`].
pub fn layer_norm_backward(
    ctx: &GpuContext,
    ln: &crate::nn::LayerNorm<f32>,
    cache: &GpuLayerNormCache,
    grad_y: &GpuMatrix,
) -> Result<(GpuMatrix, GpuMatrix, GpuMatrix)> {
    check_layer_norm("gpu::layer_norm_backward", ln, grad_y.cols())?;
    layer_norm_backward_with(ctx, &GpuLayerNorm::upload_checked(ctx, ln)?, cache, grad_y)
}

/// [`layer_norm_backward`] with the parameters already on the device.
///
/// # Errors
/// As [`layer_norm_backward`].
pub fn layer_norm_backward_with(
    ctx: &GpuContext,
    ln: &GpuLayerNorm,
    cache: &GpuLayerNormCache,
    grad_y: &GpuMatrix,
) -> Result<(GpuMatrix, GpuMatrix, GpuMatrix)> {
    const OP: &str = "gpu::layer_norm_backward";
    same_shape(OP, "grad_y vs the cached input", &cache.xhat, grad_y)?;
    ln.check(OP, grad_y)?;
    let (n, d) = (grad_y.rows(), grad_y.cols());
    let gamma = &ln.gamma;
    let dx = GpuMatrix::zeros(ctx, n, d)?;
    let (dgamma, dbeta) = (GpuMatrix::zeros(ctx, 1, d)?, GpuMatrix::zeros(ctx, 1, d)?);
    let kernel = Kernel::new("layer_norm_backward.wgsl", "layer_norm_backward");
    let mut enc = ctx.encoder();
    let bufs = [
        &grad_y.buf,
        &gamma.buf,
        &cache.xhat.buf,
        &cache.inv_std.buf,
        &dx.buf,
    ];
    record_rows(ctx, &mut enc, kernel, (n, d), 1, 0, &bufs)?;
    record_col_sums(ctx, &mut enc, grad_y, Some(&cache.xhat), &dgamma)?;
    record_col_sums(ctx, &mut enc, grad_y, None, &dbeta)?;
    ctx.submit(OP, enc)?;
    Ok((dx, dgamma, dbeta))
}
