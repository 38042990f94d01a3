//! Log-domain Sinkhorn on the GPU (`shaders/sinkhorn_update.wgsl`): the same problem, configuration and
//! output as [`crate::transport::sinkhorn`] (dense or online squared Euclidean cost, absolute or relative
//! eps, geometric eps schedule with warm starts, balanced or KL-unbalanced marginals, stopping on the
//! marginal error every `check_every` iterations), iterating on the device.
//!
//! The iterations run on the GPU, `check_every` of them per submission; at each check the row residuals
//! (one float per row) come back to measure the error. The eps resolution (mean / median / max of the
//! cost) and the final measurement (row and column sums, `<P, C>`, the dual value, the optional plan) are
//! one pass each on the CPU, shared with the CPU solver.

use super::context::Kernel;
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};
use crate::transport::cpu::{solve_with, StageResult};
use crate::transport::{
    validate_problem, Domain, Geometry, SinkhornConfig, SinkhornOutput, Termination,
};
use crate::Par;
use ndarray::{Array2, ArrayView1};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n_self: u32,
    n_other: u32,
    d: u32,
    offset: u32,
    cs_self: u32,
    cs_other: u32,
    flags: u32,
    _pad: u32,
    eps: f32,
    tau: f32,
    rho: f32,
    _pad1: f32,
}

/// The problem on the device.
struct Device {
    /// Dense cost, or a placeholder.
    cost: GpuMatrix,
    /// Source and target points (squared Euclidean), or placeholders.
    x: GpuMatrix,
    y: GpuMatrix,
    online: bool,
    d: usize,
    n: usize,
    m: usize,
    a: GpuMatrix,
    b: GpuMatrix,
    la: GpuMatrix,
    lb: GpuMatrix,
    f: GpuMatrix,
    g: GpuMatrix,
    f_prev: GpuMatrix,
    g_prev: GpuMatrix,
    resid: GpuMatrix,
    resid_unused: GpuMatrix,
}

fn column(ctx: &GpuContext, v: impl Iterator<Item = f32>) -> Result<GpuMatrix> {
    let v: Vec<f32> = v.collect();
    let n = v.len();
    GpuMatrix::upload(
        ctx,
        Array2::from_shape_vec((n, 1), v).expect("n x 1").view(),
    )
}

impl Device {
    fn upload(
        ctx: &GpuContext,
        geom: &Geometry<'_, f32>,
        a: ArrayView1<'_, f32>,
        b: ArrayView1<'_, f32>,
    ) -> Result<Device> {
        let (n, m) = (geom.n(), geom.m());
        let one = || GpuMatrix::zeros(ctx, 1, 1);
        let (cost, x, y, online, d) = match geom {
            Geometry::Dense(c) => (GpuMatrix::upload(ctx, c.view())?, one()?, one()?, false, 0),
            Geometry::SqEuclidean(p) => (
                one()?,
                GpuMatrix::upload(ctx, p.x)?,
                GpuMatrix::upload(ctx, p.y)?,
                true,
                p.x.ncols(),
            ),
        };
        Ok(Device {
            cost,
            x,
            y,
            online,
            d,
            n,
            m,
            a: column(ctx, a.iter().copied())?,
            b: column(ctx, b.iter().copied())?,
            la: column(ctx, a.iter().map(|v| v.ln()))?,
            lb: column(ctx, b.iter().map(|v| v.ln()))?,
            f: GpuMatrix::zeros(ctx, n, 1)?,
            g: GpuMatrix::zeros(ctx, m, 1)?,
            f_prev: GpuMatrix::zeros(ctx, n, 1)?,
            g_prev: GpuMatrix::zeros(ctx, m, 1)?,
            resid: GpuMatrix::zeros(ctx, n, 1)?,
            resid_unused: GpuMatrix::zeros(ctx, 1, 1)?,
        })
    }

