//! Device-resident data: dense f32 matrices and CSR graphs (with their transposes).

use super::pool::Buf;
use super::GpuContext;
use crate::error::{check_finite_array, Error, Result};
use crate::graph::CsrGraph;
use ndarray::{Array2, ArrayView2};

/// A row-major f32 matrix in GPU memory. Chains of GPU ops pass these along without host round trips;
/// [`GpuMatrix::upload`] and [`GpuMatrix::download`] are the explicit transfers.
#[derive(Debug)]
pub struct GpuMatrix {
    pub(crate) buf: wgpu::Buffer,
    /// The pool's handle on `buf` (the same buffer; `buf` is a plain handle so that every kernel binds
    /// `&m.buf` as a `wgpu::Buffer`): the buffer returns to the context's pool when the matrix and its
    /// aliases have all dropped.
    lease: Buf,
    rows: usize,
    cols: usize,
}

impl GpuMatrix {
    /// Copies `x` to the device.
    ///
    /// # Errors
    /// [`Error::NonFinite`] for NaN/Inf (checked here, on the host, once), [`Error::Gpu`] when the matrix
    /// exceeds one storage binding of the device or 2^32 elements.
    pub fn upload(ctx: &GpuContext, x: ArrayView2<'_, f32>) -> Result<GpuMatrix> {
        const OP: &str = "GpuMatrix::upload";
        check_finite_array(OP, "matrix", &x)?;
        check_size(ctx, OP, x.nrows(), x.ncols())?;
        let x = x.as_standard_layout();
        let data = x.as_slice().expect("standard layout");
        Ok(GpuMatrix::leased(
            ctx.storage_from("matrix", data),
            x.nrows(),
            x.ncols(),
        ))
    }

    /// A `rows x cols` matrix of zeros on the device.
    ///
    /// # Errors
    /// As [`GpuMatrix::upload`] for the size.
    pub fn zeros(ctx: &GpuContext, rows: usize, cols: usize) -> Result<GpuMatrix> {
        check_size(ctx, "GpuMatrix::zeros", rows, cols)?;
        Ok(GpuMatrix::leased(
            ctx.storage_zeroed("matrix", (rows * cols * 4) as u64),
            rows,
            cols,
        ))
    }

