//! Graph attention ([`crate::attention::GatLayer`]) on the GPU, forward and backward: GATConv and GATv2
//! scoring, heads concatenated or averaged, bias, residual (projected or identity), self loops as the layer
//! adds them, feature and attention dropout in training mode (the masks drawn on the host exactly as the
//! CPU path draws them, so a seed gives the same masks on both).
//!
//! Forward: `g = X W` (GEMM), GATConv node scores (`gat_node_scores.wgsl`), the logits of every (edge, head)
//! (`gat_edge_logits.wgsl`), then per node the softmax over its incoming edges and the weighted sum
//! (`gat_aggregate.wgsl`); the residual by GEMM or a column-scaled add. Backward: a destination pass over
//! the CSR (`gat_backward_dst.wgsl`: attention and logit gradients) and a source pass over the uploaded
//! transpose (`gat_backward_src.wgsl`: the gradient of `g`), so no atomics; parameter gradients by column
//! sums and GEMMs.

use super::context::Kernel;
use super::elementwise::{record_add_scaled_cols, record_col_sums, record_hadamard, row_vector};
use super::gemm::{record_gemm, Operand};
use super::matrix::record_copy_rows;
use super::pool::Buf;
use super::{GpuContext, GpuMatrix};
use crate::attention::cpu::dropout_masks;
use crate::attention::{GatLayer, GatParams, Mode, Scoring};
use crate::error::{Error, Result};
use crate::graph::CsrGraph;
use ndarray::{Array1, Array2};

/// The most heads the kernels take (they keep per-head values in one workgroup of 64).
pub const GAT_MAX_HEADS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    heads: u32,
    c: u32,
    offset: u32,
    count: u32,
    flags: u32,
    _pad: [u32; 2],
    slope: f32,
    inv_heads: f32,
    _pad1: [f32; 2],
}

/// The graph a [`GatLayer`] attends over, on the device (with the self loops the layer adds): CSR, the
/// destination of every edge, and the transpose with the original edge ids. Upload it once per graph and
/// layer configuration; forward and backward passes reuse it.
#[derive(Debug)]
pub struct GpuAttentionGraph {
    indptr: Buf,
    indices: Buf,
    dst: Buf,
    t_indptr: Buf,
    t_indices: Buf,
    t_edge_ids: Buf,
    nnz: usize,
    n: usize,
}

impl GpuAttentionGraph {
    /// Nodes.
    pub fn n_nodes(&self) -> usize {
        self.n
    }
    /// Attended edges (self loops included).
    pub fn nnz(&self) -> usize {
        self.nnz
    }
}

fn u32s(op: &'static str, v: impl Iterator<Item = usize>) -> Result<Vec<u32>> {
    v.map(|x| {
        u32::try_from(x).map_err(|_| Error::Gpu {
            op,
            reason: format!("{x} exceeds the u32 offsets the shaders use"),
        })
    })
    .collect()
}

impl GpuAttentionGraph {
    /// Uploads `graph` as `layer` attends over it (self loops added when the layer adds them).
    ///
    /// # Errors
    /// As [`GatLayer::forward`] for the graph (non-square, a node without incoming edges and no self
    /// loops); [`Error::Gpu`] beyond the device's limits.
    pub fn upload(
        ctx: &GpuContext,
        layer: &GatLayer<f32>,
        graph: &CsrGraph<f32>,
    ) -> Result<GpuAttentionGraph> {
        const OP: &str = "GpuAttentionGraph::upload";
        let g = layer.attended(graph)?;
        let g: &CsrGraph<f32> = &g;
        let op = OP;
        let t = g.transposed();
        let ip = g.indptr();
        let dst = (0..g.n_rows()).flat_map(|i| std::iter::repeat(i).take(ip[i + 1] - ip[i]));
        ctx.check_binding(op, "graph edges", (g.nnz() * 4) as u64)?;
        Ok(GpuAttentionGraph {
            n: g.n_rows(),
            indptr: ctx.storage_from("indptr", &u32s(op, ip.iter().copied())?),
            indices: ctx.storage_from("indices", g.indices()),
            dst: ctx.storage_from("edge_dst", &u32s(op, dst)?),
            t_indptr: ctx.storage_from("t_indptr", &u32s(op, t.graph.indptr().iter().copied())?),
            t_indices: ctx.storage_from("t_indices", t.graph.indices()),
            t_edge_ids: ctx.storage_from("t_edge_ids", &u32s(op, t.edge_ids.iter().copied())?),
            nnz: g.nnz(),
        })
    }
}

