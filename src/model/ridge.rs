//! Closed-form content encoders ([`crate::model::RecGoatConfig::content_ridge`]): per modality, the ridge
//! regression of the items' final vectors on their feature rows over the warm items the content term
//! trains on, refitted on the current vectors whenever cold items are placed, its penalty chosen on the probe
//! items. Where training is short (a sparse dataset stops after a few dozen epochs) the encoders the content
//! term trains by gradient steps have seen few batches; the closed form is the least-squares optimum of the
//! same distillation at any point of training.
//!
//! Beside the linear map, each encoder can lean on the items the fit rows are: a new item's neighbours by
//! the cosine of its feature row ([`NeighbourLists`]), their vectors averaged with softmax weights of the
//! cosines. How many neighbours, the softmax temperature and the neighbours' share of the blend with the
//! linear map are chosen on the probe items with the penalty, so a modality whose neighbours predict
//! nothing the linear map does not keeps the linear map alone.

use crate::error::{Error, Result};
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// The widest feature matrix fitted in closed form as it is: its `F x F` system is factored once per
/// penalty when the model is built (`O(F^3)`). A wider one is first projected to [`PROJECTED_WIDTH`]
/// columns by a fixed Gaussian random projection (which keeps the rows' inner products up to a few
/// percent), and the fit's map is returned on the original columns.
pub(crate) const RIDGE_MAX_WIDTH: usize = 1024;

/// The width a feature matrix wider than [`RIDGE_MAX_WIDTH`] is projected to before the fit.
const PROJECTED_WIDTH: usize = 512;

/// The penalties tried, as multiples of the centred fit rows' mean squared norm per feature column
/// (`trace(X_c^T X_c) / F`), so that the grid does not depend on the features' scale or width.
const PENALTIES: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];

/// The least share of the held-out rows' squared deviation from the mean vector that a fit must explain for
/// its modality to place cold items: below it the features predict nothing the mean does not, and a content
/// vector would only be the mean item's (noise features, whose shrunk fit is the mean vector, would
/// otherwise enter every list as the average item).
pub(crate) const MIN_GAIN: f64 = 0.02;

/// The neighbour counts tried.
const NEIGHBOUR_KS: [usize; 2] = [10, 30];

/// The softmax temperatures of the neighbours' cosines tried.
const TEMPERATURES: [f64; 2] = [0.05, 0.1];

/// The neighbours' shares of the blend with the linear map tried (0: the linear map alone).
const SHARES: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The most cosine products (items x fit rows x width) spent on the neighbour lists when the model is
/// built; a larger catalogue keeps the linear map alone.
const NEIGHBOUR_MAX_WORK: f64 = 4e10;

/// How a fitted encoder predicts an item's vector: `(1 - s) (x W + b) + s sum_j a_j z_j` over the item's
/// `k` nearest fit rows `j` by feature cosine, `a` the softmax of their cosines at `temperature`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ContentFit {
    pub w: Array2<f64>,
    pub b: Array1<f64>,
    /// `(share s, k, temperature)`, `None`: the linear map alone.
    pub neighbours: Option<(f64, usize, f64)>,
}

/// The softmax weights at `temperature` of the first `k` cosines of `list` (sorted, largest first) that are
/// not `skip`'s, with the fit rows they belong to.
pub(crate) fn neighbour_weights(
    list: &[(usize, f32)],
    skip: Option<usize>,
    k: usize,
    temperature: f64,
) -> Vec<(usize, f64)> {
    let top: Vec<(usize, f64)> = (list.iter())
        .filter(|(j, _)| Some(*j) != skip)
        .take(k)
        .map(|&(j, c)| (j, f64::from(c)))
        .collect();
    let max = top.first().map_or(0.0, |t| t.1);
    let e: Vec<f64> = top
        .iter()
        .map(|t| ((t.1 - max) / temperature).exp())
        .collect();
    let sum: f64 = e.iter().sum();
    top.iter().zip(e).map(|(t, e)| (t.0, e / sum)).collect()
}