    fn leased(lease: Buf, rows: usize, cols: usize) -> GpuMatrix {
        GpuMatrix {
            buf: (*lease).clone(),
            lease,
            rows,
            cols,
        }
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    pub(crate) fn bytes(&self) -> u64 {
        (self.rows * self.cols * 4) as u64
    }

    /// Copies the matrix back to the host (waits for the work queued before it).
    ///
    /// # Errors
    /// [`Error::Gpu`] when mapping the staging buffer fails (a lost device).
    pub fn download(&self, ctx: &GpuContext) -> Result<Array2<f32>> {
        const OP: &str = "GpuMatrix::download";
        let n = self.rows * self.cols;
        if n == 0 {
            return Ok(Array2::zeros((self.rows, self.cols)));
        }
        let values: Vec<f32> = ctx.read_buffer(OP, &self.buf, n)?;
        Ok(Array2::from_shape_vec((self.rows, self.cols), values).expect("rows x cols values"))
    }

    /// Copies the matrix back to the host as one vector, row-major (for `1 x d` and `n x 1` matrices).
    ///
    /// # Errors
    /// As [`GpuMatrix::download`].
    pub(crate) fn download_flat(&self, ctx: &GpuContext) -> Result<ndarray::Array1<f32>> {
        Ok(ndarray::Array1::from(
            self.download(ctx)?.into_raw_vec_and_offset().0,
        ))
    }

    /// Overwrites the matrix with `data` (row-major, `rows * cols` values; queued before later work).
    pub(crate) fn write(&self, ctx: &GpuContext, data: &[f32]) -> Result<()> {
        debug_assert_eq!(data.len(), self.rows * self.cols);
        // a queue write runs before the next submission: the commands recorded so far go first
        ctx.flush("GpuMatrix::write")?;
        if !data.is_empty() {
            ctx.queue
                .write_buffer(&self.buf, 0, bytemuck::cast_slice(data));
        }
        Ok(())
    }

    /// The same buffer read as a `rows x cols` matrix (row-major; the element count must not change).
    pub(crate) fn reshaped(self, rows: usize, cols: usize) -> GpuMatrix {
        debug_assert_eq!(rows * cols, self.rows * self.cols);
        GpuMatrix { rows, cols, ..self }
    }

    /// A second handle on the same buffer (no copy): for a caller that holds one tensor in two places.
    pub(crate) fn alias(&self) -> GpuMatrix {
        GpuMatrix {
            buf: self.buf.clone(),
            lease: self.lease.clone(),
            rows: self.rows,
            cols: self.cols,
        }
    }

    /// Rows `r0..r0 + rows` of `self` as a new matrix (a copy on the device).
    pub(crate) fn rows_range(&self, ctx: &GpuContext, r0: usize, rows: usize) -> Result<GpuMatrix> {
        let out = GpuMatrix::zeros(ctx, rows, self.cols)?;
        let mut enc = ctx.encoder();
        record_copy_rows(&mut enc, (self, r0), (&out, 0), rows);
        ctx.submit("GpuMatrix::rows_range", enc)?;
        Ok(out)
    }

    /// Overwrites rows `r0..r0 + src.rows()` of `self` with `src` (same width), on the device.
    pub(crate) fn set_rows(&self, ctx: &GpuContext, r0: usize, src: &GpuMatrix) -> Result<()> {
        let mut enc = ctx.encoder();
        record_copy_rows(&mut enc, (src, 0), (self, r0), src.rows);
        ctx.submit("GpuMatrix::set_rows", enc)
    }

    /// Copies `src` (same shape) into `self` on the device.
    ///
    /// # Errors
    /// [`Error::Shape`] for another shape.
    pub fn copy_from(&mut self, ctx: &GpuContext, src: &GpuMatrix) -> Result<()> {
        const OP: &str = "GpuMatrix::copy_from";
        same_shape(OP, "source", self, src)?;
        if self.bytes() > 0 {
            let mut enc = ctx.encoder();
            enc.copy_buffer_to_buffer(&src.buf, 0, &self.buf, 0, self.bytes());
            ctx.submit(OP, enc)?;
        }
        Ok(())
    }
}

/// Records the copy of `rows` rows from `src` (from its row `src.1`) into `dst` (from its row `dst.1`); the
/// two matrices have one width.
pub(crate) fn record_copy_rows(
    enc: &mut wgpu::CommandEncoder,
    (src, src_row): (&GpuMatrix, usize),
    (dst, dst_row): (&GpuMatrix, usize),
    rows: usize,
) {
    debug_assert!(src.cols == dst.cols && src_row + rows <= src.rows && dst_row + rows <= dst.rows);
    let row_bytes = (src.cols * 4) as u64;
    if rows > 0 && row_bytes > 0 {
        let (from, to) = (src_row as u64 * row_bytes, dst_row as u64 * row_bytes);
        enc.copy_buffer_to_buffer(&src.buf, from, &dst.buf, to, rows as u64 * row_bytes);
    }
}

pub(crate) fn same_shape(op: &'static str, what: &str, a: &GpuMatrix, b: &GpuMatrix) -> Result<()> {
    if (a.rows, a.cols) != (b.rows, b.cols) {
        return Err(Error::shape(op, what, (a.rows, a.cols), (b.rows, b.cols)));
    }
    Ok(())
}

fn check_size(ctx: &GpuContext, op: &'static str, rows: usize, cols: usize) -> Result<()> {
    let n = rows.checked_mul(cols).filter(|&n| n <= u32::MAX as usize);
    let n = n.ok_or_else(|| Error::Gpu {
        op,
        reason: format!("{rows} x {cols} exceeds the 2^32 elements the shaders index"),
    })?;
    ctx.check_binding(op, "matrix", (n * 4) as u64)
}

/// One direction of a graph on the device: CSR arrays as u32 / f32 storage buffers.
#[derive(Debug)]
pub(crate) struct GpuCsr {
    pub(crate) indptr: Buf,
    pub(crate) indices: Buf,
    /// `None`: every edge weighs 1 (the context's placeholder is bound, [`GpuContext::placeholders`]).
    pub(crate) weights: Option<Buf>,
    /// The rows longer than [`GpuCsr::long_row`] edges, in order (`spmm_vec4.wgsl`'s balance), if any.
    pub(crate) long_rows: Option<(Buf, usize)>,
    /// The row length above which a row is long: at least 64 edges and 8 times the mean.
    pub(crate) long_row: usize,
    pub(crate) n_rows: usize,
    pub(crate) n_cols: usize,
}

impl GpuCsr {
    fn upload(
        ctx: &GpuContext,
        op: &'static str,
        g: &CsrGraph<f32>,
        weights: Option<Vec<f32>>,
    ) -> Result<GpuCsr> {
        let indptr: Vec<u32> = g
            .indptr()
            .iter()
            .map(|&p| u32::try_from(p))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| Error::Gpu {
                op,
                reason: format!("{} edges exceed the u32 offsets the shaders use", g.nnz()),
            })?;
        ctx.check_binding(op, "graph indices", (g.nnz() * 4) as u64)?;
        let long_row = (8 * g.nnz().div_ceil(g.n_rows().max(1))).max(64);
        let long: Vec<u32> = (0..g.n_rows())
            .filter(|&r| g.row(r).len() > long_row)
            .map(|r| r as u32)
            .collect();
        Ok(GpuCsr {
            indptr: ctx.storage_from("indptr", &indptr),
            indices: ctx.storage_from("indices", g.indices()),
            weights: weights.map(|w| ctx.storage_from("weights", &w)),
            long_rows: (!long.is_empty())
                .then(|| (ctx.storage_from("long rows", &long), long.len())),
            long_row,
            n_rows: g.n_rows(),
            n_cols: g.n_cols(),
        })
    }
}

/// A CSR graph on the device, with its transpose (so backward passes gather instead of scattering: no
/// atomics).
#[derive(Debug)]
pub struct GpuGraph {
    pub(crate) fwd: GpuCsr,
    pub(crate) bwd: GpuCsr,
    nnz: usize,
}

impl GpuGraph {
    /// Copies `g` and its transpose to the device.
    ///
    /// # Errors
    /// [`Error::Gpu`] when the graph exceeds the device's storage-binding size or u32 offsets.
    pub fn upload(ctx: &GpuContext, g: &CsrGraph<f32>) -> Result<GpuGraph> {
        const OP: &str = "GpuGraph::upload";
        let t = g.transposed();
        let t_weights = g
            .weights()
            .map(|w| t.edge_ids.iter().map(|&e| w[e]).collect::<Vec<f32>>());
        Ok(GpuGraph {
            fwd: GpuCsr::upload(ctx, OP, g, g.weights().map(<[f32]>::to_vec))?,
            bwd: GpuCsr::upload(ctx, OP, &t.graph, t_weights)?,
            nnz: g.nnz(),
        })
    }

    /// Rows (destinations).
    pub fn n_rows(&self) -> usize {
        self.fwd.n_rows
    }

    /// Columns (sources).
    pub fn n_cols(&self) -> usize {
        self.fwd.n_cols
    }

    /// Stored edges.
    pub fn nnz(&self) -> usize {
        self.nnz
    }
}