/// A GAT layer's parameters ([`GatParams`]) on the device, so that training can keep them there: vectors
/// as `1 x len` matrices. [`GpuGatParams::upload`] checks them against the layer once.
#[derive(Debug)]
pub struct GpuGatParams {
    w: GpuMatrix,
    a_src: GpuMatrix,
    a_dst: Option<GpuMatrix>,
    bias: Option<GpuMatrix>,
    w_res: Option<GpuMatrix>,
    /// The configuration's shape they were checked against: `(in_dim, heads, head_dim, out_dim)`.
    shape: (usize, usize, usize, usize),
}

fn layer_shape(layer: &GatLayer<f32>) -> (usize, usize, usize, usize) {
    let cfg = layer.config();
    (cfg.in_dim, cfg.heads, cfg.head_dim, cfg.out_dim())
}

impl GpuGatParams {
    /// Copies `p` to the device after checking it against `layer`.
    ///
    /// # Errors
    /// As [`GatLayer::forward`] for the parameters' shapes and values; [`Error::Gpu`].
    pub fn upload(ctx: &GpuContext, layer: &GatLayer<f32>, p: &GatParams<f32>) -> Result<Self> {
        p.check(layer.config())?;
        let vector = |b: &Array1<f32>| row_vector(ctx, b);
        Ok(GpuGatParams {
            w: GpuMatrix::upload(ctx, p.w.view())?,
            a_src: GpuMatrix::upload(ctx, p.a_src.view())?,
            a_dst: p
                .a_dst
                .as_ref()
                .map(|a| GpuMatrix::upload(ctx, a.view()))
                .transpose()?,
            bias: p.bias.as_ref().map(vector).transpose()?,
            w_res: p
                .w_res
                .as_ref()
                .map(|r| GpuMatrix::upload(ctx, r.view()))
                .transpose()?,
            shape: layer_shape(layer),
        })
    }

    /// The parameters back on the host.
    ///
    /// # Errors
    /// [`Error::Gpu`] for a failed read.
    pub fn download(&self, ctx: &GpuContext) -> Result<GatParams<f32>> {
        let get = |m: &GpuMatrix| m.download(ctx);
        Ok(GatParams {
            w: get(&self.w)?,
            a_src: get(&self.a_src)?,
            a_dst: self.a_dst.as_ref().map(get).transpose()?,
            bias: self
                .bias
                .as_ref()
                .map(|b| b.download_flat(ctx))
                .transpose()?,
            w_res: self.w_res.as_ref().map(get).transpose()?,
        })
    }

    /// Parameters already on the device (handles on the given buffers), checked against `layer`'s shapes.
    ///
    /// # Errors
    /// [`Error::Shape`] for a tensor of another shape than `layer` gives its parameter.
    pub(crate) fn from_parts(
        layer: &GatLayer<f32>,
        w: &GpuMatrix,
        a_src: &GpuMatrix,
        a_dst: Option<&GpuMatrix>,
        bias: Option<&GpuMatrix>,
        w_res: Option<&GpuMatrix>,
    ) -> Result<Self> {
        const OP: &str = "GpuGatParams::from_parts";
        let cfg = layer.config();
        let hc = cfg.heads * cfg.head_dim;
        let want = (
            (cfg.in_dim, hc),
            (cfg.heads, cfg.head_dim),
            ((cfg.scoring == crate::attention::Scoring::GatConv)
                .then_some((cfg.heads, cfg.head_dim))),
        );
        let got = (
            (w.rows(), w.cols()),
            (a_src.rows(), a_src.cols()),
            a_dst.map(|a| (a.rows(), a.cols())),
        );
        if want != got {
            return Err(Error::shape(OP, "w, a_src, a_dst", want, got));
        }
        Ok(GpuGatParams {
            w: w.alias(),
            a_src: a_src.alias(),
            a_dst: a_dst.map(GpuMatrix::alias),
            bias: bias.map(GpuMatrix::alias),
            w_res: w_res.map(GpuMatrix::alias),
            shape: layer_shape(layer),
        })
    }

