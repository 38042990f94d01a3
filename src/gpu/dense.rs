//! Dense pieces on the GPU: GEMM (`shaders/gemm.wgsl`), row L2 normalisation with its backward
//! (`shaders/normalize_rows*.wgsl`) and layer normalisation with its backward (`shaders/layer_norm*.wgsl`,
//! parameter gradients by `shaders/col_sums.wgsl`).

use super::context::Kernel;
use super::matrix::{record_copy_rows, same_shape};
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};

/// Output tile edge of `gemm.wgsl` (its `TM`).
const TILE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmParams {
    m: u32,
    n: u32,
    k: u32,
    flags: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    alpha: f32,
    beta: f32,
    k_chunk: u32,
    c_stride: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct GemmSumParams {
    m: u32,
    n: u32,
    slices: u32,
    ldc: u32,
    c_off: u32,
    offset: u32,
    beta: f32,
    _pad: u32,
}

/// Split K when a product has fewer output tiles than this (too few workgroups to fill a GPU)...
const SPLIT_BELOW_TILES: usize = 128;
/// ...aiming at about this many workgroups in all...
const SPLIT_TARGET_GROUPS: usize = 256;
/// ...with at least this much of K per slice.
const SPLIT_MIN_K: usize = 256;

/// How many K slices a product of `tiles` output tiles with inner dimension `k` is split into (1: none).
fn k_slices(tiles: usize, k: usize) -> usize {
    if tiles >= SPLIT_BELOW_TILES {
        return 1;
    }
    SPLIT_TARGET_GROUPS
        .div_ceil(tiles)
        .min(k / SPLIT_MIN_K)
        .max(1)
}

/// A row-major operand in place: a buffer, its leading dimension, an element offset and whether it enters
/// the product transposed.
#[derive(Clone, Copy)]
pub(crate) struct Operand<'a> {
    pub(crate) buf: &'a wgpu::Buffer,
    pub(crate) ld: usize,
    pub(crate) off: usize,
    pub(crate) trans: bool,
}

