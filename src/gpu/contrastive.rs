//! InfoNCE forward and backward on the GPU: the same loss and gradients as
//! [`crate::contrastive::info_nce`] (one-way or symmetric, optional normalisation, extra negatives, pair
//! weights, mean or sum), built from the row-normalisation kernels and three kernels on the GEMM tile.
//!
//! Per direction and block of anchor rows:
//! 1. `S = X [P; N]^T / tau` into one `R x (B + K)` block (`xent_logits.wgsl`, one product for `P` and one
//!    for `N`), each 64-column tile's row maximum and sum of exponentials computed as the tile is stored;
//! 2. per row, the log-sum-exp from those statistics and the loss term (`xent_lse.wgsl`);
//! 3. `dX += G [P; N] / tau`, `dP += G[:, :B]^T X / tau`, `dN += G[:, B:]^T X / tau` (`xent_grad.wgsl`),
//!    where `G = coef (softmax(S) - onehot)` is formed from `S` and the log-sum-exp as the products load it.
//!
//! The `R x (B + K)` block is written once and read by the two backward products, never rewritten: no
//! separate softmax pass over it. No float atomics; blocks keep the similarity buffer under the device's
//! storage-binding size.

use super::context::Kernel;
use super::gemm::{record_gemm_as, GemmKind, Operand};
use super::norm::{judge_norms, record_normalize, record_normalize_backward};
use super::{GpuContext, GpuMatrix};
use crate::contrastive::{validate_inputs, Direction, InfoNceConfig, InfoNceOutput, Reduction};
use crate::error::{Error, Result};
use ndarray::{Array2, ArrayView1, ArrayView2};

/// Loss and device-resident gradients of [`info_nce_on_device`].
#[derive(Debug)]
pub struct GpuInfoNceOutput {
    /// The loss (read back: one float per pair and direction).
    pub loss: f32,
    /// `dloss/dv1` (B x d).
    pub grad_v1: GpuMatrix,
    /// `dloss/dv2` (B x d).
    pub grad_v2: GpuMatrix,
    /// `dloss/dnegatives` (K x d), when negatives were given.
    pub grad_negatives: Option<GpuMatrix>,
}

/// [`info_nce_on_device`] before anything is read back: the gradients, and the values to read and judge
/// later ([`PendingInfoNce`]), for a caller that reads those with other values (the model's GPU backend).
#[derive(Debug)]
pub(crate) struct DeferredInfoNce {
    pub(crate) grad_v1: GpuMatrix,
    pub(crate) grad_v2: GpuMatrix,
    pub(crate) grad_negatives: Option<GpuMatrix>,
    pub(crate) pending: PendingInfoNce,
}

/// What an InfoNCE on the device leaves to read: its per-row loss terms and the row norms of its views.
#[derive(Debug)]
pub(crate) struct PendingInfoNce {
    /// Per-row loss terms (`B x 1`), one matrix per direction: the loss is their sum.
    losses: Vec<GpuMatrix>,
    /// With normalisation, the row norms of each view (`v1`, `v2`, `negatives`), named.
    norms: Vec<(&'static str, GpuMatrix)>,
}

impl PendingInfoNce {
    /// The loss from the values [`PendingInfoNce::reads`] read back, in that order: the zero-row error of
    /// the CPU path first, then the sum of the loss terms.
    pub(crate) fn judge(&self, mut values: impl Iterator<Item = Vec<f32>>) -> Result<f32> {
        let norms: Vec<Vec<f32>> = values.by_ref().take(self.norms.len()).collect();
        for ((what, _), n) in self.norms.iter().zip(&norms) {
            judge_norms("gpu::info_nce", what, n)?;
        }
        let loss: f64 = (values.take(self.losses.len()))
            .flatten()
            .map(f64::from)
            .sum();
        Ok(loss as f32)
    }