    fn check(&self, op: &'static str, layer: &GatLayer<f32>) -> Result<()> {
        let want = layer_shape(layer);
        if self.shape != want {
            return Err(Error::shape(
                op,
                "GpuGatParams (in_dim, heads, head_dim, out_dim)",
                want,
                self.shape,
            ));
        }
        Ok(())
    }
}

/// What [`gat_backward`] needs from [`gat_forward`], on the device.
#[derive(Debug)]
pub struct GpuGatCache {
    g: GpuMatrix,
    /// GATConv node scores (rows of 2H: el then er); a placeholder for GATv2.
    scores: GpuMatrix,
    /// Attention coefficients, edge-major (`E x H`).
    alpha: GpuMatrix,
    /// `a_src` then `a_dst` (GATConv) or `a` (GATv2), flattened.
    a: GpuMatrix,
    /// The input after feature dropout, and the mask (training mode with `feat_drop > 0`).
    feat: Option<(GpuMatrix, GpuMatrix)>,
    /// The attention-dropout mask (`E x H`; a placeholder without one).
    attn_mask: GpuMatrix,
    has_attn_mask: bool,
    n: usize,
}

impl GpuGatCache {
    /// The attention coefficients `alpha[e * H + h]` over the attended graph's edges (read back).
    ///
    /// # Errors
    /// [`Error::Gpu`] for a failed read.
    pub fn attention(&self, ctx: &GpuContext) -> Result<Vec<f32>> {
        Ok(self.alpha.download(ctx)?.into_raw_vec_and_offset().0)
    }
}

/// Gradients of [`gat_backward`], on the device (`1 x len` matrices for the vectors).
#[derive(Debug)]
pub struct GpuGatGrads {
    /// `dL/dX` (N x in_dim).
    pub grad_x: GpuMatrix,
    /// `dL/dW` (in_dim x H C).
    pub grad_w: GpuMatrix,
    /// `dL/da_src` (H x C; GATv2: the shared `a`).
    pub grad_a_src: GpuMatrix,
    /// `dL/da_dst` (H x C; GATConv).
    pub grad_a_dst: Option<GpuMatrix>,
    /// `dL/dbias` (1 x out_dim).
    pub grad_bias: Option<GpuMatrix>,
    /// `dL/dW_res` (in_dim x out_dim).
    pub grad_w_res: Option<GpuMatrix>,
}

impl GpuGatGrads {
    /// `dL/dX`, and the parameter gradients in [`GpuGatParams::tensors_mut`]'s order.
    pub(crate) fn into_parts(self) -> (GpuMatrix, Vec<GpuMatrix>) {
        let mut v = vec![self.grad_w, self.grad_a_src];
        v.extend(self.grad_a_dst);
        v.extend(self.grad_bias);
        v.extend(self.grad_w_res);
        (self.grad_x, v)
    }
}

/// Flags beyond the layer's configuration: bias (bit 2) and an attention mask (bit 3).
fn extra_flags(bias: bool, mask: bool) -> u32 {
    (u32::from(bias) << 2) | (u32::from(mask) << 3)
}