/// The `k` largest of `cosines` (position, cosine), largest first (ties by position), in one pass that
/// keeps the `k` best so far in order.
pub(crate) fn top_cosines(
    cosines: impl Iterator<Item = (usize, f32)>,
    k: usize,
) -> Vec<(usize, f32)> {
    let before =
        |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)).is_lt();
    let mut top: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return top;
    }
    for c in cosines {
        if top.len() == k && !before(&c, &top[k - 1]) {
            continue;
        }
        let at = top.partition_point(|t| before(t, &c));
        top.insert(at, c);
        top.truncate(k);
    }
    top
}

/// The rows `rows` of `a`, as `f64`.
fn gather_f64<F: Real>(a: ArrayView2<'_, F>, rows: &[usize]) -> Array2<f64> {
    a.select(Axis(0), rows)
        .mapv(|v| v.to_f64().unwrap_or(f64::NAN))
}

/// `a` as `f32`.
pub(crate) fn to_f32<F: Real, D: ndarray::Dimension>(
    a: ndarray::ArrayView<'_, F, D>,
) -> ndarray::Array<f32, D> {
    a.mapv(|v| v.to_f64().unwrap_or(f64::NAN) as f32)
}

/// Rows scaled to unit length (zero rows left as they are), as `f32`.
pub(crate) fn unit_rows<F: Real>(x: ArrayView2<'_, F>) -> Array2<f32> {
    let mut y = to_f32(x);
    crate::nn::normalize_nonzero_rows_in_place(&mut y);
    y
}

/// Every item's nearest fit rows by the cosine of the feature rows, computed once when the model is built:
/// `NEIGHBOUR_KS`' largest plus one (an item among the fit rows skips itself).
#[derive(Debug, Clone)]
pub(crate) struct NeighbourLists {
    /// Per item, (fit row's item id, cosine), largest first.
    lists: Vec<Vec<(usize, f32)>>,
}

impl NeighbourLists {
    fn new<F: Real>(x: ArrayView2<'_, F>, fit: &[usize]) -> Option<Self> {
        let work = (x.nrows() * fit.len() * x.ncols()) as f64;
        if work > NEIGHBOUR_MAX_WORK || fit.len() < 2 {
            return None;
        }
        let keep = NEIGHBOUR_KS.iter().max().copied().unwrap_or(0) + 1;
        let unit = unit_rows(x);
        let refs = unit.select(Axis(0), fit);
        let mut lists = Vec::with_capacity(x.nrows());
        for block in unit.axis_chunks_iter(Axis(0), 256) {
            let cos = block.dot(&refs.t());
            for row in cos.rows() {
                let top = top_cosines(row.iter().enumerate().map(|(j, &c)| (fit[j], c)), keep);
                lists.push(top);
            }
        }
        Some(NeighbourLists { lists })
    }

    /// The neighbours' prediction of each row of `rows` at `(k, temperature)`: the softmax-weighted mean
    /// of `targets`' rows of its nearest fit rows (itself skipped).
    fn predict<F: Real>(
        &self,
        targets: ArrayView2<'_, F>,
        rows: &[usize],
        k: usize,
        temperature: f64,
    ) -> Array2<f64> {
        let targets = targets.mapv(|v| v.to_f64().unwrap_or(f64::NAN));
        let mut out = Array2::<f64>::zeros((rows.len(), targets.ncols()));
        for (mut o, &i) in out.rows_mut().into_iter().zip(rows) {
            for (j, a) in neighbour_weights(&self.lists[i], Some(i), k, temperature) {
                o.scaled_add(a, &targets.row(j));
            }
        }
        out
    }
}

