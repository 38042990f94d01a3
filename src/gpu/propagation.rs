//! SpMM and LightGCN propagation on the GPU (`shaders/spmm.wgsl`), forward and backward.

use super::context::Kernel;
use super::matrix::GpuCsr;
use super::{GpuContext, GpuGraph, GpuMatrix};
use crate::error::{Error, Result};
use crate::graph::{check_layers, CsrGraph};
use ndarray::{Array2, ArrayView2};

/// Rows per workgroup in `spmm.wgsl` (its `ROWS`).
const ROWS_PER_GROUP: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_rows: u32,
    d: u32,
    row_offset: u32,
    flags: u32,
    scale: f32,
    _pad: [u32; 3],
}

/// Which way through the graph: `A X` or `A^T X`.
#[derive(Clone, Copy)]
enum Dir {
    Forward,
    Transposed,
}

fn csr(g: &GpuGraph, dir: Dir) -> &GpuCsr {
    match dir {
        Dir::Forward => &g.fwd,
        Dir::Transposed => &g.bwd,
    }
}

/// Parameters of `spmm_vec4.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Vec4Params {
    n_rows: u32,
    d4: u32,
    row_offset: u32,
    flags: u32,
    scale: f32,
    lanes: u32,
    long_row: u32,
    n_long: u32,
}

/// Invocations per row in `spmm_vec4.wgsl` for a width of `d4` vec4s: the smallest power of two covering
/// the row, at most the workgroup's 64.
fn vec4_lanes(d4: usize) -> usize {
    d4.next_power_of_two().min(64)
}

/// Records `y = A x` (and `sum = (sum + y) * scale` when `sum` is given), chunked in rows under the
/// dispatch limit: `spmm_vec4.wgsl` when the width is a multiple of 4, else `spmm.wgsl`.
fn record_spmm(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    a: &GpuCsr,
    x: &GpuMatrix,
    y: &GpuMatrix,
    sum: Option<(&GpuMatrix, f32)>,
) -> Result<()> {
    let (placeholder, placeholder_rw) = ctx.placeholders();
    let weights = a.weights.as_ref().unwrap_or(&placeholder);
    let (sum_buf, scale) = match sum {
        Some((s, scale)) => (&s.buf, scale),
        None => (&*placeholder_rw, 1.0),
    };
    let flags = u32::from(a.weights.is_some()) | (u32::from(sum.is_some()) << 1);
    let buffers = [&a.indptr, &a.indices, weights, &x.buf, &y.buf, sum_buf];
    let d = x.cols();
    if d % 4 == 0 && d > 0 {
        let lanes = vec4_lanes(d / 4);
        // long rows get a workgroup each where a row's lanes leave room for more than one group of them
        let long = a.long_rows.as_ref().filter(|_| lanes < 64);
        let list = long.map_or(&*placeholder, |(list, _)| list);
        let n_long = long.map_or(0, |(_, n)| *n);
        let params = |start: usize| Vec4Params {
            n_rows: a.n_rows as u32,
            d4: (d / 4) as u32,
            row_offset: start as u32,
            flags,
            scale,
            lanes: lanes as u32,
            long_row: if long.is_some() {
                a.long_row as u32
            } else {
                u32::MAX
            },
            n_long: n_long as u32,
        };
        let mut all = buffers.to_vec();
        all.push(list);
        let kernel = Kernel::new("spmm_vec4.wgsl", "spmm_vec4");
        ctx.dispatch_rows(enc, kernel, (a.n_rows, 64 / lanes), params, &all)?;
        let kernel = Kernel::new("spmm_vec4.wgsl", "spmm_vec4_long");
        return ctx.dispatch_rows(enc, kernel, (n_long, 1), params, &all);
    }
    ctx.dispatch_rows(
        enc,
        Kernel::new("spmm.wgsl", "spmm"),
        (a.n_rows, ROWS_PER_GROUP),
        |start| Params {
            n_rows: a.n_rows as u32,
            d: d as u32,
            row_offset: start as u32,
            flags,
            scale,
            _pad: [0; 3],
        },
        &buffers,
    )
}

