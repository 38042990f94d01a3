//! Log-domain Sinkhorn on the GPU (`shaders/sinkhorn_update.wgsl`): the same problem, configuration and
//! output as [`crate::transport::sinkhorn`] (dense or online squared Euclidean cost, absolute or relative
//! eps, geometric eps schedule with warm starts, balanced or KL-unbalanced marginals, stopping on the
//! marginal error every `check_every` iterations), iterating on the device.
//!
//! The iterations run on the GPU, `check_every` of them per submission; at each check the row residuals
//! (one float per row) come back to measure the error. The final measurement (row and column sums and
//! `<P, C>`, `shaders/sinkhorn_measure.wgsl`) runs on the device too; the eps resolution (mean / median /
//! max of the cost; the mean of a point-cloud cost in closed form), the dual value and the plan when one is
//! asked for come from the CPU solver's code.

use super::context::Kernel;
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};
use crate::transport::cpu::{solve_with, Measure, StageResult};
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
    _pad_d: u32,
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

impl Params {
    /// A dense-kernel pass over `n_self` rows against `n_other` columns (row strides `cs_self` /
    /// `cs_other` of the cost), from row 0, no flags, unit `tau` and `rho`, zero padding.
    fn dense(n_self: usize, n_other: usize, cs_self: usize, cs_other: usize, eps: f32) -> Self {
        Params {
            n_self: n_self as u32,
            n_other: n_other as u32,
            _pad_d: 0,
            offset: 0,
            cs_self: cs_self as u32,
            cs_other: cs_other as u32,
            flags: 0,
            _pad: 0,
            eps,
            tau: 1.0,
            rho: 1.0,
            _pad1: 0.0,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct OnlineParams {
    n_self: u32,
    n_other: u32,
    d: u32,
    offset: u32,
    flags: u32,
    eps: f32,
    tau: f32,
    rho: f32,
}

impl OnlineParams {
    /// A pass of the online kernel over `n_self` points of dimension `d` against `n_other`, from point 0,
    /// no flags, unit `tau` and `rho`.
    fn new(n_self: usize, n_other: usize, d: usize, eps: f32) -> Self {
        OnlineParams {
            n_self: n_self as u32,
            n_other: n_other as u32,
            d: d as u32,
            offset: 0,
            flags: 0,
            eps,
            tau: 1.0,
            rho: 1.0,
        }
    }
}

/// Self points per workgroup of `sinkhorn_online.wgsl` (its `TM`).
const ONLINE_ROWS: usize = 64;

/// Records one pass of `sinkhorn_online.wgsl` over all self points (chunked under the dispatch limit).
/// `buffers`: the self and other points, `w_self`, `lw_self`, `lw_other`, `pot_other`, `pot_self`,
/// `resid`, `aux`, in the kernel's binding order.
fn record_online(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    p: OnlineParams,
    buffers: [&wgpu::Buffer; 9],
) -> Result<()> {
    let kernel = Kernel::new("sinkhorn_online.wgsl", "sinkhorn_online");
    let params = |start: usize| OnlineParams {
        offset: start as u32,
        ..p
    };
    ctx.dispatch_rows(
        enc,
        kernel,
        (p.n_self as usize, ONLINE_ROWS),
        params,
        &buffers,
    )
}

/// The problem on the device.
struct Device {
    /// Dense cost, or a placeholder.
    cost: GpuMatrix,
    /// Source and target points (squared Euclidean), transposed (d x n, d x m), or placeholders.
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
    aux_unused: GpuMatrix,
}

/// The values as an `n x 1` matrix on the device.
pub(super) fn column(ctx: &GpuContext, v: impl Iterator<Item = f32>) -> Result<GpuMatrix> {
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
            // transposed (d x n): the kernels read one coordinate of consecutive points together
            Geometry::SqEuclidean(p) => (
                one()?,
                GpuMatrix::upload(ctx, p.x.t())?,
                GpuMatrix::upload(ctx, p.y.t())?,
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
            aux_unused: GpuMatrix::zeros(ctx, 1, 1)?,
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
            if self.online {
                let p = OnlineParams {
                    flags: (u32::from(want) << 1) | (u32::from(r.is_some()) << 2),
                    tau: tau(r),
                    rho: r.unwrap_or(1.0),
                    ..OnlineParams::new(n_self, n_other, self.d, eps)
                };
                let bufs = [
                    &ps.buf,
                    &po.buf,
                    &w.buf,
                    &lw_s.buf,
                    &lw_o.buf,
                    &pot_o.buf,
                    &pot_s.buf,
                    &resid.buf,
                    &self.aux_unused.buf,
                ];
                record_online(ctx, enc, p, bufs)?;
                continue;
            }
            for (start, groups) in ctx.row_dispatches(n_self, 1) {
                let params = ctx.uniform_from(&Params {
                    offset: start as u32,
                    flags: (u32::from(want) << 1) | (u32::from(r.is_some()) << 2),
                    tau: tau(r),
                    rho: r.unwrap_or(1.0),
                    ..Params::dense(n_self, n_other, cs_self, cs_other, eps)
                });
                ctx.dispatch(
                    enc,
                    kernel,
                    &[
                        &params,
                        &self.cost.buf,
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

    /// The final measuring pass on the device: the plan's row sums, column sums and `<P, C>` from the log
    /// scalings `(alpha, beta)` (`sinkhorn_measure.wgsl`, once along the rows and once along the columns).
    fn measure(
        &self,
        ctx: &GpuContext,
        alpha: &[f32],
        beta: &[f32],
        eps: f32,
    ) -> Result<Measure<f32>> {
        const OP: &str = "gpu::sinkhorn (measure)";
        let kernel = Kernel::new("sinkhorn_measure.wgsl", "sinkhorn_measure");
        // the potentials' spare copies hold the scalings (the stages are over)
        self.f_prev.write(ctx, alpha)?;
        self.g_prev.write(ctx, beta)?;
        let (n, m) = (self.n, self.m);
        let mass = [GpuMatrix::zeros(ctx, n, 1)?, GpuMatrix::zeros(ctx, m, 1)?];
        let share = [GpuMatrix::zeros(ctx, n, 1)?, GpuMatrix::zeros(ctx, m, 1)?];
        let mut enc = ctx.encoder();
        let sides = [
            (
                n,
                m,
                (m, 1),
                (&self.x, &self.y),
                (&self.f_prev, &self.g_prev),
            ),
            (
                m,
                n,
                (1, m),
                (&self.y, &self.x),
                (&self.g_prev, &self.f_prev),
            ),
        ];
        let zeros = [GpuMatrix::zeros(ctx, n, 1)?, GpuMatrix::zeros(ctx, m, 1)?];
        for (side, (n_self, n_other, (cs_self, cs_other), (ps, po), (ss, so))) in
            sides.into_iter().enumerate()
        {
            if self.online {
                // measure mode: the scalings ride in the potentials' slots, zero log weights
                let p = OnlineParams {
                    flags: 8,
                    ..OnlineParams::new(n_self, n_other, self.d, eps)
                };
                let bufs = [
                    &ps.buf,
                    &po.buf,
                    &self.a.buf,
                    &zeros[side].buf,
                    &zeros[1 - side].buf,
                    &so.buf,
                    &ss.buf,
                    &mass[side].buf,
                    &share[side].buf,
                ];
                record_online(ctx, &mut enc, p, bufs)?;
                continue;
            }
            for (start, groups) in ctx.row_dispatches(n_self, 1) {
                let params = ctx.uniform_from(&Params {
                    offset: start as u32,
                    ..Params::dense(n_self, n_other, cs_self, cs_other, eps)
                });
                ctx.dispatch(
                    &mut enc,
                    kernel,
                    &[
                        &params,
                        &self.cost.buf,
                        &ss.buf,
                        &so.buf,
                        &mass[side].buf,
                        &share[side].buf,
                    ],
                    groups,
                )?;
            }
        }
        ctx.submit(OP, enc)?;
        let rows = mass[0].download(ctx)?.into_raw_vec_and_offset().0;
        let cols = mass[1].download(ctx)?.into_raw_vec_and_offset().0;
        let cost = share[0]
            .download(ctx)?
            .iter()
            .map(|&v| f64::from(v))
            .sum::<f64>();
        Ok(Measure {
            rows,
            cols,
            cost: cost as f32,
            plan: None,
        })
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
        self.f.write(ctx, f)?;
        self.g.write(ctx, g)?;
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
    solve_with(
        geom,
        a,
        b,
        cfg,
        target,
        par,
        Some(&mut |al: &[f32], be: &[f32], eps| dev.measure(ctx, al, be, eps)),
        &mut |s, f, g| dev.stage(ctx, cfg, s.rho, s.eps, s.max_iter, f, g),
    )
}

/// The most points on either side of a problem that [`sinkhorn_batch`] solves in its one-dispatch kernel.
pub const SMALL_PROBLEM: usize = 256;

/// [`crate::transport::sinkhorn_batch`] on the GPU: results in input order, one `Result` per problem (a bad
/// problem does not spoil the others).
///
/// In the log domain, the problems with at most [`SMALL_PROBLEM`] points on either side (dense or
/// point-cloud costs; a cloud's cost is formed on the host) are solved together in **one dispatch**
/// (`shaders/sinkhorn_small.wgsl`): one workgroup per problem runs its eps schedule, iterations and
/// convergence checks on the device, so the host waits once for the whole batch; the final measurement of
/// each runs on the host. Larger problems are solved in turn by [`sinkhorn`].
///
/// # Example
/// ```no_run
/// # #[cfg(feature = "gpu")] {
/// use ndarray::array;
/// use recgoat_core::gpu::{self, GpuContext};
/// use recgoat_core::transport::{BatchProblem, Epsilon, Geometry, SinkhornConfig};
/// let ctx = GpuContext::new()?;
/// let c = array![[0.0f32, 1.0], [1.0, 0.0]];
/// let w = array![0.5f32, 0.5];
/// let problem = BatchProblem { geom: Geometry::dense(c.view())?, a: w.view(), b: w.view() };
/// let outs = gpu::sinkhorn_batch(&ctx, &[problem.clone(), problem], &SinkhornConfig::new(Epsilon::Absolute(0.1)));
/// assert!(outs.iter().all(|o| o.as_ref().is_ok_and(|o| o.converged)));
/// # }
/// # Ok::<(), recgoat_core::Error>(())
/// ```
pub fn sinkhorn_batch(
    ctx: &GpuContext,
    problems: &[crate::transport::BatchProblem<'_, f32>],
    cfg: &SinkhornConfig<f32>,
) -> Vec<Result<SinkhornOutput<f32>>> {
    const OP: &str = "gpu::sinkhorn_batch";
    let mut out: Vec<Option<Result<SinkhornOutput<f32>>>> = problems.iter().map(|_| None).collect();
    let mut small = Vec::new();
    for (i, p) in problems.iter().enumerate() {
        let fits = p.geom.n() <= SMALL_PROBLEM && p.geom.m() <= SMALL_PROBLEM;
        if cfg.domain == Domain::Log && fits {
            match validate_problem(OP, &p.geom, p.a, p.b, cfg).and_then(|()| plan_small(p, cfg)) {
                Ok(plan) => small.push((i, plan)),
                Err(e) => out[i] = Some(Err(e)),
            }
        } else {
            out[i] = Some(sinkhorn(ctx, &p.geom, p.a, p.b, cfg));
        }
    }
    if !small.is_empty() {
        match solve_small(ctx, problems, &small, cfg) {
            Ok(results) => {
                for ((i, _), r) in small.iter().zip(results) {
                    out[*i] = Some(r);
                }
            }
            Err(e) => {
                for (i, _) in &small {
                    out[*i] = Some(Err(e.clone()));
                }
            }
        }
    }
    out.into_iter()
        .map(|r| r.expect("every problem has a result"))
        .collect()
}

/// What the small-problem kernel needs of one problem beyond its data: the target eps, the schedule and the
/// unbalanced marginals' rho.
struct SmallPlan {
    target: f32,
    stages: Vec<(f32, usize)>,
    rho: (Option<f32>, Option<f32>),
}

fn plan_small(
    p: &crate::transport::BatchProblem<'_, f32>,
    cfg: &SinkhornConfig<f32>,
) -> Result<SmallPlan> {
    let target = cfg.eps.resolve(&p.geom, Par::Seq)?;
    Ok(SmallPlan {
        target,
        stages: crate::transport::cpu::stages(&p.geom, cfg, target, Par::Seq)?,
        rho: (cfg.marginal_a.rho(target), cfg.marginal_b.rho(target)),
    })
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SmallParams {
    problems: u32,
    offset: u32,
    check_every: u32,
    norm: u32,
    tol: f32,
    _pad: [f32; 3],
}

/// Where one problem's data and results sit in the packed buffers.
struct Packed {
    n: usize,
    m: usize,
    pot: usize,
    result: usize,
    hist: Vec<usize>,
}

/// Records [`sinkhorn_small`'s kernel](solve_small) over `problems` problems whose table, costs, weights,
/// potentials and results are already on the device (the OAT map's solve, whose cost and eps the device
/// computes).
pub(super) fn record_small(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    cfg: &SinkhornConfig<f32>,
    problems: usize,
    bufs: [&wgpu::Buffer; 5],
) -> Result<()> {
    let norm = match cfg.norm {
        crate::transport::ErrorNorm::L1 => 0,
        crate::transport::ErrorNorm::L2 => 1,
        crate::transport::ErrorNorm::LInf => 2,
    };
    let params = |start: usize| SmallParams {
        problems: problems as u32,
        offset: start as u32,
        check_every: cfg.check_every as u32,
        norm,
        tol: cfg.tol,
        _pad: [0.0; 3],
    };
    let kernel = Kernel::new("sinkhorn_small.wgsl", "sinkhorn_small");
    ctx.dispatch_rows(enc, kernel, (problems, 1), params, &bufs)
}

pub(super) fn u32_of(op: &'static str, x: usize) -> Result<u32> {
    u32::try_from(x).map_err(|_| Error::Gpu {
        op,
        reason: format!("{x} exceeds the u32 offsets the shader uses"),
    })
}

/// Solves the planned small problems in one dispatch (chunked only past the dispatch limit) and finishes
/// each on the host.
fn solve_small(
    ctx: &GpuContext,
    problems: &[crate::transport::BatchProblem<'_, f32>],
    small: &[(usize, SmallPlan)],
    cfg: &SinkhornConfig<f32>,
) -> Result<Vec<Result<SinkhornOutput<f32>>>> {
    const OP: &str = "gpu::sinkhorn_batch";
    let count = small.len();
    let stage_words: usize = small.iter().map(|(_, p)| 12 * p.stages.len()).sum();
    let mut meta: Vec<u32> = Vec::with_capacity(8 * count + stage_words);
    meta.resize(8 * count, 0);
    let (mut cost, mut w, mut pot) = (Vec::new(), Vec::new(), Vec::new());
    let mut results = 0usize;
    let mut packed = Vec::with_capacity(count);
    for (k, (i, plan)) in small.iter().enumerate() {
        let p = &problems[*i];
        let (n, m) = (p.geom.n(), p.geom.m());
        let header = [
            n,
            m,
            cost.len(),
            w.len(),
            pot.len(),
            plan.stages.len(),
            meta.len(),
            results,
        ];
        for (slot, v) in header.into_iter().enumerate() {
            meta[8 * k + slot] = u32_of(OP, v)?;
        }
        cost.extend(p.geom.to_dense().iter().copied());
        w.extend(p.a.iter().copied());
        w.extend(p.a.iter().map(|v| v.ln()));
        w.extend(p.b.iter().copied());
        w.extend(p.b.iter().map(|v| v.ln()));
        let pot0 = pot.len();
        pot.resize(pot0 + n + m, 0.0);
        let result = results;
        results += 3 * plan.stages.len();
        let mut hist = Vec::with_capacity(plan.stages.len());
        let tau = |r: Option<f32>, eps: f32| r.map_or(1.0, |r| r / (r + eps));
        for &(eps, max_iter) in &plan.stages {
            hist.push(results);
            let flags = u32::from(plan.rho.0.is_some()) | (u32::from(plan.rho.1.is_some()) << 1);
            meta.extend([u32_of(OP, max_iter)?, flags, u32_of(OP, results)?, 0]);
            meta.extend(
                [
                    eps,
                    tau(plan.rho.0, eps),
                    tau(plan.rho.1, eps),
                    plan.rho.0.unwrap_or(1.0),
                    plan.rho.1.unwrap_or(1.0),
                    0.0,
                    0.0,
                    0.0,
                ]
                .map(f32::to_bits),
            );
            results += 2 * (max_iter / cfg.check_every + 1);
        }
        packed.push(Packed {
            n,
            m,
            pot: pot0,
            result,
            hist,
        });
    }
    for (what, words) in [
        ("costs", cost.len()),
        ("meta", meta.len()),
        ("results", results),
    ] {
        ctx.check_binding(OP, what, (words * 4) as u64)?;
        u32_of(OP, words)?;
    }
    let meta_buf = ctx.storage_from("sinkhorn meta", &meta);
    let cost_buf = ctx.storage_from("sinkhorn costs", &cost);
    let w_buf = ctx.storage_from("sinkhorn weights", &w);
    let pot_buf = ctx.storage_from("sinkhorn potentials", &pot);
    let out_buf = ctx.storage_zeroed("sinkhorn results", (results * 4) as u64);
    let mut enc = ctx.encoder();
    let bufs = [&*meta_buf, &cost_buf, &w_buf, &pot_buf, &out_buf];
    record_small(ctx, &mut enc, cfg, count, bufs)?;
    ctx.submit(OP, enc)?;
    let pot: Vec<f32> = ctx.read_buffer(OP, &pot_buf, pot.len())?;
    let res: Vec<u32> = ctx.read_buffer(OP, &out_buf, results)?;
    Ok(small
        .iter()
        .zip(&packed)
        .map(|((i, plan), pk)| {
            let p = &problems[*i];
            let (f_end, g_end) = (
                &pot[pk.pot..pk.pot + pk.n],
                &pot[pk.pot + pk.n..pk.pot + pk.n + pk.m],
            );
            let mut stage = 0;
            solve_with(
                &p.geom,
                p.a,
                p.b,
                cfg,
                plan.target,
                Par::Seq,
                None,
                &mut |_, f, g| {
                    let r = &res[pk.result + 3 * stage..pk.result + 3 * stage + 3];
                    let h0 = pk.hist[stage];
                    stage += 1;
                    let history: Vec<(usize, f32)> = (0..r[2] as usize)
                        .map(|e| {
                            (
                                res[h0 + 2 * e] as usize,
                                f32::from_bits(res[h0 + 2 * e + 1]),
                            )
                        })
                        .collect();
                    f.copy_from_slice(f_end);
                    g.copy_from_slice(g_end);
                    // the stopping rule of the CPU stages, read from the history in order
                    let stop = history
                        .iter()
                        .position(|&(_, e)| e <= cfg.tol || !e.is_finite());
                    let (iterations, termination, history) = match stop {
                        Some(h) => {
                            let (it, e) = history[h];
                            let t = if e <= cfg.tol {
                                Termination::Converged
                            } else {
                                Termination::NonFinite { iteration: it }
                            };
                            (it, t, history[..=h].to_vec())
                        }
                        None => (r[0] as usize, Termination::MaxIterations, history),
                    };
                    Ok(StageResult {
                        iterations,
                        history,
                        termination,
                    })
                },
            )
        })
        .collect())
}