fn params(layer: &GatLayer<f32>, n: usize, count: usize, offset: usize, extra: u32) -> Params {
    let cfg = layer.config();
    Params {
        n: n as u32,
        heads: cfg.heads as u32,
        c: cfg.head_dim as u32,
        offset: offset as u32,
        count: count as u32,
        flags: u32::from(cfg.scoring == Scoring::GatV2) | (u32::from(cfg.concat) << 1) | extra,
        _pad: [0; 2],
        slope: cfg.negative_slope,
        inv_heads: 1.0 / cfg.heads as f32,
        _pad1: [0.0; 2],
    }
}

/// Records `kernel` over `count` items, `per_group` per workgroup, with the GAT parameters first.
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &GpuContext,
    enc: &mut wgpu::CommandEncoder,
    layer: &GatLayer<f32>,
    kernel: Kernel,
    (n, count, per_group): (usize, usize, usize),
    extra: u32,
    buffers: &[&wgpu::Buffer],
) -> Result<()> {
    let p = |start: usize| params(layer, n, count, start, extra);
    ctx.dispatch_rows(enc, kernel, (count, per_group), p, buffers)
}

fn check_device(ctx: &GpuContext, op: &'static str, layer: &GatLayer<f32>) -> Result<()> {
    let cfg = layer.config();
    if cfg.heads > GAT_MAX_HEADS {
        return Err(Error::param(
            op,
            "heads",
            cfg.heads,
            format!("the GPU kernels take at most {GAT_MAX_HEADS} heads"),
        ));
    }
    let need = 12;
    let have = ctx.limits().max_storage_buffers_per_shader_stage;
    if have < need {
        return Err(Error::Gpu {
            op,
            reason: format!(
                "the backward kernels bind {need} storage buffers; the device's \
                 max_storage_buffers_per_shader_stage is {have}"
            ),
        });
    }
    Ok(())
}

/// [`GatLayer::forward`] on the device: the output (N x out_dim) and the cache; in `Mode::Train` the same
/// dropout masks as the CPU path for the seed.
///
/// # Errors
/// As [`GatLayer::forward`] for the parameters and `x`'s shape; [`Error::Param`] for more than
/// [`GAT_MAX_HEADS`] heads; [`Error::Gpu`].
pub fn gat_forward(
    ctx: &GpuContext,
    layer: &GatLayer<f32>,
    p: &GatParams<f32>,
    graph: &GpuAttentionGraph,
    x: &GpuMatrix,
    mode: Mode,
) -> Result<(GpuMatrix, GpuGatCache)> {
    gat_forward_with(
        ctx,
        layer,
        &GpuGatParams::upload(ctx, layer, p)?,
        graph,
        x,
        mode,
    )
}

