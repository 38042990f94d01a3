//! Cost matrices: dense or computed on the fly from point clouds, and RecGOAT's dimension-level cost.

use crate::backend::{map_chunks, Par};
use crate::error::{check_finite, Error, Result};
use crate::simd::{positive_finite, Real};
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2, Axis, CowArray, Ix2};

/// The ground cost of a transport problem, seen by the solvers only through row blocks and single columns.
///
/// `Dense` holds an `n x m` matrix. `SqEuclidean` holds two point clouds and computes
/// `C_ij = |x_i - y_j|^2` in row blocks of a few hundred kilobytes (a small GEMM per block), so the solver
/// never allocates `n x m` values: this is the "online" mode for large clouds. It trades memory for
/// `O(n m d)` flops per iteration instead of `O(n m)` loads. [`Geometry::sq_euclidean_materialized`] keeps
/// the point clouds (for point gradients) and the matrix, computed once, for clouds whose cost fits in memory.
#[derive(Debug, Clone)]
pub enum Geometry<'a, F: Real> {
    /// A dense cost matrix (row-major; a view in another layout is copied once).
    Dense(CowArray<'a, F, Ix2>),
    /// Squared Euclidean cost between the rows of `x` (n x d) and of `y` (m x d), never materialised.
    SqEuclidean(PointCloud<'a, F>),
}

/// Two point clouds with their squared row norms, for the online squared Euclidean cost.
#[derive(Debug, Clone)]
pub struct PointCloud<'a, F: Real> {
    /// Source points, n x d.
    pub x: ArrayView2<'a, F>,
    /// Target points, m x d.
    pub y: ArrayView2<'a, F>,
    xn: Array1<F>,
    yn: Array1<F>,
    /// The cost matrix, when materialised ([`Geometry::sq_euclidean_materialized`]).
    cost: Option<Array2<F>>,
}

/// How many bytes of cost a row block of the online geometry may hold (fits in L2 with room to spare).
const BLOCK_BYTES: usize = 1 << 19;

impl<'a, F: Real> Geometry<'a, F> {
    /// A dense cost matrix.
    ///
    /// # Errors
    /// [`Error::Empty`] for a matrix with no rows or columns, [`Error::NonFinite`] for NaN/Inf entries,
    /// [`Error::Negative`] for negative entries.
    ///
    /// # Complexity
    /// One `O(n m)` validation pass; no copy when `cost` is in standard (row-major) layout.
    pub fn dense(cost: ArrayView2<'a, F>) -> Result<Self> {
        const OP: &str = "Geometry::dense";
        if cost.is_empty() {
            return Err(Error::Empty {
                op: OP,
                what: format!("cost matrix of shape {:?}", cost.dim()),
            });
        }
        for (k, &v) in cost.iter().enumerate() {
            if !v.is_finite() {
                return Err(Error::NonFinite {
                    op: OP,
                    what: "cost".into(),
                    index: k,
                    value: v.to_string(),
                });
            }
            if v < F::zero() {
                return Err(Error::Negative {
                    op: OP,
                    what: "cost".into(),
                    index: k,
                    value: v.to_string(),
                });
            }
        }
        if cost.is_standard_layout() {
            Ok(Geometry::Dense(CowArray::from(cost)))
        } else {
            Ok(Geometry::Dense(CowArray::from(
                cost.as_standard_layout().into_owned(),
            )))
        }
    }

    /// The squared Euclidean cost `|x_i - y_j|^2` between two point clouds, computed on the fly.
    ///
    /// # Errors
    /// [`Error::Empty`] for clouds without points or with zero dimensions, [`Error::Shape`] when the
    /// dimensions differ, [`Error::NonFinite`] for NaN/Inf coordinates.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// use recgoat_core::transport::Geometry;
    /// let x = array![[0.0f64, 0.0], [1.0, 0.0]];
    /// let y = array![[0.0f64, 2.0]];
    /// let g = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
    /// assert_eq!(g.to_dense(), array![[4.0], [5.0]]);
    /// ```
    pub fn sq_euclidean(x: ArrayView2<'a, F>, y: ArrayView2<'a, F>) -> Result<Self> {
        const OP: &str = "Geometry::sq_euclidean";
        check_cloud(OP, "x", x)?;
        check_cloud(OP, "y", y)?;
        if x.ncols() != y.ncols() {
            return Err(Error::shape(
                OP,
                "point dimension of y vs x",
                x.ncols(),
                y.ncols(),
            ));
        }
        let xn = x.rows().into_iter().map(|r| r.dot(&r)).collect();
        let yn = y.rows().into_iter().map(|r| r.dot(&r)).collect();
        Ok(Geometry::SqEuclidean(PointCloud {
            x,
            y,
            xn,
            yn,
            cost: None,
        }))
    }

