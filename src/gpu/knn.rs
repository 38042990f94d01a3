//! The exact cosine kNN graph on the GPU: rows normalised (`normalize_rows.wgsl`), similarity row blocks
//! by GEMM, the top k of each row selected on the device (`topk_rows.wgsl`), and the graph assembled there
//! too: the reverse edges each row gains by symmetrisation counted (`knn_degrees.wgsl`), the row offsets
//! scanned (`knn_indptr.wgsl`), the columns placed (`knn_fill.wgsl`) and every row sorted
//! (`sort_rows.wgsl`). The host reads back the finished CSR arrays. Where those arrays would not fit one
//! storage binding, the lists are read back and assembled on the host as [`crate::graph::knn_graph`] does.

use super::context::Kernel;
use super::gemm::{record_gemm, Operand};
use super::norm::record_normalize;
use super::pool::Buf;
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};
use crate::graph::{knn_lists_to_graph, validate_knn, CsrGraph, KnnConfig};
use ndarray::ArrayView2;

/// The largest `k` the selection kernel keeps per invocation (its `KMAX`).
pub const KNN_MAX_K: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    row_base: u32,
    _pad: [u32; 3],
}

/// [`crate::graph::knn_graph`] with the similarities and the selections on the GPU: the same graph (up to
/// the order of near-ties that f32 rounding of the similarities can swap).
///
/// Similarity blocks hold as many rows as one storage binding (at most 256 MiB) allows; `cfg.block_rows` is
/// a CPU setting and is ignored here.
///
/// # Errors
/// As [`crate::graph::knn_graph`]; [`Error::Param`] for `k` above [`KNN_MAX_K`]; [`Error::Gpu`].
pub fn knn_graph(
    ctx: &GpuContext,
    features: ArrayView2<'_, f32>,
    cfg: &KnnConfig,
) -> Result<CsrGraph<f32>> {
    const OP: &str = "gpu::knn_graph";
    if cfg.method != crate::graph::KnnMethod::Exact {
        let why = "the GPU build is exact: use graph::knn_graph for HNSW";
        return Err(Error::param(OP, "method", format!("{:?}", cfg.method), why));
    }
    validate_knn(OP, features, cfg)?;
    if cfg.k > KNN_MAX_K {
        return Err(Error::param(
            OP,
            "k",
            cfg.k,
            format!("the GPU selection keeps at most {KNN_MAX_K} neighbours per row"),
        ));
    }
    let (n, k) = (features.nrows(), cfg.k);
    let x = GpuMatrix::upload(ctx, features)?;
    let xn = GpuMatrix::zeros(ctx, n, x.cols())?;
    let norms = GpuMatrix::zeros(ctx, n, 1)?;
    let max_bytes = ctx.limits().max_storage_buffer_binding_size.min(256 << 20) as usize;
    let block = (max_bytes / (4 * n)).min(n);
    if block == 0 {
        return Err(Error::Gpu {
            op: OP,
            reason: format!(
                "one similarity row of {n} nodes exceeds max_storage_buffer_binding_size ({max_bytes})"
            ),
        });
    }
    let sims = GpuMatrix::zeros(ctx, block, n)?;
    let out_bytes = (n * k * 4) as u64;
    ctx.check_binding(OP, "neighbour lists", out_bytes)?;
    let out = ctx.storage_zeroed("neighbours", out_bytes);
    let kernel = Kernel::new("topk_rows.wgsl", "topk_rows");
    let mut enc = ctx.encoder();
    record_normalize(ctx, &mut enc, &x, &xn, &norms)?;
    ctx.submit(OP, enc)?;
    for r0 in (0..n).step_by(block) {
        let rows = (n - r0).min(block);
        let mut enc = ctx.encoder();
        let lhs = Operand::rows_from(&xn, r0);
        let (rhs, s_op) = (Operand::of(&xn, true), Operand::of(&sims, false));
        record_gemm(
            ctx,
            &mut enc,
            (rows, n, xn.cols()),
            1.0,
            lhs,
            rhs,
            0.0,
            s_op,
        )?;
        for (start, groups) in ctx.row_dispatches(rows, 1) {
            let params = ctx.uniform_from(&Params {
                rows: rows as u32,
                n: n as u32,
                k: k as u32,
                row_offset: start as u32,
                row_base: r0 as u32,
                _pad: [0; 3],
            });
            ctx.dispatch(&mut enc, kernel, &[&params, &sims.buf, &out], groups)?;
        }
        ctx.submit(OP, enc)?;
    }
    match assemble(ctx, &out, n, cfg)? {
        Some(g) => Ok(g),
        None => {
            let lists: Vec<u32> = ctx.read_buffer(OP, &out, n * k)?;
            knn_lists_to_graph(n, &lists, cfg)
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct EdgeParams {
    n: u32,
    k: u32,
    offset: u32,
    symmetric: u32,
    self_loop: u32,
    _pad: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct ScanParams {
    n: u32,
    base: u32,
    _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct SortParams {
    rows: u32,
    row_offset: u32,
    _pad: [u32; 2],
}

/// The graph of the top-k `lists` (`n x k` on the device) symmetrised, given self loops and sorted on the
/// device as `cfg` says, its CSR arrays read back; `None` when the column array (at most `n (2k + 1)`
/// entries) would not fit one storage binding or u32 offsets.
fn assemble(
    ctx: &GpuContext,
    lists: &Buf,
    n: usize,
    cfg: &KnnConfig,
) -> Result<Option<CsrGraph<f32>>> {
    const OP: &str = "gpu::knn_graph";
    let k = cfg.k;
    let (sym, self_loop) = (usize::from(cfg.symmetric), usize::from(cfg.self_loops));
    let cap = n * (k * (1 + sym) + self_loop);
    let max = ctx.limits().max_storage_buffer_binding_size as usize;
    if cap * 4 > max || cap >= u32::MAX as usize {
        return Ok(None);
    }
    let extra = ctx.storage_zeroed("knn extra edges", (n * 4) as u64);
    let cursor = ctx.storage_zeroed("knn cursors", (n * 4) as u64);
    let indptr = ctx.storage_zeroed("knn indptr", ((n + 1) * 4) as u64);
    let indices = ctx.storage_zeroed("knn indices", (cap * 4) as u64);
    let params = |offset: usize| EdgeParams {
        n: n as u32,
        k: k as u32,
        offset: offset as u32,
        symmetric: sym as u32,
        self_loop: self_loop as u32,
        _pad: [0; 3],
    };
    let mut enc = ctx.encoder();
    if cfg.symmetric {
        let degrees = Kernel::new("knn_degrees.wgsl", "knn_degrees");
        let bufs = [&**lists, &extra];
        ctx.dispatch_rows(&mut enc, degrees, (n * k, 256), params, &bufs)?;
    }
    let scan = ctx.uniform_from(&ScanParams {
        n: n as u32,
        base: (k + self_loop) as u32,
        _pad: [0; 2],
    });
    let kernel = Kernel::new("knn_indptr.wgsl", "knn_indptr");
    ctx.dispatch(&mut enc, kernel, &[&scan, &extra, &indptr], 1)?;
    let fill = Kernel::new("knn_fill.wgsl", "knn_fill");
    let bufs = [&**lists, &indptr, &cursor, &indices];
    ctx.dispatch_rows(&mut enc, fill, (n * k, 256), params, &bufs)?;
    let sort = Kernel::new("sort_rows.wgsl", "sort_rows");
    let sort_params = |start: usize| SortParams {
        rows: n as u32,
        row_offset: start as u32,
        _pad: [0; 2],
    };
    ctx.dispatch_rows(&mut enc, sort, (n, 1), sort_params, &[&indptr, &indices])?;
    ctx.submit(OP, enc)?;
    let offsets: Vec<u32> = ctx.read_buffer(OP, &indptr, n + 1)?;
    let nnz = offsets[n] as usize;
    let columns: Vec<u32> = ctx.read_buffer(OP, &indices, nnz)?;
    let offsets = offsets.into_iter().map(|o| o as usize).collect();
    CsrGraph::new(n, n, offsets, columns, None).map(Some)
}
