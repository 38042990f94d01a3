//! Closed-form content encoders ([`crate::model::RecGoatConfig::content_ridge`]): per modality, the ridge
//! regression of the items' final vectors on their feature rows over the warm items the content term
//! trains on, refitted on the current vectors whenever cold items are placed, its penalty chosen on the probe
//! items. Where training is short (a sparse dataset stops after a few dozen epochs) the encoders the content
//! term trains by gradient steps have seen few batches; the closed form is the least-squares optimum of the
//! same distillation at any point of training.

use crate::error::{Error, Result};
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// The widest feature matrix fitted in closed form: its `F x F` system is factored once per penalty when
/// the model is built (`O(F^3)`); wider modalities keep their trained encoders.
pub(crate) const RIDGE_MAX_WIDTH: usize = 1024;

/// The penalties tried, as multiples of the centred fit rows' mean squared norm per feature column
/// (`trace(X_c^T X_c) / F`), so that the grid does not depend on the features' scale or width.
const PENALTIES: [f64; 5] = [0.1, 0.3, 1.0, 3.0, 10.0];

/// The least share of the held-out rows' squared deviation from the mean vector that a fit must explain for
/// its modality to place cold items: below it the features predict nothing the mean does not, and a content
/// vector would only be the mean item's (noise features, whose shrunk fit is the mean vector, would
/// otherwise enter every list as the average item).
const MIN_GAIN: f64 = 0.02;

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
}

impl Ridge {
    /// The encoder of the feature rows `x` (every item) fitted on the rows `fit`; `None` for a matrix wider
    /// than [`RIDGE_MAX_WIDTH`] or fewer than two fit rows.
    ///
    /// # Errors
    /// [`Error::Param`] when a penalised normal matrix is not positive definite (non-finite features).
    pub(crate) fn new<F: Real>(x: ArrayView2<'_, F>, fit: &[usize]) -> Result<Option<Self>> {
        let width = x.ncols();
        if width == 0 || width > RIDGE_MAX_WIDTH || fit.len() < 2 {
            return Ok(None);
        }
        let rows = x
            .select(Axis(0), fit)
            .mapv(|v| v.to_f64().unwrap_or(f64::NAN));
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
        }))
    }

    /// The projection `(W, b)` (`F x d`, `d`) that predicts the rows `fit` of `targets` (every item's
    /// vector) from their features, at the penalty whose predictions of the rows `held_out` are closest to
    /// their targets (the middle penalty without held-out rows); `None` when even that one explains less
    /// than [`MIN_GAIN`] of the held-out rows' squared deviation from the fit rows' mean vector.
    pub(crate) fn fit<F: Real>(
        &self,
        x: ArrayView2<'_, F>,
        targets: ArrayView2<'_, F>,
        held_out: &[usize],
    ) -> Option<(Array2<f64>, Array1<f64>)> {
        let as_f64 = |a: ArrayView2<'_, F>| a.mapv(|v| v.to_f64().unwrap_or(f64::NAN));
        let (z_mean, mut all) = self.solutions(targets);
        if held_out.is_empty() {
            return Some(all.swap_remove(PENALTIES.len() / 2));
        }
        let xh = as_f64(x.select(Axis(0), held_out).view());
        let zh = as_f64(targets.select(Axis(0), held_out).view());
        let error = |(w, b): &(Array2<f64>, Array1<f64>)| {
            let pred = xh.dot(w) + b;
            (&pred - &zh).mapv(|v| v * v).sum()
        };
        let (best, wb) = (all.into_iter())
            .map(|wb| (error(&wb), wb))
            .fold(None, |best: Option<(f64, _)>, (e, wb)| match best {
                Some((be, _)) if be <= e => best,
                _ => Some((e, wb)),
            })
            .expect("at least one penalty");
        let spread = (&zh - &z_mean).mapv(|v| v * v).sum();
        (best <= (1.0 - MIN_GAIN) * spread).then_some(wb)
    }

    /// The fit rows' mean target and the projection `(W, b)` at each penalty of [`PENALTIES`].
    #[allow(clippy::type_complexity)]
    fn solutions<F: Real>(
        &self,
        targets: ArrayView2<'_, F>,
    ) -> (Array1<f64>, Vec<(Array2<f64>, Array1<f64>)>) {
        let z = (targets.select(Axis(0), &self.fit)).mapv(|v| v.to_f64().unwrap_or(f64::NAN));
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

/// The inverse of a symmetric positive definite matrix, through its Cholesky factor `L L^T`.
///
/// # Errors
/// [`Error::Param`] when `a` is not positive definite.
fn spd_inverse(mut a: Array2<f64>) -> Result<Array2<f64>> {
    let n = a.nrows();
    // the factor in the lower triangle of `a`
    for j in 0..n {
        let mut d = a[[j, j]];
        for k in 0..j {
            d -= a[[j, k]] * a[[j, k]];
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
        a[[j, j]] = d;
        for i in j + 1..n {
            let mut s = a[[i, j]];
            for k in 0..j {
                s -= a[[i, k]] * a[[j, k]];
            }
            a[[i, j]] = s / d;
        }
    }
    // L^-1 column by column (forward substitution on the identity), then (L^-1)^T L^-1
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
    Ok(linv.t().dot(&linv))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{randn, rng};

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
        let r = Ridge::new(x.view(), &fit).unwrap().unwrap();
        let (wf, bf) = r.fit(x.view(), z.view(), &held).unwrap();
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
            mid,
            r.solutions(noise.view()).1.swap_remove(PENALTIES.len() / 2)
        );
        // too wide or too few rows: no closed form
        let wide: Array2<f64> = Array2::zeros((3, RIDGE_MAX_WIDTH + 1));
        assert!(Ridge::new(wide.view(), &[0, 1, 2]).unwrap().is_none());
        assert!(Ridge::new(x.view(), &[0]).unwrap().is_none());
    }
}