    /// [`Geometry::sq_euclidean`] with the `n x m` cost computed once (row-block GEMMs, the same values
    /// as the online mode) and kept: each solver iteration then reads the matrix instead of recomputing it
    /// (`O(n m)` loads instead of `O(n m d)` flops), and the point clouds stay available for
    /// [`super::point_cloud_gradients`].
    ///
    /// # Errors
    /// As [`Geometry::sq_euclidean`].
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// use recgoat_core::transport::Geometry;
    /// let x = array![[0.0f64, 0.0], [1.0, 0.0]];
    /// let y = array![[0.0f64, 2.0]];
    /// let online = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
    /// let kept = Geometry::sq_euclidean_materialized(x.view(), y.view()).unwrap();
    /// assert_eq!(kept.to_dense(), online.to_dense());
    /// ```
    pub fn sq_euclidean_materialized(x: ArrayView2<'a, F>, y: ArrayView2<'a, F>) -> Result<Self> {
        let mut geom = Self::sq_euclidean(x, y)?;
        let cost = geom.to_dense();
        if let Geometry::SqEuclidean(pc) = &mut geom {
            pc.cost = Some(cost);
        }
        Ok(geom)
    }

    /// Whether the cost is held as an `n x m` matrix (dense, or a materialised point cloud).
    pub fn is_materialized(&self) -> bool {
        match self {
            Geometry::Dense(_) => true,
            Geometry::SqEuclidean(p) => p.cost.is_some(),
        }
    }

    /// The held cost matrix (row-major), if any.
    fn matrix(&self) -> Option<&[F]> {
        match self {
            Geometry::Dense(c) => Some(
                c.as_slice()
                    .expect("dense geometry is stored in standard layout"),
            ),
            Geometry::SqEuclidean(p) => p
                .cost
                .as_ref()
                .map(|c| c.as_slice().expect("materialised cost is row-major")),
        }
    }

    /// Number of rows (source points).
    pub fn n(&self) -> usize {
        match self {
            Geometry::Dense(c) => c.nrows(),
            Geometry::SqEuclidean(p) => p.x.nrows(),
        }
    }

    /// Number of columns (target points).
    pub fn m(&self) -> usize {
        match self {
            Geometry::Dense(c) => c.ncols(),
            Geometry::SqEuclidean(p) => p.y.nrows(),
        }
    }

    /// Rows per block the solvers should ask for: the whole range for dense costs, a block of at most
    /// [`BLOCK_BYTES`] for online costs.
    pub(crate) fn block_rows(&self) -> usize {
        if self.is_materialized() {
            return usize::MAX;
        }
        (BLOCK_BYTES / (self.m() * std::mem::size_of::<F>())).clamp(1, 256)
    }

    /// Calls `visit(i, cost_row_i)` for every row `i` in `rows`, in order.
    ///
    /// `scratch` is reused between calls to hold computed blocks (online mode).
    pub(crate) fn for_rows(
        &self,
        rows: std::ops::Range<usize>,
        scratch: &mut Vec<F>,
        mut visit: impl FnMut(usize, &[F]),
    ) {
        if let Some(flat) = self.matrix() {
            let m = self.m();
            for i in rows {
                visit(i, &flat[i * m..(i + 1) * m]);
            }
            return;
        }
        match self {
            Geometry::Dense(_) => unreachable!("a dense geometry holds its matrix"),
            Geometry::SqEuclidean(p) => {
                let m = p.y.nrows();
                let br = self.block_rows();
                let mut start = rows.start;
                while start < rows.end {
                    let end = (start + br).min(rows.end);
                    scratch.resize((end - start) * m, F::zero());
                    let mut block =
                        ndarray::ArrayViewMut2::from_shape((end - start, m), &mut scratch[..])
                            .expect("scratch sized to the block");
                    ndarray::linalg::general_mat_mul(
                        F::c(-2.0),
                        &p.x.slice(s![start..end, ..]),
                        &p.y.t(),
                        F::zero(),
                        &mut block,
                    );
                    for (r, mut row) in block.rows_mut().into_iter().enumerate() {
                        let xi = p.xn[start + r];
                        for (v, &yj) in row.iter_mut().zip(p.yn.iter()) {
                            // rounding can make the expanded form slightly negative for coincident points
                            *v = (*v + xi + yj).max(F::zero());
                        }
                    }
                    for (r, row) in scratch.chunks_exact(m).enumerate() {
                        visit(start + r, row);
                    }
                    start = end;
                }
            }
        }
    }

