//! The taste term of a new item's vector ([`crate::model::RecGoatConfig::content_taste`]): how well the
//! item's features match the tastes of the users, read in the space of the ID vectors.
//!
//! Each item has a code: its feature rows scaled to unit length, centred on the warm items' mean row, each
//! modality weighted `1 / sqrt(M)`, concatenated and scaled to unit length (the raw-feature cosine of
//! [`crate::eval::feature_cosine`], centred). Each user has a taste: the unit mean of its training items'
//! codes. A linear map `B` from a user's unit vector to its taste is fitted by ridge regression over the
//! users; an item's taste vector is then `r B^T c_i` (`r` the warm items' mean vector norm), so that
//! `z_u . (r B^T c_i) = r |z_u| (B z_u / |z_u|) . c_i`: the cosine of the user's predicted taste with the
//! item's code, at the scale of a warm item's score. It does not ask the features to predict the item's
//! collaborative vector (what the content encoders do), only to say which users' tastes the item matches,
//! which weak features (audio descriptors) still say.
//!
//! The tastes are read from the training items outside the probe items, so that the probe items can say
//! whether the term generalises: the taste vectors of features that carry nothing (noise) still fit the
//! users' tastes over the items they were read from, but predict nothing about items outside them. The
//! term is kept only when, on the probe items, the least-squares multiple of their taste vectors explains at
//! least [`super::ridge::MIN_GAIN`] of their vectors' spread around the mean vector, in score space.

use crate::error::Result;
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView2, Axis};

/// The ridge penalty of the map, as a multiple of the users' normal matrix's mean diagonal entry.
const PENALTY: f64 = 1e-3;

/// The items' codes and the users' tastes of a dataset, fixed when the model is built.
#[derive(Debug, Clone)]
pub(crate) struct Taste {
    /// Per modality the warm items' mean unit feature row.
    pub means: Vec<Array1<f32>>,
    /// Per item its code (unit length, or 0).
    codes: Array2<f32>,
    /// Per user its taste (unit length, or 0 for a user without training interactions).
    tastes: Array2<f32>,
    /// The items with training interactions (their mean vector norm scales the map), ascending.
    warm: Vec<usize>,
    /// The probe items, which the tastes never read (the term must generalise to them), ascending.
    probe: Vec<usize>,
}