    /// Records one iteration: the f-update (with the row residuals when `want_resid`), then the g-update.
    fn record_iteration(
        &self,
        ctx: &GpuContext,
        enc: &mut wgpu::CommandEncoder,
        eps: f32,
        rho: (Option<f32>, Option<f32>),
        want_resid: bool,
    ) -> Result<()> {
        let kernel = Kernel::new("sinkhorn_update.wgsl", "sinkhorn_update");
        let geo_flag = u32::from(self.online);
        let tau = |r: Option<f32>| r.map_or(1.0, |r| r / (r + eps));
        // (n_self, n_other, cs_self, cs_other, points, weights, potentials, residuals, rho, resid flag)
        let sides = [
            (
                self.n,
                self.m,
                (self.m, 1),
                (&self.x, &self.y),
                (&self.a, &self.la, &self.lb),
                (&self.g, &self.f),
                if want_resid {
                    &self.resid
                } else {
                    &self.resid_unused
                },
                rho.0,
                want_resid,
            ),
            (
                self.m,
                self.n,
                (1, self.m),
                (&self.y, &self.x),
                (&self.b, &self.lb, &self.la),
                (&self.f, &self.g),
                &self.resid_unused,
                rho.1,
                false,
            ),
        ];
        for (
            n_self,
            n_other,
            (cs_self, cs_other),
            (ps, po),
            (w, lw_s, lw_o),
            (pot_o, pot_s),
            resid,
            r,
            want,
        ) in sides
        {
            for (start, groups) in ctx.row_dispatches(n_self, 1) {
                let params = ctx.uniform_from(&Params {
                    n_self: n_self as u32,
                    n_other: n_other as u32,
                    d: self.d as u32,
                    offset: start as u32,
                    cs_self: cs_self as u32,
                    cs_other: cs_other as u32,
                    flags: geo_flag | (u32::from(want) << 1) | (u32::from(r.is_some()) << 2),
                    _pad: 0,
                    eps,
                    tau: tau(r),
                    rho: r.unwrap_or(1.0),
                    _pad1: 0.0,
                });
                ctx.dispatch(
                    enc,
                    kernel,
                    &[
                        &params,
                        &self.cost.buf,
                        &ps.buf,
                        &po.buf,
                        &w.buf,
                        &lw_s.buf,
                        &lw_o.buf,
                        &pot_o.buf,
                        &pot_s.buf,
                        &resid.buf,
                    ],
                    groups,
                )?;
            }
        }
        Ok(())
    }

    /// One eps stage on the device, warm-started from `(f, g)` and written back to them; the stopping rule,
    /// the error history and the returned iterate follow the CPU's log-domain stage.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        ctx: &GpuContext,
        cfg: &SinkhornConfig<f32>,
        rho: (Option<f32>, Option<f32>),
        eps: f32,
        max_iter: usize,
        f: &mut [f32],
        g: &mut [f32],
    ) -> Result<StageResult<f32>> {
        const OP: &str = "gpu::sinkhorn";
        self.f.write(ctx, f);
        self.g.write(ctx, g);
        let mut history = Vec::new();
        let mut it = 0;
        let done = |me: &Device, f: &mut [f32], g: &mut [f32], from_prev: bool| -> Result<()> {
            let (fs, gs) = if from_prev {
                (&me.f_prev, &me.g_prev)
            } else {
                (&me.f, &me.g)
            };
            f.copy_from_slice(fs.download(ctx)?.as_slice().expect("n x 1"));
            g.copy_from_slice(gs.download(ctx)?.as_slice().expect("m x 1"));
            Ok(())
        };
        while it < max_iter {
            let mut enc = ctx.encoder();
            if it % cfg.check_every == 0 {
                enc.copy_buffer_to_buffer(&self.f.buf, 0, &self.f_prev.buf, 0, self.f.bytes());
                enc.copy_buffer_to_buffer(&self.g.buf, 0, &self.g_prev.buf, 0, self.g.bytes());
                self.record_iteration(ctx, &mut enc, eps, rho, true)?;
                ctx.submit(OP, enc)?;
                let resid = self.resid.download(ctx)?;
                let err = cfg.norm.apply(resid.iter().copied());
                history.push((it, err));
                if err <= cfg.tol {
                    // the error belongs to the iterate before this pass: return that iterate
                    done(self, f, g, true)?;
                    return Ok(StageResult {
                        iterations: it,
                        history,
                        termination: Termination::Converged,
                    });
                }
                if !err.is_finite() {
                    done(self, f, g, false)?;
                    return Ok(StageResult {
                        iterations: it,
                        history,
                        termination: Termination::NonFinite { iteration: it },
                    });
                }
                it += 1;
            } else {
                // the iterations up to the next check (or the cap) in one submission
                let next = (it / cfg.check_every + 1) * cfg.check_every;
                let stop = next.min(max_iter);
                for _ in it..stop {
                    self.record_iteration(ctx, &mut enc, eps, rho, false)?;
                }
                ctx.submit(OP, enc)?;
                it = stop;
            }
        }
        done(self, f, g, false)?;
        Ok(StageResult {
            iterations: max_iter,
            history,
            termination: Termination::MaxIterations,
        })
    }
}