    /// Writes column `j` of the cost into `out` (length n).
    pub(crate) fn column(&self, j: usize, out: &mut [F]) {
        if let Some(flat) = self.matrix() {
            let m = self.m();
            for (o, &v) in out.iter_mut().zip(flat[j..].iter().step_by(m)) {
                *o = v;
            }
            return;
        }
        match self {
            Geometry::Dense(_) => unreachable!("a dense geometry holds its matrix"),
            Geometry::SqEuclidean(p) => {
                let yj = p.y.row(j);
                for (i, o) in out.iter_mut().enumerate() {
                    *o = (p.xn[i] + p.yn[j] - F::c(2.0) * p.x.row(i).dot(&yj)).max(F::zero());
                }
            }
        }
    }

    /// The cost as a dense `n x m` matrix (allocates; for tests, plans and small problems).
    pub fn to_dense(&self) -> Array2<F> {
        match self {
            Geometry::Dense(c) => c.to_owned(),
            Geometry::SqEuclidean(PointCloud { cost: Some(c), .. }) => c.clone(),
            Geometry::SqEuclidean(_) => {
                let (n, m) = (self.n(), self.m());
                let mut out = Array2::zeros((n, m));
                let mut scratch = Vec::new();
                self.for_rows(0..n, &mut scratch, |i, row| {
                    out.row_mut(i).assign(&ArrayView1::from(row))
                });
                out
            }
        }
    }

    /// A summary statistic of the cost entries, used to set eps relative to the cost.
    ///
    /// `Mean` and `Max` are exact (`Mean` of a point-cloud cost in closed form, from the clouds' means and
    /// squared norms, in one pass over the points). `Median` is exact for dense costs; for point clouds with
    /// more than 2^20 pairs it is the median of the pairs of every k-th row (a deterministic subsample of
    /// about 2^20 entries), so no `n x m` buffer is allocated.
    pub fn statistic(&self, which: super::EpsScale, par: impl Into<Par>) -> F {
        let par: Par = par.into();
        use super::EpsScale;
        let (n, m) = (self.n(), self.m());
        // mean_ij |x_i - y_j|^2 = mean |x|^2 + mean |y|^2 - 2 mean(x) . mean(y): one pass over the points
        // instead of n x m distances (in f64, clamped like the entries themselves)
        if let (EpsScale::Mean, Geometry::SqEuclidean(pc)) = (which, self) {
            let f = |v: F| v.to_f64().unwrap_or(0.0);
            let mean = |v: &Array1<F>| v.iter().map(|&e| f(e)).sum::<f64>() / v.len() as f64;
            let dot: f64 = (0..pc.x.ncols())
                .map(|k| {
                    let sx: f64 = pc.x.column(k).iter().map(|&e| f(e)).sum();
                    let sy: f64 = pc.y.column(k).iter().map(|&e| f(e)).sum();
                    sx * sy
                })
                .sum();
            let v = mean(&pc.xn) + mean(&pc.yn) - 2.0 * dot / (n as f64 * m as f64);
            return F::c(v.max(0.0));
        }
        match which {
            EpsScale::Mean => {
                let sums = map_chunks(par, n, |_, r| {
                    let mut scratch = Vec::new();
                    let mut acc = 0.0f64;
                    self.for_rows(r, &mut scratch, |_, row| {
                        acc += row.iter().map(|v| v.to_f64().unwrap_or(0.0)).sum::<f64>()
                    });
                    acc
                });
                F::c(sums.iter().sum::<f64>() / (n as f64 * m as f64))
            }
            EpsScale::Max => map_chunks(par, n, |_, r| {
                let mut scratch = Vec::new();
                let mut mx = F::zero();
                self.for_rows(r, &mut scratch, |_, row| {
                    mx = row.iter().fold(mx, |a, &b| a.max(b))
                });
                mx
            })
            .into_iter()
            .fold(F::zero(), F::max),
            EpsScale::Median => {
                let step = ((n * m) >> 20).max(1).min(n);
                let mut vals: Vec<F> = Vec::with_capacity((n / step + 1) * m);
                let mut scratch = Vec::new();
                for i in (0..n).step_by(step) {
                    self.for_rows(i..i + 1, &mut scratch, |_, row| vals.extend_from_slice(row));
                }
                let k = vals.len() / 2;
                let (_, med, _) = vals
                    .select_nth_unstable_by(k, |a, b| a.partial_cmp(b).expect("costs are finite"));
                *med
            }
        }
    }
}