    /// Every buffer to read back, norms first, with its length.
    pub(crate) fn reads(&self) -> Vec<(&wgpu::Buffer, usize)> {
        (self.norms.iter().map(|(_, n)| n))
            .chain(&self.losses)
            .map(|m| (&m.buf, m.rows() * m.cols()))
            .collect()
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct LseParams {
    rows: u32,
    slots: u32,
    ld: u32,
    pos_offset: u32,
    row_offset: u32,
    _pad: [u32; 3],
}

/// Edge of the similarity tiles whose row statistics `xent_logits.wgsl` writes (the GEMM tile).
const STAT_TILE: usize = 64;

/// The row statistics' slots of a similarity block over `b` positives and `k` negatives: the positives'
/// tiles, and all the tiles of a row.
fn stat_slots(b: usize, k: usize) -> (usize, usize) {
    let pos = b.div_ceil(STAT_TILE);
    (pos, pos + k.div_ceil(STAT_TILE))
}

/// The scratch of one direction's blocks: the similarity block, the tiles' row statistics and the
/// log-sum-exp of every anchor.
struct Scratch<'a> {
    s: &'a GpuMatrix,
    stats: &'a wgpu::Buffer,
    lse: &'a wgpu::Buffer,
    coef: &'a GpuMatrix,
}

/// The largest similarity block the device takes in one binding (and at most 256 MiB).
fn block_rows(ctx: &GpuContext, b: usize, m: usize) -> Result<usize> {
    let max_bytes = ctx.limits().max_storage_buffer_binding_size.min(256 << 20) as usize;
    let rows = (max_bytes / (4 * m.max(1))).min(b);
    if rows == 0 {
        return Err(Error::Gpu {
            op: "gpu::info_nce",
            reason: format!(
                "one similarity row of {m} candidates exceeds max_storage_buffer_binding_size ({max_bytes})"
            ),
        });
    }
    Ok(rows)
}

struct DirectionArgs<'a> {
    anchors: &'a GpuMatrix,
    positives: &'a GpuMatrix,
    negatives: Option<&'a GpuMatrix>,
    grad_anchors: &'a GpuMatrix,
    grad_positives: &'a GpuMatrix,
    grad_negatives: Option<&'a GpuMatrix>,
    loss: &'a GpuMatrix,
}

/// Records one direction's loss rows and gradient accumulation.
fn record_direction<'a>(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    a: &DirectionArgs<'a>,
    scratch: &Scratch<'_>,
    inv_tau: f32,
    rows_per_block: usize,
) -> Result<()> {
    let (b, d) = (a.anchors.rows(), a.anchors.cols());
    let k = a.negatives.map_or(0, GpuMatrix::rows);
    let m = b + k;
    let (pos_tiles, slots) = stat_slots(b, k);
    let at = |x: &'a GpuMatrix, r0: usize| Operand::rows_from(x, r0);
    let s = scratch.s;
    let s_block = |off: usize, trans: bool| Operand {
        buf: &s.buf,
        ld: m,
        off,
        trans,
    };
    for r0 in (0..b).step_by(rows_per_block) {
        let r = (b - r0).min(rows_per_block);
        // S = X[r0..r0+r] [P; N]^T / tau, with each tile's row statistics
        let stats = scratch.stats;
        let logits = |first_slot| GemmKind::XentLogits {
            stats,
            first_slot,
            slots,
        };
        let (x, pt) = (at(a.anchors, r0), Operand::of(a.positives, true));
        let out = s_block(0, false);
        record_gemm_as(ctx, enc, logits(0), (r, b, d), inv_tau, x, pt, 0.0, out)?;
        if let Some(n) = a.negatives {
            let (nt, out) = (Operand::of(n, true), s_block(b, false));
            let how = logits(pos_tiles);
            record_gemm_as(ctx, enc, how, (r, k, d), inv_tau, x, nt, 0.0, out)?;
        }
        let lse = Kernel::new("xent_lse.wgsl", "xent_lse");
        let params = |start: usize| LseParams {
            rows: r as u32,
            slots: slots as u32,
            ld: m as u32,
            pos_offset: r0 as u32,
            row_offset: start as u32,
            _pad: [0; 3],
        };
        let bufs = [stats, &s.buf, &scratch.coef.buf, scratch.lse, &a.loss.buf];
        ctx.dispatch_rows(enc, lse, (r, 64), params, &bufs)?;
        let grad = GemmKind::XentGrad {
            coef: &scratch.coef.buf,
            lse: scratch.lse,
            pos_offset: r0,
        };
        let gemm = |enc: &mut wgpu::CommandEncoder, mnk, a_op, b_op, c_op| {
            record_gemm_as(ctx, enc, grad, mnk, inv_tau, a_op, b_op, 1.0, c_op)
        };
        // dX[r0..] += G [P; N] / tau
        let ga = at(a.grad_anchors, r0);
        gemm(
            enc,
            (r, d, b),
            s_block(0, false),
            Operand::of(a.positives, false),
            ga,
        )?;
        if let Some(n) = a.negatives {
            gemm(enc, (r, d, k), s_block(b, false), Operand::of(n, false), ga)?;
        }
        // dP += G[:, :B]^T X[r0..] / tau, dN += G[:, B:]^T X[r0..] / tau
        let gp = Operand::of(a.grad_positives, false);
        gemm(enc, (b, d, r), s_block(0, true), at(a.anchors, r0), gp)?;
        if let Some(gn) = a.grad_negatives {
            let gn = Operand::of(gn, false);
            gemm(enc, (k, d, r), s_block(b, true), at(a.anchors, r0), gn)?;
        }
    }
    Ok(())
}