fn check_operands(op: &'static str, a: &GpuCsr, x: &GpuMatrix, y: &GpuMatrix) -> Result<()> {
    if x.rows() != a.n_cols {
        return Err(Error::shape(
            op,
            "rows of x vs graph columns",
            a.n_cols,
            x.rows(),
        ));
    }
    if (y.rows(), y.cols()) != (a.n_rows, x.cols()) {
        return Err(Error::shape(
            op,
            "output",
            (a.n_rows, x.cols()),
            (y.rows(), y.cols()),
        ));
    }
    Ok(())
}

/// `y = A x` on the device (the GPU twin of [`crate::graph::spmm_into`]).
///
/// # Errors
/// [`Error::Shape`] when `x` does not have `n_cols` rows or `y` is not `n_rows x d`; [`Error::Gpu`] for a
/// device failure.
pub fn spmm_into(ctx: &GpuContext, a: &GpuGraph, x: &GpuMatrix, y: &mut GpuMatrix) -> Result<()> {
    spmm_dir(ctx, "gpu::spmm_into", a, Dir::Forward, x, y)
}

/// `dx = A^T dy` on the device, over the uploaded transpose (the GPU twin of
/// [`crate::graph::spmm_backward`]).
///
/// # Errors
/// As [`spmm_into`], with the roles of rows and columns swapped.
pub fn spmm_backward_into(
    ctx: &GpuContext,
    a: &GpuGraph,
    grad_y: &GpuMatrix,
    grad_x: &mut GpuMatrix,
) -> Result<()> {
    spmm_dir(
        ctx,
        "gpu::spmm_backward_into",
        a,
        Dir::Transposed,
        grad_y,
        grad_x,
    )
}

/// `acc += A^T dy` on the device (`scratch` receives `A^T dy`): a scatter-add of rows when `A` selects them.
pub(crate) fn spmm_backward_add(
    ctx: &GpuContext,
    a: &GpuGraph,
    grad_y: &GpuMatrix,
    scratch: &GpuMatrix,
    acc: &GpuMatrix,
) -> Result<()> {
    const OP: &str = "gpu::spmm_backward_add";
    let c = csr(a, Dir::Transposed);
    check_operands(OP, c, grad_y, scratch)?;
    check_operands(OP, c, grad_y, acc)?;
    if acc.bytes() == 0 {
        return Ok(());
    }
    let mut enc = ctx.encoder();
    record_spmm(ctx, &mut enc, c, grad_y, scratch, Some((acc, 1.0)))?;
    ctx.submit(OP, enc)
}

fn spmm_dir(
    ctx: &GpuContext,
    op: &'static str,
    a: &GpuGraph,
    dir: Dir,
    x: &GpuMatrix,
    y: &mut GpuMatrix,
) -> Result<()> {
    let c = csr(a, dir);
    check_operands(op, c, x, y)?;
    if y.bytes() == 0 {
        return Ok(());
    }
    let mut enc = ctx.encoder();
    record_spmm(ctx, &mut enc, c, x, y, None)?;
    ctx.submit(op, enc)
}

/// LightGCN propagation on the device: `mean(E, A E, ..., A^L E)` into `out` (the GPU twin of
/// [`crate::graph::lightgcn_forward`]). One command buffer for all layers; each layer's product also updates
/// the running mean, so the layers cost `L` SpMM passes and nothing else.
///
/// # Errors
/// [`Error::Graph`] for a non-square graph, [`Error::Param`] for `layers == 0`, [`Error::Shape`] when `e0`
/// or `out` do not have `n` rows (and the same width).
pub fn lightgcn_forward_into(
    ctx: &GpuContext,
    a: &GpuGraph,
    e0: &GpuMatrix,
    layers: usize,
    out: &mut GpuMatrix,
) -> Result<()> {
    propagate(
        ctx,
        "gpu::lightgcn_forward_into",
        a,
        Dir::Forward,
        e0,
        layers,
        out,
    )
}