fn check_cloud<F: Real>(op: &'static str, what: &str, x: ArrayView2<'_, F>) -> Result<()> {
    if x.is_empty() {
        return Err(Error::Empty {
            op,
            what: format!("point cloud {what} of shape {:?}", x.dim()),
        });
    }
    check_finite(op, what, x.iter().copied())
}

/// Dense squared Euclidean cost matrix `C_ij = |x_i - y_j|^2` (clamped at 0 against rounding).
///
/// # Errors
/// As [`Geometry::sq_euclidean`].
///
/// # Complexity
/// `O(n m d)` time through one GEMM, `O(n m)` memory.
///
/// # Example
/// ```
/// use ndarray::array;
/// let c = recgoat_core::transport::sq_euclidean_cost(array![[0.0f32], [3.0]].view(), array![[1.0f32]].view()).unwrap();
/// assert_eq!(c, array![[1.0], [4.0]]);
/// ```
pub fn sq_euclidean_cost<F: Real>(x: ArrayView2<'_, F>, y: ArrayView2<'_, F>) -> Result<Array2<F>> {
    Ok(Geometry::sq_euclidean(x, y)?.to_dense())
}

/// RecGOAT's cost between embedding *dimensions* (RECGOAT.md section 3):
/// `C_ab = s * mean_i (M_ia - Z_ib)^2` for `a, b` in `0..d`.
///
/// Computed as `s * (mean_i M_ia^2 + mean_i Z_ib^2 - 2 (M^T Z)_ab / I)`, clamped at 0 against rounding,
/// never forming the `I x d x d` tensor of the released code.
///
/// # Arguments
/// * `m`, `z` - `I x d` modality and collaborative embeddings of the same items.
/// * `scale` - `s` (the released code uses 100).
///
/// # Errors
/// [`Error::Shape`] when `m` and `z` differ in shape, [`Error::Empty`] for no rows or columns,
/// [`Error::NonFinite`] for NaN/Inf entries or scale, [`Error::Param`] for `scale <= 0`.
///
/// # Complexity
/// `O(I d^2)` time (one GEMM), `O(d^2)` memory.
///
/// # Example
/// ```
/// use ndarray::array;
/// let m = array![[1.0f64, 0.0], [3.0, 2.0]];
/// let c = recgoat_core::transport::dimension_cost(m.view(), m.view(), 1.0).unwrap();
/// // C_01 = mean((1-0)^2, (3-2)^2) = 1, and the diagonal is 0
/// assert!((c[[0, 1]] - 1.0).abs() < 1e-12 && c[[0, 0]].abs() < 1e-12);
/// ```
pub fn dimension_cost<F: Real>(
    m: ArrayView2<'_, F>,
    z: ArrayView2<'_, F>,
    scale: F,
) -> Result<Array2<F>> {
    const OP: &str = "dimension_cost";
    check_dimension_inputs(OP, m, z)?;
    if !positive_finite(scale) {
        return Err(Error::param(OP, "scale", scale, "must be finite and > 0"));
    }
    Ok(dimension_cost_unchecked(m, z, scale))
}

pub(crate) fn check_dimension_inputs<F: Real>(
    op: &'static str,
    m: ArrayView2<'_, F>,
    z: ArrayView2<'_, F>,
) -> Result<()> {
    if m.dim() != z.dim() {
        return Err(Error::shape(
            op,
            "collaborative embedding z vs modality embedding m",
            m.dim(),
            z.dim(),
        ));
    }
    if m.is_empty() {
        return Err(Error::Empty {
            op,
            what: format!("embeddings of shape {:?}", m.dim()),
        });
    }
    check_finite(op, "m", m.iter().copied())?;
    check_finite(op, "z", z.iter().copied())
}

