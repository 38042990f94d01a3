//! The gradients of a large entropic plan on the GPU, and the debiased Sinkhorn divergence built on them.
//!
//! [`point_cloud_gradients`] never holds the `n x m` plan at once: it forms row blocks of it on the device
//! (`X Y^T` by GEMM, then `shaders/ot_plan.wgsl`), each sized under the storage-binding limit, and reduces
//! each block right away by GEMM into `P Y`, `P^T X` and the plan's row and column sums.

use super::context::Kernel;
use super::transport::column;
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};
use crate::transport::{DivergenceOutput, Geometry, SinkhornConfig, SinkhornOutput};
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct PlanParams {
    count: u32,
    offset: u32,
    m: u32,
    row0: u32,
    inv_eps: f32,
    _pad: [f32; 3],
}

/// [`crate::transport::point_cloud_gradients`] on the GPU: the gradients of `<P, C>`-based OT values with
/// respect to both point clouds of a solved problem, `dV/dx_i = 2 (r_i x_i - (P Y)_i)` and
/// `dV/dy_j = 2 (c_j y_j - (P^T X)_j)` with `r`, `c` the plan's row and column sums.
///
/// # Errors
/// [`Error::Shape`] when the clouds, weights and potentials disagree; [`Error::Gpu`].
pub fn point_cloud_gradients(
    ctx: &GpuContext,
    x: ArrayView2<'_, f32>,
    y: ArrayView2<'_, f32>,
    out: &SinkhornOutput<f32>,
    a: ArrayView1<'_, f32>,
    b: ArrayView1<'_, f32>,
) -> Result<(Array2<f32>, Array2<f32>)> {
    const OP: &str = "gpu::point_cloud_gradients";
    let (n, m, d) = (x.nrows(), y.nrows(), x.ncols());
    if y.ncols() != d || out.f.len() != n || out.g.len() != m || a.len() != n || b.len() != m {
        return Err(Error::shape(
            OP,
            "clouds / weights vs potentials",
            (out.f.len(), out.g.len(), d),
            (n, m, y.ncols(), a.len(), b.len()),
        ));
    }
    let (alpha, beta) = out.log_scalings(a, b);
    let xsq: Vec<f32> = x.rows().into_iter().map(|r| r.dot(&r)).collect();
    let ysq: Vec<f32> = y.rows().into_iter().map(|r| r.dot(&r)).collect();
    let col = |v: &[f32]| column(ctx, v.iter().copied());
    let (alpha_d, beta_d) = (col(&alpha)?, col(&beta)?);
    let (xsq_d, ysq_d) = (col(&xsq)?, col(&ysq)?);
    let yd = GpuMatrix::upload(ctx, y)?;
    let ones_m = GpuMatrix::upload(ctx, Array2::ones((m, 1)).view())?;
    let mut ptx = GpuMatrix::zeros(ctx, m, d)?;
    let mut cols = GpuMatrix::zeros(ctx, m, 1)?;
    // row blocks of the plan that fit one storage binding
    let max_rows = (ctx.limits().max_storage_buffer_binding_size as usize / (4 * m.max(1))).max(1);
    let block = max_rows.min(4096).min(n.max(1));
    let mut py = Array2::<f32>::zeros((n, d));
    let mut rows = vec![0f32; n];
    let kernel = Kernel::new("ot_plan.wgsl", "ot_plan");
    for r0 in (0..n).step_by(block) {
        let k = block.min(n - r0);
        let xb = GpuMatrix::upload(ctx, x.slice(s![r0..r0 + k, ..]))?;
        let mut plan = GpuMatrix::zeros(ctx, k, m)?;
        super::gemm(ctx, 1.0, &xb, false, &yd, true, 0.0, &mut plan)?;
        let mut enc = ctx.encoder();
        let params = |start: usize| PlanParams {
            count: (k * m) as u32,
            offset: start as u32,
            m: m as u32,
            row0: r0 as u32,
            inv_eps: 1.0 / out.eps,
            _pad: [0.0; 3],
        };
        let bufs = [&plan.buf, &alpha_d.buf, &beta_d.buf, &xsq_d.buf, &ysq_d.buf];
        ctx.dispatch_rows(&mut enc, kernel, (k * m, 256), params, &bufs)?;
        ctx.submit(OP, enc)?;
        let mut pyb = GpuMatrix::zeros(ctx, k, d)?;
        super::gemm(ctx, 1.0, &plan, false, &yd, false, 0.0, &mut pyb)?;
        super::gemm(ctx, 1.0, &plan, true, &xb, false, 1.0, &mut ptx)?;
        let mut rb = GpuMatrix::zeros(ctx, k, 1)?;
        super::gemm(ctx, 1.0, &plan, false, &ones_m, false, 0.0, &mut rb)?;
        let ones_k = GpuMatrix::upload(ctx, Array2::ones((k, 1)).view())?;
        super::gemm(ctx, 1.0, &plan, true, &ones_k, false, 1.0, &mut cols)?;
        py.slice_mut(s![r0..r0 + k, ..]).assign(&pyb.download(ctx)?);
        rows[r0..r0 + k].copy_from_slice(rb.download(ctx)?.as_slice().expect("k x 1"));
    }
    let ptx = ptx.download(ctx)?;
    let cols = cols.download(ctx)?;
    let r = Array1::from(rows).insert_axis(Axis(1));
    let gx = (&x * &r - &py) * 2.0;
    let gy = (&y * &cols - &ptx) * 2.0;
    Ok((gx, gy))
}

/// [`crate::transport::sinkhorn_divergence`] on the GPU: the three problems solved by
/// [`super::sinkhorn`] (online squared Euclidean cost on the device; the self terms with the ordinary
/// alternating iteration), the point gradients by [`point_cloud_gradients`], the weight gradients from the
/// potentials. Same value and gradients as the CPU function up to rounding and the stopping tolerance.
///
/// # Errors
/// As [`crate::transport::sinkhorn_divergence`], plus [`Error::Gpu`].
pub fn sinkhorn_divergence(
    ctx: &GpuContext,
    x: ArrayView2<'_, f32>,
    y: ArrayView2<'_, f32>,
    a: ArrayView1<'_, f32>,
    b: ArrayView1<'_, f32>,
    cfg: &SinkhornConfig<f32>,
) -> Result<DivergenceOutput<f32>> {
    cfg.validate()?;
    let gxy = Geometry::sq_euclidean(x, y)?;
    let gxx = Geometry::sq_euclidean(x, x)?;
    let gyy = Geometry::sq_euclidean(y, y)?;
    let fixed = crate::transport::divergence::fixed_eps(cfg, &gxy, crate::Par::rayon())?;
    let oxy = super::sinkhorn(ctx, &gxy, a, b, &fixed)?;
    let oxx = super::sinkhorn(ctx, &gxx, a, a, &fixed)?;
    let oyy = super::sinkhorn(ctx, &gyy, b, b, &fixed)?;
    let xy = (&oxy, point_cloud_gradients(ctx, x, y, &oxy, a, b)?);
    let xx = (&oxx, point_cloud_gradients(ctx, x, x, &oxx, a, a)?);
    let yy = (&oyy, point_cloud_gradients(ctx, y, y, &oyy, b, b)?);
    crate::transport::divergence::assemble(xy, xx, yy, a, b)
}
