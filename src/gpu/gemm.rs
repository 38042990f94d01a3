//! GEMM on the GPU (`shaders/gemm.wgsl`): `C = alpha op(A) op(B) + beta C`, tiled, with split-K for
//! small outputs over long inner dimensions; and the two InfoNCE kernels built on the same tile
//! (`shaders/lib/gemm_tile.wgsl`): the similarity product with its row statistics (`xent_logits.wgsl`) and
//! the backward product that forms the cross-entropy's gradient as it loads the similarities
//! (`xent_grad.wgsl`).

use super::context::Kernel;
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
    aux: [u32; 2],
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

/// Which kernel on the GEMM tile a product runs.
#[derive(Clone, Copy)]
pub(crate) enum GemmKind<'a> {
    /// `gemm.wgsl`: `A` as stored.
    Plain,
    /// `xent_logits.wgsl` (InfoNCE's similarities; `beta` 0, never split in K): for each row and 64-column
    /// tile of `C`, the tile's maximum and sum of `exp(c - maximum)` also go to `stats` (two floats per
    /// slot, `slots` per row, this product's tiles from slot `first_slot`).
    XentLogits {
        stats: &'a wgpu::Buffer,
        first_slot: usize,
        slots: usize,
    },
    /// `xent_grad.wgsl` (InfoNCE's backward products): `A` is a similarity block turned into the softmax
    /// cross-entropy's gradient `coef_r (exp(s_rj - lse_r) - [j == r])` as it is loaded: the block at
    /// element 0 of its buffer, its stored row `r` the anchor `pos_offset + r`, `coef` and `lse` indexed by
    /// anchor.
    XentGrad {
        coef: &'a wgpu::Buffer,
        lse: &'a wgpu::Buffer,
        pos_offset: usize,
    },
}

/// Records `C[m x n] = alpha op(A) op(B) + beta C` for operands addressed in place, chunked in both output
/// dimensions under the dispatch limit. Shapes are the caller's responsibility.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_gemm(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    mnk: (usize, usize, usize),
    alpha: f32,
    a: Operand<'_>,
    b: Operand<'_>,
    beta: f32,
    c: Operand<'_>,
) -> Result<()> {
    record_gemm_as(ctx, enc, GemmKind::Plain, mnk, alpha, a, b, beta, c)
}

/// [`record_gemm`] with the kernel `how` names.
#[allow(clippy::too_many_arguments)]
pub(crate) fn record_gemm_as(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    how: GemmKind<'_>,
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
    let (kernel, extra) = match how {
        GemmKind::Plain => (Kernel::new("gemm.wgsl", "gemm"), vec![]),
        GemmKind::XentLogits { stats, .. } => {
            (Kernel::new("xent_logits.wgsl", "xent_logits"), vec![stats])
        }
        GemmKind::XentGrad { coef, lse, .. } => {
            (Kernel::new("xent_grad.wgsl", "xent_grad"), vec![coef, lse])
        }
    };
    // the kernel's own two parameters, for the output block at (i0, j0)
    let aux = |i0: usize, j0: usize| match how {
        GemmKind::Plain => [0, 0],
        // the slot of (row, tile) is row * slots + aux0 + tile: this block's rows and tiles start at row
        // i0 and tile j0 / TILE
        GemmKind::XentLogits {
            first_slot, slots, ..
        } => [(i0 * slots + first_slot + j0 / TILE) as u32, slots as u32],
        GemmKind::XentGrad { pos_offset, .. } => [pos_offset as u32, 0],
    };
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
            let slices = match how {
                GemmKind::XentLogits { .. } => 1,
                _ => k_slices(tiles, k).min(max_slices).max(1),
            };
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
                    aux: aux(i0, j0),
                })
            };
            if slices == 1 {
                let p = params(k, 0, c.ld, c_off, beta);
                let all = [&[&p, a.buf, b.buf, c.buf][..], &extra].concat();
                ctx.dispatch_2d(enc, kernel, &all, groups)?;
                continue;
            }
            // split K: partial products (alpha applied) into slices of a scratch buffer, then summed into C
            let chunk = k.div_ceil(slices);
            let slices = k.div_ceil(chunk);
            let part = ctx.storage_zeroed("gemm slices", (slices * mm * nn * 4) as u64);
            let p = params(chunk, mm * nn, nn, 0, 0.0);
            let grid = (groups.0, groups.1, slices as u32);
            let all = [&[&p, a.buf, b.buf, &part][..], &extra].concat();
            ctx.dispatch_3d(enc, kernel, &all, grid)?;
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

/// Records `C = sum_z part[z] + beta C` for `slices` row-major `m x n` slices stored one after another in
/// `part` (`gemm_sum.wgsl`; the second half of split reductions).
pub(crate) fn record_slice_sum(
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