pub(crate) fn dimension_cost_unchecked<F: Real>(
    m: ArrayView2<'_, F>,
    z: ArrayView2<'_, F>,
    scale: F,
) -> Array2<F> {
    let msq = m.map(|v| *v * *v).sum_axis(Axis(0));
    let zsq = z.map(|v| *v * *v).sum_axis(Axis(0));
    dimension_cost_from_moments(m.t().dot(&z), &msq, &zsq, m.nrows(), scale)
}

/// The dimension cost from its moments: `mtz = M^T Z` (overwritten with `C`), the column sums of squares
/// `msq` and `zsq`, and the row count (shared with the GPU path, which computes the moments on the device).
pub(crate) fn dimension_cost_from_moments<F: Real>(
    mut mtz: Array2<F>,
    msq: &Array1<F>,
    zsq: &Array1<F>,
    rows: usize,
    scale: F,
) -> Array2<F> {
    let inv = F::one() / F::from_usize(rows).expect("row count fits");
    let two = F::c(2.0) * inv;
    for ((a, b), v) in mtz.indexed_iter_mut() {
        *v = ((msq[a] * inv + zsq[b] * inv - two * *v) * scale).max(F::zero());
    }
    mtz
}

/// Gradient of a loss through [`dimension_cost`]: given `dL/dC` (d x d), returns `(dL/dM, dL/dZ)`.
///
/// `dL/dM = (2 s / I) (M * rowsum(dC) - Z dC^T)` and `dL/dZ = (2 s / I) (Z * colsum(dC) - M dC)`.
/// (The clamp at 0 is treated as inactive: it only fires on rounding-level negatives.)
///
/// # Errors
/// As [`dimension_cost`], plus [`Error::Shape`] when `grad_cost` is not d x d.
pub fn dimension_cost_backward<F: Real>(
    m: ArrayView2<'_, F>,
    z: ArrayView2<'_, F>,
    scale: F,
    grad_cost: ArrayView2<'_, F>,
) -> Result<(Array2<F>, Array2<F>)> {
    const OP: &str = "dimension_cost_backward";
    check_dimension_inputs(OP, m, z)?;
    let d = m.ncols();
    if grad_cost.dim() != (d, d) {
        return Err(Error::shape(OP, "grad_cost", (d, d), grad_cost.dim()));
    }
    Ok(dimension_cost_backward_unchecked(m, z, scale, grad_cost))
}

pub(crate) fn dimension_cost_backward_unchecked<F: Real>(
    m: ArrayView2<'_, F>,
    z: ArrayView2<'_, F>,
    scale: F,
    gc: ArrayView2<'_, F>,
) -> (Array2<F>, Array2<F>) {
    let k = F::c(2.0) * scale / F::from_usize(m.nrows()).expect("row count fits");
    let rows = gc.sum_axis(Axis(1));
    let cols = gc.sum_axis(Axis(0));
    let mut gm = z.dot(&gc.t());
    gm.zip_mut_with(&m, |g, _| *g = -*g);
    gm += &(&m * &rows.view().insert_axis(Axis(0)));
    let mut gz = m.dot(&gc);
    gz.zip_mut_with(&z, |g, _| *g = -*g);
    gz += &(&z * &cols.view().insert_axis(Axis(0)));
    (gm * k, gz * k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{randn, rng};

    #[test]
    fn a_materialised_point_cloud_reads_like_the_online_one() {
        let x: Array2<f64> = randn(&mut rng(3), (7, 4));
        let y: Array2<f64> = randn(&mut rng(4), (5, 4));
        let online = Geometry::sq_euclidean(x.view(), y.view()).unwrap();
        let kept = Geometry::sq_euclidean_materialized(x.view(), y.view()).unwrap();
        assert!(kept.is_materialized() && !online.is_materialized());
        assert_eq!(kept.block_rows(), usize::MAX);
        let want = online.to_dense();
        let mut scratch = Vec::new();
        kept.for_rows(2..6, &mut scratch, |i, row| {
            assert_eq!(row, want.row(i).as_slice().unwrap())
        });
        let (mut c1, mut c2) = (vec![0.0; 7], vec![0.0; 7]);
        for j in 0..5 {
            kept.column(j, &mut c1);
            online.column(j, &mut c2);
            for (u, v) in c1.iter().zip(&c2) {
                assert!((u - v).abs() < 1e-12, "column {j}: {u} vs {v}");
            }
        }
    }
}