/// [`crate::transport::sinkhorn`] with the iterations on the GPU (f32).
///
/// # Errors
/// As [`crate::transport::sinkhorn`]; [`Error::Param`] for `Domain::Scaling` (the GPU iterates in the log
/// domain only); [`Error::Gpu`] for a device failure or a cost / cloud beyond one storage binding.
///
/// # Example
/// ```no_run
/// # #[cfg(feature = "gpu")] {
/// use ndarray::array;
/// use recgoat_core::gpu::{self, GpuContext};
/// use recgoat_core::transport::{EpsScale, Epsilon, Geometry, SinkhornConfig};
/// let ctx = GpuContext::new()?;
/// let x = array![[0.0f32, 0.0], [1.0, 0.0]];
/// let w = array![0.5f32, 0.5];
/// let geom = Geometry::sq_euclidean(x.view(), x.view())?;
/// let cfg = SinkhornConfig::new(Epsilon::relative(EpsScale::Mean, 0.05));
/// let out = gpu::sinkhorn(&ctx, &geom, w.view(), w.view(), &cfg)?;
/// assert!(out.converged && out.transport_cost < 1e-3);
/// # }
/// # Ok::<(), recgoat_core::Error>(())
/// ```
pub fn sinkhorn(
    ctx: &GpuContext,
    geom: &Geometry<'_, f32>,
    a: ArrayView1<'_, f32>,
    b: ArrayView1<'_, f32>,
    cfg: &SinkhornConfig<f32>,
) -> Result<SinkhornOutput<f32>> {
    const OP: &str = "gpu::sinkhorn";
    validate_problem(OP, geom, a, b, cfg)?;
    if cfg.domain != Domain::Log {
        return Err(Error::param(
            OP,
            "domain",
            format!("{:?}", cfg.domain),
            "the GPU path iterates in the log domain only",
        ));
    }
    let par = Par::rayon();
    let target = cfg.eps.resolve(geom, par)?;
    let dev = Device::upload(ctx, geom, a, b)?;
    solve_with(geom, a, b, cfg, target, par, &mut |s, f, g| {
        dev.stage(ctx, cfg, s.rho, s.eps, s.max_iter, f, g)
    })
}

/// [`crate::transport::sinkhorn_batch`] on the GPU: each problem solved in turn on the device by
/// [`sinkhorn`], results in input order, one `Result` per problem (a bad problem does not spoil the
/// others). The problems share the device one after another rather than in one dispatch, so many tiny
/// problems are better served by the CPU batch.
pub fn sinkhorn_batch(
    ctx: &GpuContext,
    problems: &[crate::transport::BatchProblem<'_, f32>],
    cfg: &SinkhornConfig<f32>,
) -> Vec<Result<SinkhornOutput<f32>>> {
    problems
        .iter()
        .map(|p| sinkhorn(ctx, &p.geom, p.a, p.b, cfg))
        .collect()
}