/// [`gat_forward`] with the parameters already on the device.
///
/// # Errors
/// As [`gat_forward`]; [`Error::Shape`] for parameters uploaded for a layer of another shape.
pub fn gat_forward_with(
    ctx: &GpuContext,
    layer: &GatLayer<f32>,
    p: &GpuGatParams,
    graph: &GpuAttentionGraph,
    x: &GpuMatrix,
    mode: Mode,
) -> Result<(GpuMatrix, GpuGatCache)> {
    const OP: &str = "gpu::gat_forward";
    let cfg = layer.config();
    p.check(OP, layer)?;
    check_device(ctx, OP, layer)?;
    if (x.rows(), x.cols()) != (graph.n, cfg.in_dim) {
        return Err(Error::shape(
            OP,
            "x (nodes x in_dim)",
            (graph.n, cfg.in_dim),
            (x.rows(), x.cols()),
        ));
    }
    let (n, hn, hc) = (graph.n, cfg.heads, cfg.heads * cfg.head_dim);
    let edges = graph;
    let w = &p.w;
    // a_src then a_dst (GATConv), or a (GATv2), in one buffer (filled first thing in the encoder below)
    let a_dst = p.a_dst.as_ref().filter(|_| cfg.scoring == Scoring::GatConv);
    let a_heads = if a_dst.is_some() { 2 * hn } else { hn };
    let a = GpuMatrix::zeros(ctx, a_heads, cfg.head_dim)?;
    let placeholder = GpuMatrix::zeros(ctx, 1, 1)?;
    let bias = p.bias.as_ref().unwrap_or(&placeholder);
    let (feat_mask, attn_mask) = dropout_masks(cfg, (n, cfg.in_dim), graph.nnz, mode);
    let has_attn_mask = attn_mask.is_some();
    let attn_mask = match attn_mask {
        Some(m) => GpuMatrix::upload(
            ctx,
            Array2::from_shape_vec((graph.nnz, hn), m)
                .expect("E x H")
                .view(),
        )?,
        None => GpuMatrix::zeros(ctx, 1, 1)?,
    };
    let g = GpuMatrix::zeros(ctx, n, hc)?;
    let v2 = cfg.scoring == Scoring::GatV2;
    let scores = GpuMatrix::zeros(ctx, if v2 { 1 } else { n }, if v2 { 1 } else { 2 * hn })?;
    let logits = GpuMatrix::zeros(ctx, edges.nnz, hn)?;
    let alpha = GpuMatrix::zeros(ctx, edges.nnz, hn)?;
    let out = GpuMatrix::zeros(ctx, n, cfg.out_dim())?;
    let mut enc = ctx.encoder();
    record_copy_rows(&mut enc, (&p.a_src, 0), (&a, 0), hn);
    if let Some(ad) = a_dst {
        record_copy_rows(&mut enc, (ad, 0), (&a, hn), hn);
    }
    // feature dropout: the layer sees x * mask
    let feat = match feat_mask {
        Some(m) => {
            let m = GpuMatrix::upload(ctx, m.view())?;
            let xd = GpuMatrix::zeros(ctx, n, cfg.in_dim)?;
            record_hadamard(ctx, &mut enc, x, &m, &xd)?;
            Some((xd, m))
        }
        None => None,
    };
    let x = feat.as_ref().map_or(x, |(xd, _)| xd);
    let (xo, wo, go) = (
        Operand::of(x, false),
        Operand::of(w, false),
        Operand::of(&g, false),
    );
    record_gemm(ctx, &mut enc, (n, hc, cfg.in_dim), 1.0, xo, wo, 0.0, go)?;
    let has_bias = p.bias.is_some();
    let flags = extra_flags(has_bias, has_attn_mask);
    if !v2 {
        let k = Kernel::new("gat_node_scores.wgsl", "gat_node_scores");
        let bufs = [&g.buf, &a.buf, &scores.buf];
        record(ctx, &mut enc, layer, k, (n, n * hn, 256), flags, &bufs)?;
    }
    let k = Kernel::new("gat_edge_logits.wgsl", "gat_edge_logits");
    let bufs = [
        &edges.indices,
        &edges.dst,
        &g.buf,
        &a.buf,
        &scores.buf,
        &logits.buf,
    ];
    record(
        ctx,
        &mut enc,
        layer,
        k,
        (n, edges.nnz * hn, 256),
        flags,
        &bufs,
    )?;
    let k = Kernel::new("gat_aggregate.wgsl", "gat_aggregate");
    let bufs = [
        &edges.indptr,
        &edges.indices,
        &g.buf,
        &logits.buf,
        &bias.buf,
        &attn_mask.buf,
        &alpha.buf,
        &out.buf,
    ];
    record(ctx, &mut enc, layer, k, (n, n, 1), flags, &bufs)?;
    if cfg.residual {
        match &p.w_res {
            Some(r) => {
                let (ro, oo) = (Operand::of(r, false), Operand::of(&out, false));
                record_gemm(
                    ctx,
                    &mut enc,
                    (n, cfg.out_dim(), cfg.in_dim),
                    1.0,
                    xo,
                    ro,
                    1.0,
                    oo,
                )?;
                ctx.submit(OP, enc)?;
            }
            None => {
                let ones = row_vector(ctx, &Array1::ones(cfg.in_dim))?;
                record_add_scaled_cols(ctx, &mut enc, x, &ones, &out)?;
                ctx.submit(OP, enc)?;
            }
        }
    } else {
        ctx.submit(OP, enc)?;
    }
    Ok((
        out,
        GpuGatCache {
            g,
            scores,
            alpha,
            a,
            feat,
            attn_mask,
            has_attn_mask,
            n,
        },
    ))
}