/// The codes of feature rows (one matrix per modality, same row count): unit rows, minus the modality's
/// `means`, weighted `1 / sqrt(M)`, concatenated and scaled to unit length. A modality's row that is all
/// zero (the item lacks it) adds nothing to the code, and a row of zeros in every modality gives a code of
/// 0.
pub(crate) fn taste_codes(means: &[Array1<f32>], features: &[ArrayView2<'_, f32>]) -> Array2<f32> {
    let n = features.first().map_or(0, |x| x.nrows());
    let width: usize = features.iter().map(|x| x.ncols()).sum();
    let weight = 1.0 / (features.len().max(1) as f32).sqrt();
    let mut out = Array2::<f32>::zeros((n, width));
    let mut at = 0;
    for (x, mean) in features.iter().zip(means) {
        let mut block = x.to_owned();
        crate::nn::normalize_nonzero_rows_in_place(&mut block);
        for (mut row, absent) in block.rows_mut().into_iter().zip(crate::nn::zero_rows(*x)) {
            if !absent {
                row -= mean;
            }
        }
        block *= weight;
        out.slice_mut(ndarray::s![.., at..at + x.ncols()])
            .assign(&block);
        at += x.ncols();
    }
    crate::nn::normalize_nonzero_rows_in_place(&mut out);
    out
}

impl Taste {
    /// The codes and tastes of `n_users` users and the items of `features` (one matrix per modality), from
    /// the training pairs `train` outside the items `probe` (ascending); `warm[i]` marks the items with
    /// training interactions (the centre).
    pub fn new<F: Real>(
        features: &[ArrayView2<'_, F>],
        train: &[(usize, usize)],
        (warm, probe): (&[bool], &[usize]),
        n_users: usize,
    ) -> Taste {
        let xs: Vec<Array2<f32>> = features.iter().map(|x| super::ridge::to_f32(*x)).collect();
        let warm: Vec<usize> = (0..warm.len()).filter(|&i| warm[i]).collect();
        // each modality's centre: the mean of the warm items' unit rows, those that lack it left out
        let means = (xs.iter())
            .map(|x| {
                let absent = crate::nn::zero_rows(x.view());
                let rows: Vec<usize> = warm.iter().copied().filter(|&i| !absent[i]).collect();
                super::ridge::unit_rows(x.select(Axis(0), &rows).view())
                    .mean_axis(Axis(0))
                    .unwrap_or_else(|| Array1::zeros(x.ncols()))
            })
            .collect::<Vec<_>>();
        let views: Vec<ArrayView2<'_, f32>> = xs.iter().map(|x| x.view()).collect();
        let codes = taste_codes(&means, &views);
        let read: Vec<(usize, usize)> = (train.iter())
            .filter(|p| probe.binary_search(&p.1).is_err())
            .copied()
            .collect();
        let mut tastes = crate::data::user_profiles(n_users, &read, &[&codes]);
        crate::nn::normalize_nonzero_rows_in_place(&mut tastes);
        Taste {
            means,
            codes,
            tastes,
            warm,
            probe: probe.to_vec(),
        }
    }

    /// The map `r B^T` (`width x d`) from an item's code to its taste vector, fitted on the final vectors
    /// `users` and `items`, when the term generalises to the probe items ([`Taste::generalises`]); `None`
    /// otherwise, or when no user has both a taste and a nonzero vector.
    ///
    /// # Errors
    /// [`crate::Error::Param`] when the users' normal matrix cannot be factored (non-finite vectors).
    pub fn map<F: Real>(
        &self,
        users: ArrayView2<'_, F>,
        items: ArrayView2<'_, F>,
    ) -> Result<Option<Array2<f64>>> {
        let d = users.ncols();
        let to64 = |a: ArrayView2<'_, F>| a.mapv(|v| v.to_f64().unwrap_or(f64::NAN));
        let fit: Vec<usize> = (0..users.nrows())
            .filter(|&u| {
                let n = users
                    .row(u)
                    .iter()
                    .map(|v| v.to_f64().unwrap_or(0.0).powi(2))
                    .sum::<f64>();
                n > 0.0 && self.tastes.row(u).iter().any(|&t| t != 0.0)
            })
            .collect();
        if fit.is_empty() {
            return Ok(None);
        }
        let mut z = to64(users.select(Axis(0), &fit).view());
        crate::nn::normalize_nonzero_rows_in_place(&mut z);
        let q = self.tastes.select(Axis(0), &fit).mapv(f64::from);
        let mut a = z.t().dot(&z);
        let penalty = PENALTY * a.diag().sum() / d as f64;
        for k in 0..d {
            a[[k, k]] += penalty;
        }
        let b = super::ridge::spd_inverse(a)?.dot(&z.t().dot(&q)); // d x width
        let norm = |i: usize| {
            (items.row(i).iter())
                .map(|v| v.to_f64().unwrap_or(f64::NAN).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let r = self.warm.iter().map(|&i| norm(i)).sum::<f64>() / self.warm.len().max(1) as f64;
        let map = b.reversed_axes() * r;
        let probe = to64(items.select(Axis(0), &self.probe).view());
        let g = super::recgoat::score_metric(users);
        let generalises = Self::generalises(&g, &probe, &self.vectors(&map, &self.probe));
        Ok(generalises.then_some(map))
    }

    /// Whether taste vectors `w` generalise to items of vectors `z` (the probe items, at least 2): the
    /// least-squares multiple `t` of the taste vectors, in the users' score metric `g` (the mean squared
    /// error of the scores `u . z_i` over the users), is positive and its fit `t w_i` explains at least
    /// [`super::ridge::MIN_GAIN`] of the vectors' spread around their mean.
    fn generalises(g: &Array2<f64>, z: &Array2<f64>, w: &Array2<f64>) -> bool {
        if z.nrows() < 2 {
            return false;
        }
        let inner = |a: &Array2<f64>, b: &Array2<f64>| (a.dot(g) * b).sum();
        let (zw, ww) = (inner(z, w), inner(w, w));
        if !(zw > 0.0 && ww > 0.0) {
            return false;
        }
        let mean = z
            .mean_axis(Axis(0))
            .unwrap_or_else(|| Array1::zeros(z.ncols()));
        let centred = z - &mean;
        let spread = inner(&centred, &centred);
        // |z - t w|^2 = |z|^2 - zw^2 / ww at the least-squares t = zw / ww
        let explained = zw * zw / ww;
        explained >= super::ridge::MIN_GAIN * spread
    }

    /// The taste vectors `c_i map` of the items `rows`, one row each.
    pub fn vectors(&self, map: &Array2<f64>, rows: &[usize]) -> Array2<f64> {
        self.codes.select(Axis(0), rows).mapv(f64::from).dot(map)
    }
}