/// One modality's closed-form encoder: the fit rows, their feature mean, and per penalty the inverse of the
/// penalised normal matrix.
#[derive(Debug, Clone)]
pub(crate) struct Ridge {
    fit: Vec<usize>,
    mean: Array1<f64>,
    /// The centred feature rows of `fit`, transposed (`F x n`).
    xct: Array2<f64>,
    /// `(X_c^T X_c + lambda I)^-1` per penalty of [`PENALTIES`].
    inverses: Vec<Array2<f64>>,
    /// The random projection `R` (`F x PROJECTED_WIDTH`) of features wider than [`RIDGE_MAX_WIDTH`], which
    /// the fit reads as `x R`; `None`: the features as they are.
    projection: Option<Array2<f64>>,
    /// Every item's nearest fit rows, `None` for a catalogue too large to list them.
    neighbours: Option<NeighbourLists>,
    /// Per item whether its feature row is all zero (the item lacks the modality): never a fit or
    /// held-out row.
    absent: Vec<bool>,
}

impl Ridge {
    /// The encoder of the feature rows `x` (every item) fitted on the rows `fit` that are not all zero (an
    /// all-zero row is an item without the modality), with each item's nearest fit rows listed when
    /// `neighbours`; `None` for no column or fewer than two such fit rows.
    ///
    /// # Errors
    /// [`Error::Param`] when a penalised normal matrix is not positive definite (non-finite features).
    pub(crate) fn new<F: Real>(
        x: ArrayView2<'_, F>,
        fit: &[usize],
        neighbours: bool,
    ) -> Result<Option<Self>> {
        // an all-zero feature row is an item without the modality: it says nothing to fit
        let absent = crate::nn::zero_rows(x);
        let fit: Vec<usize> = fit.iter().copied().filter(|&i| !absent[i]).collect();
        if x.ncols() == 0 || fit.len() < 2 {
            return Ok(None);
        }
        let fit = &fit[..];
        let rows = gather_f64(x, fit);
        let projection = (x.ncols() > RIDGE_MAX_WIDTH).then(|| random_projection(x.ncols()));
        let rows = projected(projection.as_ref(), rows);
        let width = rows.ncols();
        let mean = rows.mean_axis(Axis(0)).expect("two rows or more");
        let xc = &rows - &mean;
        let gram = xc.t().dot(&xc);
        let base = gram.diag().sum() / width as f64;
        let base = if base > 0.0 { base } else { 1.0 };
        let inverses = (PENALTIES.iter())
            .map(|&c| {
                let mut a = gram.clone();
                a.diag_mut().mapv_inplace(|v| v + c * base);
                spd_inverse(a)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Ridge {
            fit: fit.to_vec(),
            mean,
            xct: xc.reversed_axes(),
            inverses,
            projection,
            neighbours: neighbours.then(|| NeighbourLists::new(x, fit)).flatten(),
            absent,
        }))
    }

    /// The fit rows: the items whose vectors the encoder reproduces (and whose neighbours it averages).
    pub(crate) fn fit_rows(&self) -> &[usize] {
        &self.fit
    }

    /// The prediction of `fit` for the items `rows` (`rows x d`), from their feature rows in `x` (every
    /// item) and, with a neighbour share, the vectors `targets` of their nearest fit rows.
    pub(crate) fn predict<F: Real>(
        &self,
        fit: &ContentFit,
        x: ArrayView2<'_, F>,
        targets: ArrayView2<'_, F>,
        rows: &[usize],
    ) -> Array2<f64> {
        let linear = gather_f64(x, rows).dot(&fit.w) + &fit.b;
        match (&fit.neighbours, &self.neighbours) {
            (Some((s, k, t)), Some(lists)) => {
                linear * (1.0 - s) + lists.predict(targets, rows, *k, *t) * *s
            }
            _ => linear,
        }
    }