/// [`GatLayer::backward`] on the device for `grad_out = dL/d out`; `graph` and `x` are the forward pass's.
///
/// # Errors
/// [`Error::Shape`] when `x` or `grad_out` do not match the forward pass, [`Error::Graph`] for another
/// graph; [`Error::Gpu`].
pub fn gat_backward(
    ctx: &GpuContext,
    layer: &GatLayer<f32>,
    p: &GatParams<f32>,
    graph: &GpuAttentionGraph,
    cache: &GpuGatCache,
    x: &GpuMatrix,
    grad_out: &GpuMatrix,
) -> Result<GpuGatGrads> {
    let p = GpuGatParams::upload(ctx, layer, p)?;
    gat_backward_with(ctx, layer, &p, graph, cache, x, grad_out)
}

/// [`gat_backward`] with the parameters already on the device.
///
/// # Errors
/// As [`gat_backward`]; [`Error::Shape`] for parameters uploaded for a layer of another shape.
pub fn gat_backward_with(
    ctx: &GpuContext,
    layer: &GatLayer<f32>,
    p: &GpuGatParams,
    graph: &GpuAttentionGraph,
    cache: &GpuGatCache,
    x: &GpuMatrix,
    grad_out: &GpuMatrix,
) -> Result<GpuGatGrads> {
    const OP: &str = "gpu::gat_backward";
    let cfg = layer.config();
    p.check(OP, layer)?;
    let n = cache.n;
    if (graph.n, graph.nnz) != (n, cache.alpha.rows()) {
        return Err(Error::Graph {
            op: OP,
            reason: "not the graph of the forward pass (node or edge count differs)".into(),
        });
    }
    let (hn, c, hc, out_w) = (
        cfg.heads,
        cfg.head_dim,
        cfg.heads * cfg.head_dim,
        cfg.out_dim(),
    );
    for (what, m, want) in [
        ("x", x, (n, cfg.in_dim)),
        ("grad_out", grad_out, (n, out_w)),
    ] {
        if (m.rows(), m.cols()) != want {
            return Err(Error::shape(OP, what, want, (m.rows(), m.cols())));
        }
    }
    let v2 = cfg.scoring == Scoring::GatV2;
    let nnz = graph.nnz;
    let dlogit = GpuMatrix::zeros(ctx, nnz, hn)?;
    let node_mid = GpuMatrix::zeros(ctx, n, if v2 { hc } else { hn })?;
    let a_node = GpuMatrix::zeros(ctx, n, if v2 { hc } else { 2 * hc })?;
    let dg = GpuMatrix::zeros(ctx, n, hc)?;
    let grad_x = GpuMatrix::zeros(ctx, n, cfg.in_dim)?;
    let grad_w = GpuMatrix::zeros(ctx, cfg.in_dim, hc)?;
    let a_cols = GpuMatrix::zeros(ctx, 1, a_node.cols())?;
    let e = graph;
    let flags = extra_flags(false, cache.has_attn_mask);
    // what the layer saw: x after feature dropout
    let x_in = cache.feat.as_ref().map_or(x, |(xd, _)| xd);
    let mut enc = ctx.encoder();
    let k = Kernel::new("gat_backward_dst.wgsl", "gat_backward_dst");
    let bufs = [
        &e.indptr,
        &e.indices,
        &cache.g.buf,
        &grad_out.buf,
        &cache.alpha.buf,
        &cache.scores.buf,
        &cache.a.buf,
        &cache.attn_mask.buf,
        &dlogit.buf,
        &node_mid.buf,
        &a_node.buf,
    ];
    record(ctx, &mut enc, layer, k, (n, n, 1), flags, &bufs)?;
    // the source pass writes GATConv's a-gradient rows into `a_node`; GATv2's came from the destination
    // pass, so it gets a scratch buffer
    let scratch = GpuMatrix::zeros(ctx, 1, 1)?;
    let a_out = if v2 { &scratch } else { &a_node };
    let k = Kernel::new("gat_backward_src.wgsl", "gat_backward_src");
    let bufs = [
        &e.t_indptr,
        &e.t_indices,
        &e.t_edge_ids,
        &cache.g.buf,
        &grad_out.buf,
        &cache.alpha.buf,
        &dlogit.buf,
        &cache.a.buf,
        &node_mid.buf,
        &cache.attn_mask.buf,
        &dg.buf,
        &a_out.buf,
    ];
    record(ctx, &mut enc, layer, k, (n, n, 1), flags, &bufs)?;
    record_col_sums(ctx, &mut enc, &a_node, None, &a_cols)?;
    // the projection: dW = X^T dg, dX = dg W^T (+ the residual's share below)
    let w = &p.w;
    let (xt, dgo) = (Operand::of(x_in, true), Operand::of(&dg, false));
    record_gemm(
        ctx,
        &mut enc,
        (cfg.in_dim, hc, n),
        1.0,
        xt,
        dgo,
        0.0,
        Operand::of(&grad_w, false),
    )?;
    let gx = Operand::of(&grad_x, false);
    record_gemm(
        ctx,
        &mut enc,
        (n, cfg.in_dim, hc),
        1.0,
        dgo,
        Operand::of(w, true),
        0.0,
        gx,
    )?;
    let grad_bias = match p.bias {
        Some(_) => {
            let gb = GpuMatrix::zeros(ctx, 1, out_w)?;
            record_col_sums(ctx, &mut enc, grad_out, None, &gb)?;
            Some(gb)
        }
        None => None,
    };
    let mut grad_w_res = None;
    if cfg.residual {
        match &p.w_res {
            Some(r) => {
                let gwr = GpuMatrix::zeros(ctx, cfg.in_dim, out_w)?;
                let go = Operand::of(grad_out, false);
                let out = Operand::of(&gwr, false);
                record_gemm(ctx, &mut enc, (cfg.in_dim, out_w, n), 1.0, xt, go, 0.0, out)?;
                record_gemm(
                    ctx,
                    &mut enc,
                    (n, cfg.in_dim, out_w),
                    1.0,
                    go,
                    Operand::of(r, true),
                    1.0,
                    gx,
                )?;
                grad_w_res = Some(gwr);
            }
            None => {
                let ones = row_vector(ctx, &Array1::ones(out_w))?;
                record_add_scaled_cols(ctx, &mut enc, grad_out, &ones, &grad_x)?;
            }
        }
    }
    // back through feature dropout
    let grad_x = match &cache.feat {
        Some((_, m)) => {
            let masked = GpuMatrix::zeros(ctx, n, cfg.in_dim)?;
            record_hadamard(ctx, &mut enc, &grad_x, m, &masked)?;
            masked
        }
        None => grad_x,
    };
    // split the a-gradient columns (H C for a_src / a, then H C for a_dst) on the device
    let a_rows = a_cols.reshaped(a_node.cols() / c, c);
    let grad_a_src = GpuMatrix::zeros(ctx, hn, c)?;
    record_copy_rows(&mut enc, (&a_rows, 0), (&grad_a_src, 0), hn);
    let grad_a_dst = if v2 {
        None
    } else {
        let g = GpuMatrix::zeros(ctx, hn, c)?;
        record_copy_rows(&mut enc, (&a_rows, hn), (&g, 0), hn);
        Some(g)
    };
    ctx.submit(OP, enc)?;
    Ok(GpuGatGrads {
        grad_x,
        grad_w,
        grad_a_src,
        grad_a_dst,
        grad_bias,
        grad_w_res,
    })
}