/// Backward of [`lightgcn_forward_into`]: `dE = mean(G, A^T G, ..., (A^T)^L G)` over the uploaded transpose
/// (no atomics).
///
/// # Errors
/// As [`lightgcn_forward_into`].
pub fn lightgcn_backward_into(
    ctx: &GpuContext,
    a: &GpuGraph,
    grad_out: &GpuMatrix,
    layers: usize,
    grad_e0: &mut GpuMatrix,
) -> Result<()> {
    propagate(
        ctx,
        "gpu::lightgcn_backward_into",
        a,
        Dir::Transposed,
        grad_out,
        layers,
        grad_e0,
    )
}

fn propagate(
    ctx: &GpuContext,
    op: &'static str,
    a: &GpuGraph,
    dir: Dir,
    e0: &GpuMatrix,
    layers: usize,
    out: &mut GpuMatrix,
) -> Result<()> {
    let c = csr(a, dir);
    check_layers(op, layers, c.n_rows, c.n_cols)?;
    check_operands(op, c, e0, out)?;
    if out.bytes() == 0 {
        return Ok(());
    }
    let cur = GpuMatrix::zeros(ctx, e0.rows(), e0.cols())?;
    let next = GpuMatrix::zeros(ctx, e0.rows(), e0.cols())?;
    let mut enc = ctx.encoder();
    enc.copy_buffer_to_buffer(&e0.buf, 0, &out.buf, 0, out.bytes());
    let (mut src, mut dst) = (&cur, &next);
    for l in 0..layers {
        let scale = if l + 1 == layers {
            1.0 / (layers + 1) as f32
        } else {
            1.0
        };
        let input = if l == 0 { e0 } else { src };
        record_spmm(ctx, &mut enc, c, input, dst, Some((out, scale)))?;
        std::mem::swap(&mut src, &mut dst);
    }
    ctx.submit(op, enc)
}

/// Host-in / host-out [`spmm_into`]: uploads the graph and `x`, returns `A x`. For repeated calls keep the
/// data on the device instead.
///
/// # Errors
/// As [`crate::graph::spmm`] for the inputs, plus [`Error::Gpu`].
pub fn spmm(ctx: &GpuContext, a: &CsrGraph<f32>, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
    let (g, x) = (GpuGraph::upload(ctx, a)?, GpuMatrix::upload(ctx, x)?);
    let mut y = GpuMatrix::zeros(ctx, a.n_rows(), x.cols())?;
    spmm_into(ctx, &g, &x, &mut y)?;
    y.download(ctx)
}

/// Host-in / host-out [`lightgcn_forward_into`].
///
/// # Errors
/// As [`lightgcn_forward_into`], plus [`Error::NonFinite`] for NaN/Inf in `e0`.
pub fn lightgcn_forward(
    ctx: &GpuContext,
    a: &CsrGraph<f32>,
    e0: ArrayView2<'_, f32>,
    layers: usize,
) -> Result<Array2<f32>> {
    host_propagate(ctx, a, e0, layers, lightgcn_forward_into)
}

/// Host-in / host-out [`lightgcn_backward_into`].
///
/// # Errors
/// As [`lightgcn_backward_into`], plus [`Error::NonFinite`] for NaN/Inf in `grad_out`.
pub fn lightgcn_backward(
    ctx: &GpuContext,
    a: &CsrGraph<f32>,
    grad_out: ArrayView2<'_, f32>,
    layers: usize,
) -> Result<Array2<f32>> {
    host_propagate(ctx, a, grad_out, layers, lightgcn_backward_into)
}

type PropagateFn = fn(&GpuContext, &GpuGraph, &GpuMatrix, usize, &mut GpuMatrix) -> Result<()>;

fn host_propagate(
    ctx: &GpuContext,
    a: &CsrGraph<f32>,
    x: ArrayView2<'_, f32>,
    layers: usize,
    f: PropagateFn,
) -> Result<Array2<f32>> {
    let (g, x) = (GpuGraph::upload(ctx, a)?, GpuMatrix::upload(ctx, x)?);
    let mut out = GpuMatrix::zeros(ctx, x.rows(), x.cols())?;
    f(ctx, &g, &x, layers, &mut out)?;
    out.download(ctx)
}