/// InfoNCE on device-resident views: the loss comes back to the host, the gradients stay on the device
/// (the GPU twin of [`crate::contrastive::info_nce`], same semantics and configuration).
///
/// # Errors
/// [`Error::Shape`] for views of different shapes, negatives of another width or weights of another length;
/// [`Error::Empty`] for no pairs; [`Error::Negative`] / [`Error::NonFinite`] for bad weights;
/// [`Error::Param`] for a bad config or, with normalisation on, a zero row (named); [`Error::Gpu`].
pub fn info_nce_on_device(
    ctx: &GpuContext,
    v1: &GpuMatrix,
    v2: &GpuMatrix,
    negatives: Option<&GpuMatrix>,
    weights: Option<ArrayView1<'_, f32>>,
    cfg: &InfoNceConfig<f32>,
) -> Result<GpuInfoNceOutput> {
    const OP: &str = "gpu::info_nce";
    let out = info_nce_deferred(ctx, v1, v2, negatives, weights, cfg)?;
    let read = ctx.read_many(OP, &out.pending.reads())?;
    let loss = out.pending.judge(read.into_iter())?;
    Ok(GpuInfoNceOutput {
        loss,
        grad_v1: out.grad_v1,
        grad_v2: out.grad_v2,
        grad_negatives: out.grad_negatives,
    })
}