    /// The encoder that predicts the rows `fit` of `targets` (every item's vector) from their features: the
    /// projection `(W, b)` (`F x d`, `d`) at the penalty whose predictions of the rows `held_out` are
    /// closest to their targets, then blended with the item's nearest fit rows at the neighbour count,
    /// temperature and share that predict them best (share 0 among them: the linear map alone; without
    /// held-out rows, the middle penalty and no neighbours; held-out rows that are all zero do not count);
    /// `None` when even the best explains less than
    /// [`MIN_GAIN`] of the held-out rows' squared deviation from the fit rows' mean vector.
    pub(crate) fn fit<F: Real>(
        &self,
        x: ArrayView2<'_, F>,
        targets: ArrayView2<'_, F>,
        held_out: &[usize],
    ) -> Option<ContentFit> {
        let (z_mean, mut all) = self.solutions(targets);
        let held_out: Vec<usize> = (held_out.iter().copied())
            .filter(|&i| !self.absent[i])
            .collect();
        let held_out = &held_out[..];
        if held_out.is_empty() {
            let (w, b) = all.swap_remove(PENALTIES.len() / 2);
            return Some(ContentFit {
                w: self.on_original_columns(w),
                b,
                neighbours: None,
            });
        }
        let xh = self.project(gather_f64(x, held_out));
        let zh = gather_f64(targets, held_out);
        let error = |pred: &Array2<f64>| (pred - &zh).mapv(|v| v * v).sum();
        let (mut best, (w, b), linear) = (all.into_iter())
            .map(|(w, b)| {
                let pred = xh.dot(&w) + &b;
                (error(&pred), (w, b), pred)
            })
            .fold(None, |best: Option<(f64, _, _)>, cand| match best {
                Some(ref be) if be.0 <= cand.0 => best,
                _ => Some(cand),
            })
            .expect("at least one penalty");
        let mut neighbours = None;
        if let Some(lists) = &self.neighbours {
            for &k in &NEIGHBOUR_KS {
                for &t in &TEMPERATURES {
                    let near = lists.predict(targets, held_out, k, t);
                    for &s in &SHARES[1..] {
                        let e = error(&(&linear * (1.0 - s) + &near * s));
                        if e < best {
                            (best, neighbours) = (e, Some((s, k, t)));
                        }
                    }
                }
            }
        }
        let spread = (&zh - &z_mean).mapv(|v| v * v).sum();
        let w = self.on_original_columns(w);
        (best <= (1.0 - MIN_GAIN) * spread).then_some(ContentFit { w, b, neighbours })
    }

    /// `x R` for projected features, else `x`.
    fn project(&self, x: Array2<f64>) -> Array2<f64> {
        projected(self.projection.as_ref(), x)
    }

    /// A map `W` of the fitted columns on the original ones: `R W` for projected features (`(x R) W =
    /// x (R W)`), else `W`.
    fn on_original_columns(&self, w: Array2<f64>) -> Array2<f64> {
        match &self.projection {
            Some(r) => r.dot(&w),
            None => w,
        }
    }

    /// The fit rows' mean target and the projection `(W, b)` at each penalty of [`PENALTIES`].
    #[allow(clippy::type_complexity)]
    fn solutions<F: Real>(
        &self,
        targets: ArrayView2<'_, F>,
    ) -> (Array1<f64>, Vec<(Array2<f64>, Array1<f64>)>) {
        let z = gather_f64(targets, &self.fit);
        let z_mean = z.mean_axis(Axis(0)).expect("two rows or more");
        let rhs = self.xct.dot(&(&z - &z_mean));
        let all = (self.inverses.iter())
            .map(|inv| {
                let w = inv.dot(&rhs);
                let b = &z_mean - &self.mean.dot(&w);
                (w, b)
            })
            .collect();
        (z_mean, all)
    }
}

/// `x R` for a projection `R`, else `x`.
fn projected(projection: Option<&Array2<f64>>, x: Array2<f64>) -> Array2<f64> {
    match projection {
        Some(r) => x.dot(r),
        None => x,
    }
}

/// A fixed Gaussian random projection of `width` columns to [`PROJECTED_WIDTH`], entries
/// `N(0, 1 / PROJECTED_WIDTH)` (inner products kept in expectation), seeded by the width alone so that the
/// same features always project alike.
fn random_projection(width: usize) -> Array2<f64> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x9E37_79B9_7F4A_7C15 ^ width as u64);
    let scale = (PROJECTED_WIDTH as f64).sqrt().recip();
    Array2::from_shape_simple_fn((width, PROJECTED_WIDTH), || {
        let z: f64 = StandardNormal.sample(&mut rng);
        z * scale
    })
}

