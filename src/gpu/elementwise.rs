//! Elementwise and reduction building blocks on the GPU: scaled column adds, Hadamard products, `axpy`,
//! column sums (`shaders/col_sums.wgsl`) and LeakyReLU with an optional dropout mask
//! (`shaders/leaky_relu.wgsl`).

use super::context::Kernel;
use super::gemm::{record_slice_sum, Operand};
use super::{GpuContext, GpuMatrix};
use crate::error::Result;

pub(crate) fn row_vector(ctx: &GpuContext, v: &ndarray::Array1<f32>) -> Result<GpuMatrix> {
    GpuMatrix::upload(ctx, v.view().insert_axis(ndarray::Axis(0)))
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
    let dst = part.as_deref().unwrap_or(&out.buf);
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
pub(crate) fn record_rows(
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