/// [`info_nce_on_device`] without reading anything back (see [`DeferredInfoNce`]): one submission.
///
/// # Errors
/// As [`info_nce_on_device`], less the zero-row check.
pub(crate) fn info_nce_deferred(
    ctx: &GpuContext,
    v1: &GpuMatrix,
    v2: &GpuMatrix,
    negatives: Option<&GpuMatrix>,
    weights: Option<ArrayView1<'_, f32>>,
    cfg: &InfoNceConfig<f32>,
) -> Result<DeferredInfoNce> {
    const OP: &str = "gpu::info_nce";
    cfg.validate()?;
    // shapes and weights with the CPU path's checks (on empty stand-ins for the device matrices: the
    // values were checked for NaN/Inf when they were uploaded)
    let zero = Array2::<f32>::zeros((1, 1));
    let shape = |x: &GpuMatrix| {
        zero.broadcast((x.rows(), x.cols()))
            .expect("broadcast of 1 x 1")
    };
    validate_inputs(OP, shape(v1), shape(v2), negatives.map(shape), weights)?;
    let (b, d) = (v1.rows(), v1.cols());
    let k = negatives.map_or(0, GpuMatrix::rows);

    // normalised copies (and norms, for the zero-row check of the CPU path)
    let mut enc = ctx.encoder();
    let mut normalized = |x: &GpuMatrix| -> Result<Option<(GpuMatrix, GpuMatrix)>> {
        if !cfg.normalize {
            return Ok(None);
        }
        let y = GpuMatrix::zeros(ctx, x.rows(), x.cols())?;
        let n = GpuMatrix::zeros(ctx, x.rows(), 1)?;
        record_normalize(ctx, &mut enc, x, &y, &n)?;
        Ok(Some((y, n)))
    };
    let (nu, nw) = (normalized(v1)?, normalized(v2)?);
    let nn = match negatives {
        Some(n) => normalized(n)?,
        None => None,
    };
    let u = nu.as_ref().map_or(v1, |(y, _)| y);
    let w = nw.as_ref().map_or(v2, |(y, _)| y);
    let n = match (&nn, negatives) {
        (Some((y, _)), _) => Some(y),
        (None, n) => n,
    };

    let base = match cfg.reduction {
        Reduction::Mean => 1.0 / b as f32,
        Reduction::Sum => 1.0,
    };
    let half = if cfg.direction == Direction::Symmetric {
        0.5
    } else {
        1.0
    };
    let coef: Array2<f32> = Array2::from_shape_fn((b, 1), |(i, _)| {
        weights.map_or(1.0, |wt| wt[i]) * base * half
    });
    let coef = GpuMatrix::upload(ctx, coef.view())?;
    let m = b + k;
    let rows_per_block = block_rows(ctx, b, m)?;
    let s = GpuMatrix::zeros(ctx, rows_per_block, m)?;
    let slots = stat_slots(b, k).1;
    let stats_bytes = (rows_per_block * slots * 2 * 4) as u64;
    ctx.check_binding(OP, "similarity tile statistics", stats_bytes)?;
    let stats = ctx.storage_zeroed("infonce tile statistics", stats_bytes);
    let lse = ctx.storage_zeroed("infonce log-sum-exp", (b * 4) as u64);
    let scratch = Scratch {
        s: &s,
        stats: &stats,
        lse: &lse,
        coef: &coef,
    };
    let (gu, gw) = (GpuMatrix::zeros(ctx, b, d)?, GpuMatrix::zeros(ctx, b, d)?);
    let gn = match negatives {
        Some(_) => Some(GpuMatrix::zeros(ctx, k, d)?),
        None => None,
    };
    let inv_tau = 1.0 / cfg.temperature;
    let losses = [GpuMatrix::zeros(ctx, b, 1)?, GpuMatrix::zeros(ctx, b, 1)?];
    record_direction(
        ctx,
        &mut enc,
        &DirectionArgs {
            anchors: u,
            positives: w,
            negatives: n,
            grad_anchors: &gu,
            grad_positives: &gw,
            grad_negatives: gn.as_ref(),
            loss: &losses[0],
        },
        &scratch,
        inv_tau,
        rows_per_block,
    )?;
    if cfg.direction == Direction::Symmetric {
        record_direction(
            ctx,
            &mut enc,
            &DirectionArgs {
                anchors: w,
                positives: u,
                negatives: n,
                grad_anchors: &gw,
                grad_positives: &gu,
                grad_negatives: gn.as_ref(),
                loss: &losses[1],
            },
            &scratch,
            inv_tau,
            rows_per_block,
        )?;
    }
    // back through the normalisations
    let back =
        |enc: &mut wgpu::CommandEncoder, g: GpuMatrix, norm: &Option<(GpuMatrix, GpuMatrix)>| {
            match norm {
                Some((y, norms)) => {
                    let dx = GpuMatrix::zeros(ctx, g.rows(), g.cols())?;
                    record_normalize_backward(ctx, enc, y, norms, &g, &dx)?;
                    Ok(dx)
                }
                None => Ok(g),
            }
        };
    let grad_v1 = back(&mut enc, gu, &nu)?;
    let grad_v2 = back(&mut enc, gw, &nw)?;
    let grad_negatives = match gn {
        Some(g) => Some(back(&mut enc, g, &nn)?),
        None => None,
    };
    ctx.submit(OP, enc)?;
    let directions = if cfg.direction == Direction::Symmetric {
        2
    } else {
        1
    };
    let norms = [("v1", nu), ("v2", nw), ("negatives", nn)]
        .into_iter()
        .filter_map(|(what, x)| x.map(|(_, n)| (what, n)))
        .collect();
    Ok(DeferredInfoNce {
        grad_v1,
        grad_v2,
        grad_negatives,
        pending: PendingInfoNce {
            losses: losses.into_iter().take(directions).collect(),
            norms,
        },
    })
}

/// Host-in / host-out [`info_nce_on_device`]: the same signature and output as
/// [`crate::contrastive::info_nce`] in f32.
///
/// # Errors
/// As [`crate::contrastive::info_nce`], plus [`Error::Gpu`].
pub fn info_nce(
    ctx: &GpuContext,
    v1: ArrayView2<'_, f32>,
    v2: ArrayView2<'_, f32>,
    negatives: Option<ArrayView2<'_, f32>>,
    weights: Option<ArrayView1<'_, f32>>,
    cfg: &InfoNceConfig<f32>,
) -> Result<InfoNceOutput<f32>> {
    const OP: &str = "gpu::info_nce";
    cfg.validate()?;
    validate_inputs(OP, v1, v2, negatives, weights)?;
    let (g1, g2) = (GpuMatrix::upload(ctx, v1)?, GpuMatrix::upload(ctx, v2)?);
    let gn = negatives.map(|n| GpuMatrix::upload(ctx, n)).transpose()?;
    let out = info_nce_on_device(ctx, &g1, &g2, gn.as_ref(), weights, cfg)?;
    Ok(InfoNceOutput {
        loss: out.loss,
        grad_v1: out.grad_v1.download(ctx)?,
        grad_v2: out.grad_v2.download(ctx)?,
        grad_negatives: out.grad_negatives.map(|g| g.download(ctx)).transpose()?,
    })
}