impl<'a> Operand<'a> {
    /// Rows `r0..` of `x`, not transposed.
    pub(crate) fn rows_from(x: &'a GpuMatrix, r0: usize) -> Operand<'a> {
        Operand {
            buf: &x.buf,
            ld: x.cols(),
            off: r0 * x.cols(),
            trans: false,
        }
    }

    /// The whole matrix `x`, transposed or not.
    pub(crate) fn of(x: &'a GpuMatrix, trans: bool) -> Operand<'a> {
        Operand {
            buf: &x.buf,
            ld: x.cols(),
            off: 0,
            trans,
        }
    }
}

/// Records `C[m x n] = alpha op(A) op(B) + beta C` for operands addressed in place, chunked in both output
/// dimensions under the dispatch limit. Shapes are the caller's responsibility.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_gemm(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    c: Operand<'_>,
) -> Result<()> {
    if m == 0 || n == 0 {
        return Ok(());
    }
    let kernel = Kernel::new("gemm.wgsl", "gemm");
    let step = ctx.dispatch_cap() as usize * TILE;
    for i0 in (0..m).step_by(step) {
        for j0 in (0..n).step_by(step) {
            let (mm, nn) = ((m - i0).min(step), (n - j0).min(step));
            let a_off = a.off + if a.trans { i0 } else { i0 * a.ld };
            let b_off = b.off + if b.trans { j0 * b.ld } else { j0 };
            let c_off = c.off + i0 * c.ld + j0;
            let groups = (nn.div_ceil(TILE) as u32, mm.div_ceil(TILE) as u32);
            let tiles = (groups.0 * groups.1) as usize;
            // slices of partial products, within one storage binding and the dispatch limit
            let max_slices = (ctx.limits().max_storage_buffer_binding_size as usize
                / (4 * mm * nn))
                .min(ctx.dispatch_cap() as usize);
            let slices = k_slices(tiles, k).min(max_slices).max(1);
            let params = |k_chunk: usize, c_stride: usize, ldc: usize, c_off: usize, beta: f32| {
                ctx.uniform_from(&GemmParams {
                    m: mm as u32,
                    n: nn as u32,
                    k: k as u32,
                    flags: u32::from(a.trans) | (u32::from(b.trans) << 1),
                    lda: a.ld as u32,
                    ldb: b.ld as u32,
                    ldc: ldc as u32,
                    a_off: a_off as u32,
                    b_off: b_off as u32,
                    c_off: c_off as u32,
                    alpha,
                    beta,
                    k_chunk: k_chunk.max(1) as u32,
                    c_stride: c_stride as u32,
                    _pad: [0; 2],
                })
            };
            if slices == 1 {
                let p = params(k, 0, c.ld, c_off, beta);
                ctx.dispatch_2d(enc, kernel, &[&p, a.buf, b.buf, c.buf], groups)?;
                continue;
            }
            // split K: partial products (alpha applied) into slices of a scratch buffer, then summed into C
            let chunk = k.div_ceil(slices);
            let slices = k.div_ceil(chunk);
            let part = ctx.storage_zeroed("gemm slices", (slices * mm * nn * 4) as u64);
            let p = params(chunk, mm * nn, nn, 0, 0.0);
            ctx.dispatch_3d(
                enc,
                kernel,
                &[&p, a.buf, b.buf, &part],
                (groups.0, groups.1, slices as u32),
            )?;
            let c_block = Operand { off: c_off, ..c };
            record_slice_sum(ctx, enc, &part, slices, (mm, nn), c_block, beta)?;
        }
    }
    Ok(())
}

/// `c = alpha op(a) op(b) + beta c` on the device, `op` transposing when `trans_a` / `trans_b` say so.
///
/// # Errors
/// [`Error::Shape`] when the inner dimensions or the output shape disagree; [`Error::Gpu`] for a device
/// failure.
///
/// # Example
/// ```no_run
/// # #[cfg(feature = "gpu")] {
/// use ndarray::array;
/// use recgoat_core::gpu::{self, GpuContext, GpuMatrix};
/// let ctx = GpuContext::new()?;
/// let a = GpuMatrix::upload(&ctx, array![[1.0f32, 2.0], [3.0, 4.0]].view())?;
/// let mut c = GpuMatrix::zeros(&ctx, 2, 2)?;
/// gpu::gemm(&ctx, 1.0, &a, true, &a, false, 0.0, &mut c)?; // A^T A
/// assert_eq!(c.download(&ctx)?, array![[10.0f32, 14.0], [14.0, 20.0]]);
/// # }
/// # Ok::<(), recgoat_core::Error>(())
/// ```
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ctx: &GpuContext,
    alpha: f32,
    a: &GpuMatrix,
    trans_a: bool,
    b: &GpuMatrix,
    trans_b: bool,
    beta: f32,
    c: &mut GpuMatrix,
) -> Result<()> {
    const OP: &str = "gpu::gemm";
    let (m, ka) = if trans_a {
        (a.cols(), a.rows())
    } else {
        (a.rows(), a.cols())
    };
    let (kb, n) = if trans_b {
        (b.cols(), b.rows())
    } else {
        (b.rows(), b.cols())
    };
    if ka != kb {
        return Err(Error::shape(
            OP,
            "inner dimensions of op(a) and op(b)",
            ka,
            kb,
        ));
    }
    if (c.rows(), c.cols()) != (m, n) {
        return Err(Error::shape(OP, "output c", (m, n), (c.rows(), c.cols())));
    }
    for (what, v) in [("alpha", alpha), ("beta", beta)] {
        if !v.is_finite() {
            return Err(Error::param(OP, what, v, "must be finite"));
        }
    }
    let mut enc = ctx.encoder();
    record_gemm(
        ctx,
        &mut enc,
        (m, n, ka),
        alpha,
        Operand::of(a, trans_a),
        Operand::of(b, trans_b),
        beta,
        Operand::of(c, false),
    )?;
    ctx.submit(OP, enc)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct RowParams {
    rows: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
}

/// Records `kernel` over `rows` rows (`per_group` per workgroup, chunked under the dispatch limit) with
/// `RowParams { rows, d, offset, flags }` bound first and `buffers` after it.
fn record_rows(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    kernel: Kernel,
    (rows, d): (usize, usize),
    per_group: usize,
    flags: u32,
    buffers: &[&wgpu::Buffer],
) -> Result<()> {
    let params = |start: usize| RowParams {
        rows: rows as u32,
        d: d as u32,
        row_offset: start as u32,
        _pad: flags,
    };
    ctx.dispatch_rows(enc, kernel, (rows, per_group), params, buffers)
}

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

pub(crate) fn row_vector(ctx: &GpuContext, v: &ndarray::Array1<f32>) -> Result<GpuMatrix> {
    GpuMatrix::upload(ctx, v.view().insert_axis(ndarray::Axis(0)))
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

/// Records `y[r, c] += x[r, c] * v[c]` (`v` a `1 x d` matrix).
pub(crate) fn record_add_scaled_cols(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    x: &GpuMatrix,
    v: &GpuMatrix,
    y: &GpuMatrix,
) -> Result<()> {
    let kernel = Kernel::new("add_scaled_cols.wgsl", "add_scaled_cols");
    let bufs = [&x.buf, &v.buf, &y.buf];
    record_rows(ctx, enc, kernel, (x.rows(), x.cols()), 1, 0, &bufs)
}

/// Records `out = a * b` elementwise (same shapes).
pub(crate) fn record_hadamard(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    a: &GpuMatrix,
    b: &GpuMatrix,
    out: &GpuMatrix,
) -> Result<()> {
    let kernel = Kernel::new("hadamard.wgsl", "hadamard");
    let count = a.rows() * a.cols();
    record_rows(
        ctx,
        enc,
        kernel,
        (count, 0),
        256,
        0,
        &[&a.buf, &b.buf, &out.buf],
    )
}

/// Records `out[c] = sum_r a[r, c] (* b[r, c])` into `out` (`1 x d`).
pub(crate) fn record_col_sums(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    a: &GpuMatrix,
    b: Option<&GpuMatrix>,
    out: &GpuMatrix,
) -> Result<()> {
    /// Columns per workgroup (the kernel's `LANES`) and rows per slice.
    const LANES: usize = 64;
    const SLICE_ROWS: usize = 256;
    let kernel = Kernel::new("col_sums.wgsl", "col_sums");
    let (rows, d) = (a.rows(), a.cols());
    let slices = rows
        .div_ceil(SLICE_ROWS)
        .clamp(1, ctx.dispatch_cap() as usize);
    let chunk = rows.div_ceil(slices).max(1);
    let part =
        (slices > 1).then(|| ctx.storage_zeroed("column-sum slices", (slices * d * 4) as u64));
    let dst = part.as_ref().unwrap_or(&out.buf);
    for (start, groups) in ctx.row_dispatches(d, LANES) {
        let params = ctx.uniform_from(&ColSumParams {
            d: d as u32,
            rows: rows as u32,
            col_offset: start as u32,
            flags: u32::from(b.is_some()),
            chunk: chunk as u32,
            _pad: [0; 3],
        });
        ctx.dispatch_2d(
            enc,
            kernel,
            &[&params, &a.buf, &b.unwrap_or(a).buf, dst],
            (groups, slices as u32),
        )?;
    }
    match &part {
        Some(part) => {
            record_slice_sum(ctx, enc, part, slices, (1, d), Operand::of(out, false), 0.0)
        }
        None => Ok(()),
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ColSumParams {
    d: u32,
    rows: u32,
    col_offset: u32,
    flags: u32,
    chunk: u32,
    _pad: [u32; 3],
}

/// Records `C = sum_z part[z] + beta C` for `slices` row-major `m x n` slices stored one after another in
/// `part` (`gemm_sum.wgsl`; the second half of split reductions).
fn record_slice_sum(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    part: &wgpu::Buffer,
    slices: usize,
    (m, n): (usize, usize),
    c: Operand<'_>,
    beta: f32,
) -> Result<()> {
    let sum = Kernel::new("gemm_sum.wgsl", "gemm_sum");
    for (start, wg) in ctx.row_dispatches(m * n, 256) {
        let ps = ctx.uniform_from(&GemmSumParams {
            m: m as u32,
            n: n as u32,
            slices: slices as u32,
            ldc: c.ld as u32,
            c_off: c.off as u32,
            offset: start as u32,
            beta,
            _pad: 0,
        });
        ctx.dispatch(enc, sum, &[&ps, part, c.buf], wg)?;
    }
    Ok(())
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

/// [`crate::nn::softmax_fusion`] on the device: `y = sum_m softmax(logits)_m views_m`; returns `y` and the
/// weights.
///
/// # Errors
/// [`Error::Empty`] for no views, [`Error::Shape`] for views of different shapes or a logit count other
/// than the view count, [`Error::NonFinite`] for NaN/Inf logits, [`Error::Gpu`].
pub fn softmax_fusion(
    ctx: &GpuContext,
    views: &[&GpuMatrix],
    logits: ndarray::ArrayView1<'_, f32>,
) -> Result<(GpuMatrix, ndarray::Array1<f32>)> {
    const OP: &str = "gpu::softmax_fusion";
    check_views(OP, views, logits.len())?;
    crate::error::check_finite_array(OP, "logits", &logits)?;
    let mx = logits.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    let e = logits.mapv(|l| (l - mx).exp());
    let w = &e / e.sum();
    Ok((weighted_sum(ctx, views, &w)?, w))
}

/// `y = sum_m w_m views_m` (same shapes, checked by the caller).
pub(crate) fn weighted_sum(
    ctx: &GpuContext,
    views: &[&GpuMatrix],
    w: &ndarray::Array1<f32>,
) -> Result<GpuMatrix> {
    weighted_sum_scaled(ctx, views, &weight_rows(ctx, w.view(), views[0].cols())?)
}

/// One `1 x d` row of `w_m` per weight: the column scales of [`weighted_sum_scaled`].
fn weight_rows(
    ctx: &GpuContext,
    w: ndarray::ArrayView1<'_, f32>,
    d: usize,
) -> Result<Vec<GpuMatrix>> {
    w.iter()
        .map(|&wm| row_vector(ctx, &ndarray::Array1::from_elem(d, wm)))
        .collect()
}

/// `y = sum_m views_m * scales_m` with each view's weight as a `1 x d` row of column scales, on the device.
pub(crate) fn weighted_sum_scaled(
    ctx: &GpuContext,
    views: &[&GpuMatrix],
    scales: &[GpuMatrix],
) -> Result<GpuMatrix> {
    let first = views[0];
    let y = GpuMatrix::zeros(ctx, first.rows(), first.cols())?;
    let mut enc = ctx.encoder();
    for (v, s) in views.iter().zip(scales) {
        record_add_scaled_cols(ctx, &mut enc, v, s, &y)?;
    }
    ctx.submit("gpu::weighted_sum", enc)?;
    Ok(y)
}

/// Backward of [`weighted_sum`]: `dL/dview_m = w_m grad_y` (on the device) and `dL/dw_m = <view_m, grad_y>`.
pub(crate) fn weighted_sum_backward(
    ctx: &GpuContext,
    views: &[&GpuMatrix],
    weights: ndarray::ArrayView1<'_, f32>,
    grad_y: &GpuMatrix,
) -> Result<(Vec<GpuMatrix>, ndarray::Array1<f32>)> {
    let scales = weight_rows(ctx, weights, grad_y.cols())?;
    let (grads, sums) = weighted_sum_backward_scaled(ctx, views, &scales, grad_y)?;
    let dw = sums.download(ctx)?.sum_axis(ndarray::Axis(1));
    Ok((grads, dw))
}

/// Backward of [`weighted_sum_scaled`]: `dL/dview_m = scales_m * grad_y`, and the `V x d` column sums of
/// `view_m * grad_y` (row `m` sums to `dL/dw_m`), all on the device.
pub(crate) fn weighted_sum_backward_scaled(
    ctx: &GpuContext,
    views: &[&GpuMatrix],
    scales: &[GpuMatrix],
    grad_y: &GpuMatrix,
) -> Result<(Vec<GpuMatrix>, GpuMatrix)> {
    let (n, d) = (grad_y.rows(), grad_y.cols());
    let sums = GpuMatrix::zeros(ctx, views.len(), d)?;
    let mut enc = ctx.encoder();
    let mut grads = Vec::with_capacity(views.len());
    for (m, (v, s)) in views.iter().zip(scales).enumerate() {
        let g = GpuMatrix::zeros(ctx, n, d)?;
        record_add_scaled_cols(ctx, &mut enc, grad_y, s, &g)?;
        let cs = GpuMatrix::zeros(ctx, 1, d)?;
        record_col_sums(ctx, &mut enc, v, Some(grad_y), &cs)?;
        record_copy_rows(&mut enc, (&cs, 0), (&sums, m), 1);
        grads.push(g);
    }
    ctx.submit("gpu::weighted_sum_backward", enc)?;
    Ok((grads, sums))
}

/// The fusion's view weights from its logits (`1 x V`, on the device): softmax (`softmax`) or the logits
/// themselves (free scalars), each as a `1 x d` row of column scales for [`weighted_sum_scaled`]
/// (`shaders/fusion_weights.wgsl`).
pub(crate) fn fusion_weight_rows(
    ctx: &GpuContext,
    logits: &GpuMatrix,
    d: usize,
    softmax: bool,
) -> Result<Vec<GpuMatrix>> {
    let v = logits.cols();
    let rows = GpuMatrix::zeros(ctx, v, d)?;
    let kernel = Kernel::new("fusion_weights.wgsl", "fusion_weights");
    let mut enc = ctx.encoder();
    let flags = u32::from(softmax);
    record_rows(
        ctx,
        &mut enc,
        kernel,
        (v, d),
        1,
        flags,
        &[&logits.buf, &rows.buf],
    )?;
    let scales = (0..v)
        .map(|m| {
            let s = GpuMatrix::zeros(ctx, 1, d)?;
            record_copy_rows(&mut enc, (&rows, m), (&s, 0), 1);
            Ok(s)
        })
        .collect::<Result<_>>()?;
    ctx.submit("gpu::fusion_weight_rows", enc)?;
    Ok(scales)
}

/// The gradient of the fusion logits (`1 x V`, on the device) from the column sums of
/// [`weighted_sum_backward_scaled`] (`shaders/fusion_logits_backward.wgsl`).
pub(crate) fn fusion_logits_backward(
    ctx: &GpuContext,
    logits: &GpuMatrix,
    sums: &GpuMatrix,
    softmax: bool,
) -> Result<GpuMatrix> {
    let (v, d) = (sums.rows(), sums.cols());
    let grad = GpuMatrix::zeros(ctx, 1, v)?;
    let kernel = Kernel::new("fusion_logits_backward.wgsl", "fusion_logits_backward");
    let mut enc = ctx.encoder();
    let bufs = [&logits.buf, &sums.buf, &grad.buf];
    record_rows(ctx, &mut enc, kernel, (v, d), 1, u32::from(softmax), &bufs)?;
    ctx.submit("gpu::fusion_logits_backward", enc)?;
    Ok(grad)
}

/// `a * b` elementwise (same shapes, checked by the caller).
pub(crate) fn hadamard(ctx: &GpuContext, a: &GpuMatrix, b: &GpuMatrix) -> Result<GpuMatrix> {
    let out = GpuMatrix::zeros(ctx, a.rows(), a.cols())?;
    let mut enc = ctx.encoder();
    record_hadamard(ctx, &mut enc, a, b, &out)?;
    ctx.submit("gpu::hadamard", enc)?;
    Ok(out)
}

/// `y += a x` (same shapes, checked by the caller).
pub(crate) fn axpy(ctx: &GpuContext, a: f32, x: &GpuMatrix, y: &GpuMatrix) -> Result<()> {
    let s = row_vector(ctx, &ndarray::Array1::from_elem(x.cols(), a))?;
    let mut enc = ctx.encoder();
    record_add_scaled_cols(ctx, &mut enc, x, &s, y)?;
    ctx.submit("gpu::axpy", enc)
}

/// The column sums of `a`, a `1 x d` matrix on the device.
pub(crate) fn col_sums(ctx: &GpuContext, a: &GpuMatrix) -> Result<GpuMatrix> {
    let out = GpuMatrix::zeros(ctx, 1, a.cols())?;
    let mut enc = ctx.encoder();
    record_col_sums(ctx, &mut enc, a, None, &out)?;
    ctx.submit("gpu::col_sums", enc)?;
    Ok(out)
}

fn check_views<'a>(
    op: &'static str,
    views: &[&'a GpuMatrix],
    logits: usize,
) -> Result<&'a GpuMatrix> {
    let first = *views.first().ok_or(Error::Empty {
        op,
        what: "views".into(),
    })?;
    if logits != views.len() {
        return Err(Error::shape(
            op,
            "logits (one per view)",
            views.len(),
            logits,
        ));
    }
    for (m, v) in views.iter().enumerate() {
        same_shape(op, &format!("view {m} vs view 0"), first, v)?;
    }
    Ok(first)
}

/// Backward of [`softmax_fusion`]: `(dL/dview_m for every m, dL/dlogits)`; the view gradients stay on the
/// device, the `m` inner products `<view_m, grad_y>` come back as column sums.
///
/// # Errors
/// [`Error::Shape`] when the views, weights and `grad_y` disagree; [`Error::Gpu`].
pub fn softmax_fusion_backward(
    ctx: &GpuContext,
    views: &[&GpuMatrix],
    weights: ndarray::ArrayView1<'_, f32>,
    grad_y: &GpuMatrix,
) -> Result<(Vec<GpuMatrix>, ndarray::Array1<f32>)> {
    const OP: &str = "gpu::softmax_fusion_backward";
    let first = check_views(OP, views, weights.len())?;
    same_shape(OP, "grad_y vs the views", first, grad_y)?;
    let (grads, dw) = weighted_sum_backward(ctx, views, weights, grad_y)?;
    let s = dw.dot(&weights);
    let grad_logits = ndarray::Array1::from_shape_fn(weights.len(), |m| weights[m] * (dw[m] - s));
    Ok((grads, grad_logits))
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LeakyParams {
    count: u32,
    offset: u32,
    flags: u32,
    _pad: u32,
    slope: f32,
    _pad1: [f32; 3],
}

/// LeakyReLU of `x` times an optional dropout `mask` (`grad` `None`), or the backward pass of that for the
/// output gradient `grad` (same shapes, checked by the caller): `shaders/leaky_relu.wgsl`.
pub(crate) fn leaky_relu_masked(
    ctx: &GpuContext,
    x: &GpuMatrix,
    slope: f32,
    mask: Option<&GpuMatrix>,
    grad: Option<&GpuMatrix>,
) -> Result<GpuMatrix> {
    let entry = if grad.is_some() {
        "leaky_relu_backward"
    } else {
        "leaky_relu_forward"
    };
    let kernel = Kernel::new("leaky_relu.wgsl", entry);
    let out = GpuMatrix::zeros(ctx, x.rows(), x.cols())?;
    let count = x.rows() * x.cols();
    let mut enc = ctx.encoder();
    let params = |start: usize| LeakyParams {
        count: count as u32,
        offset: start as u32,
        flags: u32::from(mask.is_some()),
        _pad: 0,
        slope,
        _pad1: [0.0; 3],
    };
    let bufs = [
        &x.buf,
        &mask.unwrap_or(x).buf,
        &grad.unwrap_or(x).buf,
        &out.buf,
    ];
    ctx.dispatch_rows(&mut enc, kernel, (count, 256), params, &bufs)?;
    ctx.submit("gpu::leaky_relu_masked", enc)?;
    Ok(out)
}