/// The inverse of a symmetric positive definite matrix, through its Cholesky factor `L L^T`.
///
/// Every loop runs along rows (the factor's rows, and the rows of `L^-T`), so the `O(n^3)` inner products
/// read memory in order; the sums are taken in the same order as the textbook column-by-column form
/// (the reference in this module's tests), which it reproduces to the last bit (up to BLAS's rounding of
/// the final product with the `linalg` feature).
///
/// # Errors
/// [`Error::Param`] when `a` is not positive definite.
pub(crate) fn spd_inverse(a: Array2<f64>) -> Result<Array2<f64>> {
    let n = a.nrows();
    // the factor in the lower triangle of `l`, row-major
    let mut l = a.as_standard_layout().into_owned();
    let ls = l.as_slice_mut().expect("standard layout");
    for j in 0..n {
        let (head, tail) = ls.split_at_mut((j + 1) * n);
        let row_j = &mut head[j * n..];
        let mut d = row_j[j];
        for &v in &row_j[..j] {
            d -= v * v;
        }
        if !(d > 0.0 && d.is_finite()) {
            let why = "the penalised normal matrix of the features is not positive definite";
            return Err(Error::param(
                "Ridge::new",
                "features",
                format!("pivot {j}: {d}"),
                why,
            ));
        }
        let d = d.sqrt();
        row_j[j] = d;
        let pj = &row_j[..j];
        for row_i in tail.chunks_exact_mut(n) {
            let mut s = row_i[j];
            for (&x, &y) in row_i[..j].iter().zip(pj) {
                s -= x * y;
            }
            row_i[j] = s / d;
        }
    }
    // L^-1 column by column (forward substitution on the identity), each column kept as a row of
    // `linv_t`
    let mut linv_t = Array2::<f64>::zeros((n, n));
    for (c, mut col) in linv_t.rows_mut().into_iter().enumerate() {
        let col = col.as_slice_mut().expect("rows of a standard-layout array");
        for i in c..n {
            let row_i = &ls[i * n..(i + 1) * n];
            let mut s = if i == c { 1.0 } else { 0.0 };
            for (&x, &y) in row_i[c..i].iter().zip(&col[c..i]) {
                s -= x * y;
            }
            col[i] = s / row_i[i];
        }
    }
    // (L^-1)^T L^-1 with `linv_t` = (L^-1)^T
    Ok(linv_t.dot(&linv_t.t()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{randn, rng};

    /// The textbook form of [`spd_inverse`]: the factor column by column with 2-D indexing, `L^-1` by
    /// forward substitution down its columns.
    fn spd_inverse_reference(mut a: Array2<f64>) -> Array2<f64> {
        let n = a.nrows();
        for j in 0..n {
            let mut d = a[[j, j]];
            for k in 0..j {
                d -= a[[j, k]] * a[[j, k]];
            }
            let d = d.sqrt();
            a[[j, j]] = d;
            for i in j + 1..n {
                let mut s = a[[i, j]];
                for k in 0..j {
                    s -= a[[i, k]] * a[[j, k]];
                }
                a[[i, j]] = s / d;
            }
        }
        let mut linv = Array2::<f64>::zeros((n, n));
        for c in 0..n {
            for i in c..n {
                let mut s = if i == c { 1.0 } else { 0.0 };
                for k in c..i {
                    s -= a[[i, k]] * linv[[k, c]];
                }
                linv[[i, c]] = s / a[[i, i]];
            }
        }
        linv.t().dot(&linv)
    }

    #[test]
    fn the_row_wise_inverse_is_the_textbook_one_to_the_last_bit() {
        for (seed, n) in [(3, 1), (4, 2), (5, 17), (6, 70), (7, 300)] {
            let b: Array2<f64> = randn(&mut rng(seed), (n + 9, n));
            let a = b.t().dot(&b) + Array2::<f64>::eye(n) * 0.25;
            let fast = spd_inverse(a.clone()).unwrap();
            let slow = spd_inverse_reference(a);
            assert_eq!(fast.dim(), (n, n));
            for (x, y) in fast.iter().zip(&slow) {
                // (with the `linalg` feature the final product may go through BLAS, which rounds its
                // blocks its own way)
                match cfg!(feature = "linalg") {
                    false => assert_eq!(x.to_bits(), y.to_bits(), "n = {n}: {x} vs {y}"),
                    true => assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "n = {n}"),
                }
            }
        }
    }

    #[test]
    fn the_inverse_of_a_positive_definite_matrix() {
        let b: Array2<f64> = randn(&mut rng(1), (7, 5));
        let a = b.t().dot(&b) + Array2::<f64>::eye(5) * 0.5;
        let inv = spd_inverse(a.clone()).unwrap();
        let eye = a.dot(&inv);
        for ((i, j), v) in eye.indexed_iter() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((v - want).abs() < 1e-10, "({i}, {j}): {v}");
        }
        let mut bad = a;
        bad[[2, 2]] = -1.0;
        assert!(spd_inverse(bad)
            .unwrap_err()
            .to_string()
            .contains("positive definite"));
    }

    #[test]
    fn a_linear_map_is_recovered_and_the_penalty_is_chosen_on_held_out_rows() {
        // vectors a linear function of the features plus an offset: the fit recovers it on held-out rows
        let x: Array2<f64> = randn(&mut rng(2), (200, 6));
        let w: Array2<f64> = randn(&mut rng(3), (6, 3));
        let z = x.dot(&w) + 0.7;
        let fit: Vec<usize> = (0..160).collect();
        let held: Vec<usize> = (160..200).collect();
        let r = Ridge::new(x.view(), &fit, true).unwrap().unwrap();
        let f = r.fit(x.view(), z.view(), &held).unwrap();
        // a linear map: its neighbours add nothing the map does not predict
        assert_eq!(f.neighbours, None);
        let (wf, bf) = (f.w, f.b);
        let pred = x.select(Axis(0), &held).dot(&wf) + &bf;
        let zh = z.select(Axis(0), &held);
        let err = (&pred - &zh).mapv(|v| v * v).sum();
        let spread = (&zh - 0.7).mapv(|v| v * v).sum();
        // the smallest penalty shrinks least and is the one chosen: a tenth of the spread or less remains
        assert_eq!(
            (wf.clone(), bf.clone()),
            r.solutions(z.view()).1.swap_remove(0)
        );
        assert!(err < 0.02 * spread, "{err} vs {spread}");
        // pure noise targets: the features predict nothing the mean does not, and place nothing
        let noise: Array2<f64> = randn(&mut rng(4), (200, 3));
        assert!(r.fit(x.view(), noise.view(), &held).is_none());
        // without held-out rows the middle penalty, whatever it explains
        let mid = r.fit(x.view(), noise.view(), &[]).unwrap();
        assert_eq!(
            (mid.w, mid.b),
            r.solutions(noise.view()).1.swap_remove(PENALTIES.len() / 2)
        );
        // too few rows or no column: no closed form
        assert!(Ridge::new(x.view(), &[0], true).unwrap().is_none());
        let none: Array2<f64> = Array2::zeros((3, 0));
        assert!(Ridge::new(none.view(), &[0, 1, 2], true).unwrap().is_none());
    }

    #[test]
    fn neighbours_take_over_where_the_vectors_are_not_linear_in_the_features() {
        // features on a circle, vectors that turn three times as fast: no linear map predicts them, the
        // nearest items on the circle do
        let n = 400;
        let angle = |i: usize| {
            i as f64 * std::f64::consts::TAU / n as f64 + 0.3 * (i % 7) as f64 / n as f64
        };
        let x = Array2::from_shape_fn((n, 2), |(i, c)| {
            if c == 0 {
                angle(i).cos()
            } else {
                angle(i).sin()
            }
        });
        let z = Array2::from_shape_fn((n, 2), |(i, c)| {
            if c == 0 {
                (3.0 * angle(i)).cos()
            } else {
                (3.0 * angle(i)).sin()
            }
        });
        let held: Vec<usize> = (0..n).step_by(5).collect();
        let fit: Vec<usize> = (0..n).filter(|i| i % 5 != 0).collect();
        let r = Ridge::new(x.view(), &fit, true).unwrap().unwrap();
        let f = r.fit(x.view(), z.view(), &held).unwrap();
        let (share, k, _) = f
            .neighbours
            .expect("the neighbours predict the held-out rows");
        assert!(share >= 0.75 && NEIGHBOUR_KS.contains(&k), "{share} {k}");
        let err = |pred: &Array2<f64>| (pred - &z.select(Axis(0), &held)).mapv(|v| v * v).sum();
        let both = err(&r.predict(&f, x.view(), z.view(), &held));
        let linear_only = ContentFit {
            neighbours: None,
            ..f.clone()
        };
        let linear = err(&r.predict(&linear_only, x.view(), z.view(), &held));
        assert!(both < 0.1 * linear, "{both} vs {linear}");
        // a fit row is predicted by its neighbours, never by itself
        let own = r.predict(
            &ContentFit {
                neighbours: Some((1.0, 10, 0.05)),
                ..f
            },
            x.view(),
            z.view(),
            &[1],
        );
        let list = &r.neighbours.as_ref().unwrap().lists[1];
        assert_eq!(list[0].0, 1, "its own row is its nearest");
        let want: Array1<f64> = neighbour_weights(list, Some(1), 10, 0.05)
            .into_iter()
            .fold(Array1::zeros(2), |acc, (j, a)| {
                acc + &z.row(j).mapv(|v| v * a)
            });
        assert!(neighbour_weights(list, Some(1), 10, 0.05)
            .iter()
            .all(|(j, _)| *j != 1));
        assert!((&own.row(0) - &want).iter().all(|d| d.abs() < 1e-12));
    }

    #[test]
    fn neighbour_weights_are_a_softmax_of_the_largest_cosines() {
        let top = top_cosines(
            [(0, 0.1f32), (1, 0.9), (2, 0.5), (3, 0.9), (4, -1.0)].into_iter(),
            3,
        );
        assert_eq!(top, vec![(1, 0.9), (3, 0.9), (2, 0.5)]);
        let w = neighbour_weights(&top, Some(3), 2, 0.1);
        assert_eq!(w.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let e = (-(0.9f64 - f64::from(0.5f32)) / 0.1).exp();
        assert!((w[0].1 - 1.0 / (1.0 + e)).abs() < 1e-6 && (w[1].1 - e / (1.0 + e)).abs() < 1e-6);
        assert!((w.iter().map(|t| t.1).sum::<f64>() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn wide_features_are_fitted_through_a_random_projection() {
        // 1,500 columns of rank 6: the projection keeps the subspace, and the map comes back on the
        // original columns
        let g: Array2<f64> = randn(&mut rng(5), (200, 6));
        let m: Array2<f64> = randn(&mut rng(6), (6, RIDGE_MAX_WIDTH + 476));
        let x = g.dot(&m);
        let z = g.dot(&randn::<f64, _, _>(&mut rng(7), (6, 3))) + 0.7;
        let fit: Vec<usize> = (0..160).collect();
        let held: Vec<usize> = (160..200).collect();
        let r = Ridge::new(x.view(), &fit, false).unwrap().unwrap();
        assert_eq!(r.xct.nrows(), PROJECTED_WIDTH);
        let f = r.fit(x.view(), z.view(), &held).unwrap();
        assert_eq!(f.w.dim(), (x.ncols(), 3));
        let pred = x.select(Axis(0), &held).dot(&f.w) + &f.b;
        assert_eq!(pred, r.predict(&f, x.view(), z.view(), &held));
        let zh = z.select(Axis(0), &held);
        let err = (&pred - &zh).mapv(|v| v * v).sum();
        let spread = (&zh - 0.7).mapv(|v| v * v).sum();
        assert!(err < 0.02 * spread, "{err} vs {spread}");
        // the same projection every time
        assert_eq!(random_projection(1500), random_projection(1500));
    }
}
