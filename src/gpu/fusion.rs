//! The model's fusion of views on the GPU: the weighted sum of the views with weights from softmax or free
//! logits (`shaders/fusion_weights.wgsl`), its backward pass, and the logits' gradient
//! (`shaders/fusion_logits_backward.wgsl`). Only the reference model uses these.

use super::context::Kernel;
use super::elementwise::{record_add_scaled_cols, record_col_sums, record_rows, row_vector};
use super::matrix::{record_copy_rows, same_shape};
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};

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
