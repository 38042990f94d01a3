//! The small layers the reference model is assembled from, each with its hand-written backward pass:
//! linear maps, LeakyReLU, dropout, LayerNorm, row L2 normalisation, softmax-weighted fusion of views,
//! embedding gather with row-sparse gradients, the BPR loss, L2 regularisation, and Adam.
//!
//! Conventions: rows are examples. `forward` returns what `backward` needs (a cache or the inputs the caller
//! keeps); every backward returns gradients with named fields or a tuple documented on the function.

use crate::error::{check_finite_array, Error, Result};
use crate::simd::{positive_finite, Real};
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut2, Axis};
use rand::Rng;
use rand_distr::{Distribution, Normal, Uniform};

/// Weight initialisation schemes (fan-in = input width, fan-out = output width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// Uniform in `+-sqrt(6 / (fan_in + fan_out))` (Glorot).
    XavierUniform,
    /// Normal with std `sqrt(2 / (fan_in + fan_out))`.
    XavierNormal,
    /// Uniform in `+-sqrt(6 / fan_in)` (He, for ReLU-like layers).
    KaimingUniform,
    /// Normal with std `sqrt(2 / fan_in)`.
    KaimingNormal,
}

impl Init {
    /// A `fan_in x fan_out` matrix drawn from this scheme.
    pub fn sample<F: Real>(self, fan_in: usize, fan_out: usize, rng: &mut impl Rng) -> Array2<F> {
        let (fi, fo) = (fan_in.max(1) as f64, fan_out.max(1) as f64);
        match self {
            Init::XavierUniform | Init::KaimingUniform => {
                let a = if self == Init::XavierUniform {
                    (6.0 / (fi + fo)).sqrt()
                } else {
                    (6.0 / fi).sqrt()
                };
                let u = Uniform::new_inclusive(-a, a);
                Array2::from_shape_simple_fn((fan_in, fan_out), || F::c(u.sample(rng)))
            }
            Init::XavierNormal | Init::KaimingNormal => {
                let sd = if self == Init::XavierNormal {
                    (2.0 / (fi + fo)).sqrt()
                } else {
                    (2.0 / fi).sqrt()
                };
                let nd = Normal::new(0.0, sd).expect("positive std");
                Array2::from_shape_simple_fn((fan_in, fan_out), || F::c(nd.sample(rng)))
            }
        }
    }
}

fn check_rows<F: Real>(
    op: &'static str,
    what: &str,
    x: &ArrayView2<'_, F>,
    cols: usize,
) -> Result<()> {
    if x.ncols() != cols {
        return Err(Error::shape(op, format!("{what} width"), cols, x.ncols()));
    }
    check_finite_array(op, what, x)
}

/// A linear map `y = x W + b` (W: in x out).
#[derive(Debug, Clone, PartialEq)]
pub struct Linear<F> {
    /// Weights, in x out.
    pub w: Array2<F>,
    /// Bias (out), when the layer has one.
    pub b: Option<Array1<F>>,
}

/// Gradients of [`Linear::backward`].
#[derive(Debug, Clone)]
pub struct LinearGrads<F> {
    /// `dL/dx`.
    pub grad_x: Array2<F>,
    /// `dL/dW`.
    pub grad_w: Array2<F>,
    /// `dL/db`.
    pub grad_b: Option<Array1<F>>,
}

impl<F: Real> Linear<F> {
    /// A layer with weights from `init` and a zero bias when `bias`.
    pub fn new(input: usize, output: usize, bias: bool, init: Init, rng: &mut impl Rng) -> Self {
        Linear {
            w: init.sample(input, output, rng),
            b: bias.then(|| Array1::zeros(output)),
        }
    }

    /// The layer's own parameters: a bias as wide as the output, weights and bias finite.
    fn check(&self, op: &'static str) -> Result<()> {
        if let Some(b) = &self.b {
            if b.len() != self.w.ncols() {
                return Err(Error::shape(
                    op,
                    "b (one per output)",
                    self.w.ncols(),
                    b.len(),
                ));
            }
            check_finite_array(op, "b", &b.view())?;
        }
        check_finite_array(op, "w", &self.w.view())
    }

    /// `x W + b`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `x` is not `n x in` or the bias is not as wide as the output;
    /// [`Error::NonFinite`] for NaN/Inf in `x`, the weights or the bias.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// use recgoat_core::nn::Linear;
    /// let l = Linear { w: array![[1.0, 2.0], [3.0, 4.0]], b: Some(array![0.5, -0.5]) };
    /// assert_eq!(l.forward(array![[1.0, 1.0]].view()).unwrap(), array![[4.5, 5.5]]);
    /// ```
    pub fn forward(&self, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        self.forward_par(x, crate::Par::Seq)
    }

    /// [`Linear::forward`] with the rows of `x` split into `par`'s chunks (one GEMM each, in parallel): the
    /// same checks and, row for row, the same sums (to the last bit through `matrixmultiply`, ndarray's
    /// products without BLAS).
    ///
    /// # Errors
    /// As [`Linear::forward`].
    ///
    /// # Example
    /// ```
    /// use ndarray::Array2;
    /// use recgoat_core::{nn::Linear, Par};
    /// let l = Linear { w: Array2::from_shape_fn((40, 8), |(i, j)| (i as f32 - j as f32).sin()), b: None };
    /// let x = Array2::from_shape_fn((33, 40), |(i, j)| (i * j) as f32 * 0.01);
    /// let (split, whole) = (l.forward_par(x.view(), Par::Rayon(2)).unwrap(), l.forward(x.view()).unwrap());
    /// assert!(split.iter().zip(&whole).all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + b.abs())));
    /// ```
    pub fn forward_par(&self, x: ArrayView2<'_, F>, par: crate::Par) -> Result<Array2<F>> {
        const OP: &str = "Linear::forward";
        check_rows(OP, "x", &x, self.w.nrows())?;
        self.check(OP)?;
        let mut y = crate::backend::par_dot(par, &x, &self.w.view());
        if let Some(b) = &self.b {
            y += b;
        }
        Ok(y)
    }

    /// Gradients for `grad_y = dL/dy`, given the forward input `x`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `x` or `grad_y` do not match the layer or each other.
    pub fn backward(
        &self,
        x: ArrayView2<'_, F>,
        grad_y: ArrayView2<'_, F>,
    ) -> Result<LinearGrads<F>> {
        const OP: &str = "Linear::backward";
        check_rows(OP, "x", &x, self.w.nrows())?;
        check_rows(OP, "grad_y", &grad_y, self.w.ncols())?;
        if x.nrows() != grad_y.nrows() {
            return Err(Error::shape(
                OP,
                "rows of grad_y vs x",
                x.nrows(),
                grad_y.nrows(),
            ));
        }
        Ok(LinearGrads {
            grad_x: grad_y.dot(&self.w.t()),
            grad_w: x.t().dot(&grad_y),
            grad_b: self.b.as_ref().map(|_| grad_y.sum_axis(Axis(0))),
        })
    }
}

/// `LeakyReLU(x) = x` for `x > 0`, `slope x` otherwise.
///
/// # Errors
/// [`Error::Param`] for a non-finite slope; [`Error::NonFinite`] for NaN/Inf in `x`.
pub fn leaky_relu<F: Real>(x: ArrayView2<'_, F>, slope: F) -> Result<Array2<F>> {
    if !slope.is_finite() {
        return Err(Error::param("leaky_relu", "slope", slope, "must be finite"));
    }
    check_finite_array("leaky_relu", "x", &x)?;
    Ok(x.mapv(|v| if v > F::zero() { v } else { v * slope }))
}

/// Backward of [`leaky_relu`] given the forward input.
///
/// # Errors
/// [`Error::Shape`] when `grad_y` and `x` differ in shape.
pub fn leaky_relu_backward<F: Real>(
    x: ArrayView2<'_, F>,
    grad_y: ArrayView2<'_, F>,
    slope: F,
) -> Result<Array2<F>> {
    if x.dim() != grad_y.dim() {
        return Err(Error::shape(
            "leaky_relu_backward",
            "grad_y vs x",
            x.dim(),
            grad_y.dim(),
        ));
    }
    let mut g = grad_y.to_owned();
    g.zip_mut_with(&x, |gv, &xv| {
        if xv <= F::zero() {
            *gv *= slope
        }
    });
    Ok(g)
}

/// Inverted dropout: each entry kept with probability `1 - p` and scaled by `1 / (1 - p)`.
///
/// Returns the output and the scale mask (`None` when nothing was dropped: `p = 0` or `train == false`,
/// the identity). Seeded by `rng`, so a run is reproducible.
///
/// # Errors
/// [`Error::Param`] for `p` outside `[0, 1)`.
pub fn dropout<F: Real>(
    x: ArrayView2<'_, F>,
    p: F,
    train: bool,
    rng: &mut impl Rng,
) -> Result<(Array2<F>, Option<Array2<F>>)> {
    let in_range = p >= F::zero() && p < F::one();
    if !in_range {
        return Err(Error::param("dropout", "p", p, "must be in [0, 1)"));
    }
    if !train || p == F::zero() {
        return Ok((x.to_owned(), None));
    }
    let mask = dropout_mask(x.dim(), p, rng);
    Ok((&x * &mask, Some(mask)))
}

/// The mask [`dropout`] draws for a matrix of `shape` in training mode (`p` in `(0, 1)`, unchecked): zeros
/// with probability `p`, else `1 / (1 - p)`, row-major from `rng`.
pub(crate) fn dropout_mask<F: Real>(shape: (usize, usize), p: F, rng: &mut impl Rng) -> Array2<F> {
    let keep = F::one() / (F::one() - p);
    let pf = p.to_f64().expect("probability converts");
    Array2::from_shape_simple_fn(shape, || {
        if rng.gen::<f64>() < pf {
            F::zero()
        } else {
            keep
        }
    })
}

/// Backward of [`dropout`]: the gradient times the mask (unchanged when there was none).
///
/// # Errors
/// [`Error::Shape`] when the mask's shape is not the gradient's.
pub fn dropout_backward<F: Real>(
    grad_y: ArrayView2<'_, F>,
    mask: Option<&Array2<F>>,
) -> Result<Array2<F>> {
    match mask {
        Some(m) if m.dim() != grad_y.dim() => Err(Error::shape(
            "dropout_backward",
            "mask vs grad_y",
            grad_y.dim(),
            m.dim(),
        )),
        Some(m) => Ok(&grad_y * m),
        None => Ok(grad_y.to_owned()),
    }
}

/// Layer normalisation over each row with affine parameters: `y = gamma * (x - mean) / sqrt(var + eps) + beta`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm<F> {
    /// Scale (width).
    pub gamma: Array1<F>,
    /// Shift (width).
    pub beta: Array1<F>,
    /// Variance floor.
    pub eps: F,
}

/// What [`LayerNorm::backward`] needs.
#[derive(Debug, Clone)]
pub struct LayerNormCache<F> {
    xhat: Array2<F>,
    inv_std: Array1<F>,
}

impl<F: Real> LayerNorm<F> {
    /// `gamma = 1`, `beta = 0`, `eps = 1e-5`.
    pub fn new(width: usize) -> Self {
        LayerNorm {
            gamma: Array1::ones(width),
            beta: Array1::zeros(width),
            eps: F::c(1e-5),
        }
    }

    /// Forward pass and cache.
    ///
    /// # Errors
    /// [`Error::Shape`] for a width other than `gamma`'s (or `beta` of another width), [`Error::NonFinite`] for
    /// NaN/Inf in `x`, `gamma` or `beta`, [`Error::Param`] for width 0 or `eps <= 0`.
    pub fn forward(&self, x: ArrayView2<'_, F>) -> Result<(Array2<F>, LayerNormCache<F>)> {
        const OP: &str = "LayerNorm::forward";
        if self.gamma.is_empty() {
            let why = "a row of width 0 has no mean or variance to normalise by";
            return Err(Error::param(OP, "width", 0, why));
        }
        if self.beta.len() != self.gamma.len() {
            return Err(Error::shape(
                OP,
                "beta (as gamma)",
                self.gamma.len(),
                self.beta.len(),
            ));
        }
        check_finite_array(OP, "gamma", &self.gamma.view())?;
        check_finite_array(OP, "beta", &self.beta.view())?;
        check_rows(OP, "x", &x, self.gamma.len())?;
        if !crate::simd::positive_normal(self.eps) {
            return Err(Error::param(OP, "eps", self.eps, "must be finite and > 0"));
        }
        let d = F::from_usize(x.ncols()).expect("width fits");
        let mut xhat = x.to_owned();
        let mut inv_std = Array1::zeros(x.nrows());
        for (mut row, is) in xhat.rows_mut().into_iter().zip(inv_std.iter_mut()) {
            let mean = row.sum() / d;
            let var = row.iter().map(|&v| (v - mean) * (v - mean)).sum::<F>() / d;
            *is = F::one() / (var + self.eps).sqrt();
            let s = *is;
            row.mapv_inplace(|v| (v - mean) * s);
        }
        let y = &xhat * &self.gamma + &self.beta;
        Ok((y, LayerNormCache { xhat, inv_std }))
    }

    /// Gradients `(dL/dx, dL/dgamma, dL/dbeta)`.
    ///
    /// # Errors
    /// [`Error::Shape`] when `grad_y` does not match the cache.
    pub fn backward(
        &self,
        cache: &LayerNormCache<F>,
        grad_y: ArrayView2<'_, F>,
    ) -> Result<(Array2<F>, Array1<F>, Array1<F>)> {
        if grad_y.dim() != cache.xhat.dim() {
            return Err(Error::shape(
                "LayerNorm::backward",
                "grad_y",
                cache.xhat.dim(),
                grad_y.dim(),
            ));
        }
        let grad_gamma = (&grad_y * &cache.xhat).sum_axis(Axis(0));
        let grad_beta = grad_y.sum_axis(Axis(0));
        let d = F::from_usize(grad_y.ncols()).expect("width fits");
        let gx = &grad_y * &self.gamma;
        let mut grad_x = gx.clone();
        for ((mut out, g), (xh, &is)) in grad_x
            .rows_mut()
            .into_iter()
            .zip(gx.rows())
            .zip(cache.xhat.rows().into_iter().zip(&cache.inv_std))
        {
            let mean_g = g.sum() / d;
            let mean_gx = g.dot(&xh) / d;
            out.zip_mut_with(&xh, |o, &xv| *o = (*o - mean_g - xv * mean_gx) * is);
        }
        Ok((grad_x, grad_gamma, grad_beta))
    }
}

/// Rows divided by their L2 norms; returns the result and the norms.
///
/// # Errors
/// [`Error::Param`] naming the first zero (or non-finite-norm) row; [`Error::NonFinite`] for NaN/Inf.
pub fn l2_normalize<F: Real>(x: ArrayView2<'_, F>) -> Result<(Array2<F>, Array1<F>)> {
    normalize_rows("l2_normalize", "x", x)
}

/// [`l2_normalize`] for any caller: errors name `op` and the input `what`.
pub(crate) fn normalize_rows<F: Real>(
    op: &'static str,
    what: &str,
    x: ArrayView2<'_, F>,
) -> Result<(Array2<F>, Array1<F>)> {
    let norms: Array1<F> = x.rows().into_iter().map(|r| r.dot(&r).sqrt()).collect();
    if let Some(i) = norms.iter().position(|&n| !positive_finite(n)) {
        // a NaN or an infinity makes its row's norm non-finite: it is named as such first
        check_finite_array(op, what, &x)?;
        return Err(Error::Param {
            op,
            name: "rows",
            value: format!("row {i} of {what}"),
            reason: format!("norm {}: cannot be L2-normalised", norms[i]),
        });
    }
    let mut y = x.as_standard_layout().into_owned();
    for (mut row, &n) in y.rows_mut().into_iter().zip(&norms) {
        row.mapv_inplace(|v| v / n);
    }
    Ok((y, norms))
}

/// Backward of [`l2_normalize`] from its output `y` and norms: `dx = (dy - y (y . dy)) / |x|`.
///
/// # Errors
/// [`Error::Shape`] when the shapes disagree.
pub fn l2_normalize_backward<F: Real>(
    y: ArrayView2<'_, F>,
    norms: ArrayView1<'_, F>,
    grad_y: ArrayView2<'_, F>,
) -> Result<Array2<F>> {
    if y.dim() != grad_y.dim() || norms.len() != y.nrows() {
        return Err(Error::shape(
            "l2_normalize_backward",
            "y, norms, grad_y",
            y.dim(),
            (grad_y.dim(), norms.len()),
        ));
    }
    Ok(normalize_rows_backward(y, norms, grad_y.to_owned()))
}

/// Which rows of a feature matrix are all zero: an item that lacks the modality (a missing image, say, which
/// feature files commonly store as a row of zeros). Such a row says nothing about the item, so the content
/// encoders neither train on it nor place the item through it.
pub(crate) fn zero_rows<F: Real>(x: ArrayView2<'_, F>) -> Vec<bool> {
    x.rows()
        .into_iter()
        .map(|r| r.iter().all(|&v| v == F::zero()))
        .collect()
}

/// Sets to zero the rows of `h` that `absent` marks ([`zero_rows`] of the features behind them): what an
/// item without a modality gets from that modality's encoder.
pub(crate) fn clear_rows<F: Real>(h: &mut Array2<F>, absent: &[bool]) {
    for (mut row, _) in (h.rows_mut().into_iter().zip(absent)).filter(|(_, &a)| a) {
        row.fill(F::zero());
    }
}

/// The backward of [`normalize_rows`] in place on `grad` (shapes already checked).
/// Divides every row with a positive norm by it in place; zero rows stay zero (for inputs such as feature
/// matrices where an all-zero row is legitimate, unlike [`normalize_rows`], which refuses it).
pub(crate) fn normalize_nonzero_rows_in_place<F: Real>(x: &mut Array2<F>) {
    for mut row in x.rows_mut() {
        let norm = row.dot(&row).sqrt();
        if norm > F::zero() {
            row.mapv_inplace(|v| v / norm);
        }
    }
}

pub(crate) fn normalize_rows_backward<F: Real>(
    y: ArrayView2<'_, F>,
    norms: ArrayView1<'_, F>,
    mut grad: Array2<F>,
) -> Array2<F> {
    for ((mut gr, yr), &n) in grad.rows_mut().into_iter().zip(y.rows()).zip(norms) {
        let proj = yr.dot(&gr);
        gr.zip_mut_with(&yr, |gv, &yv| *gv = (*gv - yv * proj) / n);
    }
    grad
}

/// Softmax-weighted fusion of k views: `y = sum_m softmax(logits)_m views_m` (RecGOAT's fusion, paper reading).
/// Returns `y` and the weights.
///
/// # Errors
/// [`Error::Empty`] for no views, [`Error::Shape`] for views of different shapes or a logit count other than
/// the view count, [`Error::NonFinite`] for NaN/Inf.
pub fn softmax_fusion<F: Real>(
    views: &[ArrayView2<'_, F>],
    logits: ArrayView1<'_, F>,
) -> Result<(Array2<F>, Array1<F>)> {
    const OP: &str = "softmax_fusion";
    let first = views.first().ok_or(Error::Empty {
        op: OP,
        what: "views".into(),
    })?;
    if logits.len() != views.len() {
        return Err(Error::shape(
            OP,
            "logits (one per view)",
            views.len(),
            logits.len(),
        ));
    }
    check_finite_array(OP, "logits", &logits)?;
    for (m, v) in views.iter().enumerate() {
        if v.dim() != first.dim() {
            return Err(Error::shape(
                OP,
                format!("view {m} vs view 0"),
                first.dim(),
                v.dim(),
            ));
        }
        check_finite_array(OP, "views", v)?;
    }
    let mx = logits.iter().fold(F::neg_infinity(), |a, &b| a.max(b));
    let e = logits.mapv(|l| (l - mx).exp());
    let w = &e / e.sum();
    let mut y = Array2::zeros(first.dim());
    for (v, &wm) in views.iter().zip(&w) {
        y.scaled_add(wm, v);
    }
    Ok((y, w))
}

/// Backward of [`softmax_fusion`]: `(dL/dview_m for every m, dL/dlogits)`.
///
/// # Errors
/// [`Error::Shape`] when `grad_y` or the weights do not match the views.
pub fn softmax_fusion_backward<F: Real>(
    views: &[ArrayView2<'_, F>],
    weights: ArrayView1<'_, F>,
    grad_y: ArrayView2<'_, F>,
) -> Result<(Vec<Array2<F>>, Array1<F>)> {
    const OP: &str = "softmax_fusion_backward";
    if weights.len() != views.len() || views.iter().any(|v| v.dim() != grad_y.dim()) {
        return Err(Error::shape(
            OP,
            "views, weights, grad_y",
            views.len(),
            (weights.len(), grad_y.dim()),
        ));
    }
    let grad_views = weights.iter().map(|&w| &grad_y * w).collect();
    let dw: Array1<F> = views.iter().map(|v| (v * &grad_y).sum()).collect();
    let s = dw.dot(&weights);
    let grad_logits = Array1::from_shape_fn(weights.len(), |m| weights[m] * (dw[m] - s));
    Ok((grad_views, grad_logits))
}

/// Rows `ids` of an embedding table (a gather).
///
/// # Errors
/// [`Error::Param`] naming the first id out of range.
pub fn gather<F: Real>(table: ArrayView2<'_, F>, ids: &[usize]) -> Result<Array2<F>> {
    if let Some((k, &id)) = ids.iter().enumerate().find(|(_, &id)| id >= table.nrows()) {
        return Err(Error::param(
            "gather",
            "ids",
            format!("ids[{k}] = {id}"),
            format!("out of range for {} rows", table.nrows()),
        ));
    }
    // one row copy per id (ndarray's `select` goes through a concatenation, several times slower here)
    let w = table.ncols();
    let mut out = Vec::with_capacity(ids.len() * w);
    match table.as_slice() {
        Some(data) => ids
            .iter()
            .for_each(|&id| out.extend_from_slice(&data[id * w..(id + 1) * w])),
        None => ids
            .iter()
            .for_each(|&id| out.extend(table.row(id).iter().copied())),
    }
    Ok(Array2::from_shape_vec((ids.len(), w), out).expect("ids.len() rows of the table's width"))
}

/// A row-sparse gradient: `values[r]` is the gradient of table row `rows[r]` (rows unique, ascending).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseRows<F> {
    /// Touched rows.
    pub rows: Vec<usize>,
    /// Their gradients (rows.len() x width).
    pub values: Array2<F>,
}

/// Backward of [`gather`]: the gradients of repeated ids summed into one row each.
///
/// # Errors
/// [`Error::Shape`] when `grad` has another row count than `ids`.
pub fn gather_backward<F: Real>(ids: &[usize], grad: ArrayView2<'_, F>) -> Result<SparseRows<F>> {
    if grad.nrows() != ids.len() {
        return Err(Error::shape(
            "gather_backward",
            "grad rows vs ids",
            ids.len(),
            grad.nrows(),
        ));
    }
    let mut rows: Vec<usize> = ids.to_vec();
    rows.sort_unstable();
    rows.dedup();
    let mut values = Array2::zeros((rows.len(), grad.ncols()));
    for (k, &id) in ids.iter().enumerate() {
        let r = rows.binary_search(&id).expect("every id is in rows");
        values.row_mut(r).scaled_add(F::one(), &grad.row(k));
    }
    Ok(SparseRows { rows, values })
}

/// BPR loss `-mean log sigmoid(pos - neg)` and its gradients with respect to both score vectors.
///
/// Computed stably as `mean softplus(neg - pos)`.
///
/// # Errors
/// [`Error::Shape`] for vectors of different lengths, [`Error::Empty`] for none, [`Error::NonFinite`].
pub fn bpr_loss<F: Real>(
    pos: ArrayView1<'_, F>,
    neg: ArrayView1<'_, F>,
) -> Result<(F, Array1<F>, Array1<F>)> {
    const OP: &str = "bpr_loss";
    if pos.len() != neg.len() {
        return Err(Error::shape(OP, "neg vs pos", pos.len(), neg.len()));
    }
    if pos.is_empty() {
        return Err(Error::Empty {
            op: OP,
            what: "scores".into(),
        });
    }
    check_finite_array(OP, "pos", &pos)?;
    check_finite_array(OP, "neg", &neg)?;
    let n = F::from_usize(pos.len()).expect("length fits");
    let mut loss = F::zero();
    let mut gp = Array1::zeros(pos.len());
    for ((g, &p), &q) in gp.iter_mut().zip(&pos).zip(&neg) {
        let z = q - p;
        // softplus(z) = max(z, 0) + log(1 + e^-|z|); d/dz = sigmoid(z)
        loss += z.max(F::zero()) + (-z.abs()).exp().ln_1p();
        let sig = if z >= F::zero() {
            F::one() / (F::one() + (-z).exp())
        } else {
            z.exp() / (F::one() + z.exp())
        };
        *g = -sig / n;
    }
    let gn = gp.mapv(|v| -v);
    Ok((loss / n, gp, gn))
}

/// `lambda * mean over rows of |row|^2`, summed over the given blocks (RecGOAT's regulariser on the ego
/// embeddings of a batch: users, positives, negatives), and the gradient of each block.
///
/// # Errors
/// [`Error::Param`] for a negative or non-finite `lambda`; [`Error::NonFinite`] for NaN/Inf in a block.
pub fn l2_regularization<F: Real>(
    blocks: &[ArrayView2<'_, F>],
    lambda: F,
) -> Result<(F, Vec<Array2<F>>)> {
    const OP: &str = "l2_regularization";
    if !(lambda >= F::zero() && lambda.is_finite()) {
        return Err(Error::param(
            OP,
            "lambda",
            lambda,
            "must be finite and >= 0",
        ));
    }
    for (k, b) in blocks.iter().enumerate() {
        check_finite_array(OP, &format!("block {k}"), b)?;
    }
    let mut value = F::zero();
    let grads = blocks
        .iter()
        .map(|b| {
            let n = F::from_usize(b.nrows().max(1)).expect("rows fit");
            value += lambda * b.iter().map(|&v| v * v).sum::<F>() / n;
            b.mapv(|v| F::c(2.0) * lambda * v / n)
        })
        .collect();
    Ok((value, grads))
}

/// Adam with bias correction and optional L2 weight decay added to the gradient (`grad + wd * param`, as
/// `torch.optim.Adam` does; not the decoupled AdamW form).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adam<F> {
    /// Learning rate.
    pub lr: F,
    /// First-moment decay.
    pub beta1: F,
    /// Second-moment decay.
    pub beta2: F,
    /// Denominator floor.
    pub eps: F,
    /// L2 weight decay added to the gradient.
    pub weight_decay: F,
}

/// Moment estimates of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamState<F> {
    m: Array2<F>,
    v: Array2<F>,
    /// Steps taken (dense steps, or for sparse steps per row: see [`Adam::step_rows`]).
    pub t: u64,
}

impl<F: Real> AdamState<F> {
    /// Zero moments for a parameter of this shape.
    pub fn new(shape: (usize, usize)) -> Self {
        AdamState {
            m: Array2::zeros(shape),
            v: Array2::zeros(shape),
            t: 0,
        }
    }
    /// Moments restored from a checkpoint (shapes must agree; `t` steps taken).
    ///
    /// # Errors
    /// [`Error::Shape`] when `m` and `v` differ in shape; [`Error::NonFinite`] for NaN/Inf moments;
    /// [`Error::Param`] for a negative second moment.
    pub fn from_moments(m: Array2<F>, v: Array2<F>, t: u64) -> Result<Self> {
        const OP: &str = "AdamState::from_moments";
        if m.dim() != v.dim() {
            return Err(Error::shape(OP, "v vs m", m.dim(), v.dim()));
        }
        check_finite_array(OP, "m", &m.view())?;
        check_finite_array(OP, "v", &v.view())?;
        if let Some(x) = v.iter().find(|&&x| x < F::zero()) {
            return Err(Error::param(OP, "v", x, "second moments must be >= 0"));
        }
        Ok(AdamState { m, v, t })
    }
    /// First moment.
    pub fn m(&self) -> &Array2<F> {
        &self.m
    }
    /// Second moment.
    pub fn v(&self) -> &Array2<F> {
        &self.v
    }
}

impl<F: Real> Adam<F> {
    /// `lr` with the usual defaults (0.9, 0.999, 1e-8, no weight decay).
    pub fn new(lr: F) -> Self {
        Adam {
            lr,
            beta1: F::c(0.9),
            beta2: F::c(0.999),
            eps: F::c(1e-8),
            weight_decay: F::zero(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        const OP: &str = "Adam";
        if !positive_finite(self.lr) {
            return Err(Error::param(OP, "lr", self.lr, "must be finite and > 0"));
        }
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            let ok = b >= F::zero() && b < F::one();
            if !ok {
                return Err(Error::param(OP, name, b, "must be in [0, 1)"));
            }
        }
        let decay_ok = self.weight_decay >= F::zero() && self.weight_decay.is_finite();
        if !positive_finite(self.eps) || !decay_ok {
            return Err(Error::param(
                OP,
                "eps / weight_decay",
                format!("{} / {}", self.eps, self.weight_decay),
                "eps > 0, weight_decay >= 0",
            ));
        }
        Ok(())
    }

    /// One bias-corrected step on a dense parameter.
    ///
    /// # Errors
    /// [`Error::Shape`] when parameter, gradient and state differ in shape; [`Error::NonFinite`] for a NaN/Inf
    /// gradient or parameter (it would stay NaN); [`Error::Param`] for a bad hyper-parameter.
    pub fn step(
        &self,
        mut param: ArrayViewMut2<'_, F>,
        grad: ArrayView2<'_, F>,
        state: &mut AdamState<F>,
    ) -> Result<()> {
        const OP: &str = "Adam::step";
        self.validate()?;
        if param.dim() != grad.dim() || state.m.dim() != grad.dim() {
            return Err(Error::shape(
                OP,
                "param, grad, state",
                param.dim(),
                (grad.dim(), state.m.dim()),
            ));
        }
        check_finite_array(OP, "grad", &grad)?;
        check_finite_array(OP, "param", &param.view())?;
        state.t += 1;
        let (c1, c2) = self.corrections(state.t);
        let slices = (
            param.as_slice_mut(),
            grad.as_slice(),
            state.m.as_slice_mut(),
            state.v.as_slice_mut(),
        );
        if let (Some(p), Some(g), Some(m), Some(v)) = slices {
            // contiguous: one plain loop over slices, which vectorises (the same operations per element)
            adam_slices_dispatch(self, p, g, m, v, c1, c2);
            return Ok(());
        }
        for (((p, &g), m), v) in param
            .iter_mut()
            .zip(grad.iter())
            .zip(state.m.iter_mut())
            .zip(state.v.iter_mut())
        {
            self.update(p, g, m, v, c1, c2);
        }
        Ok(())
    }

    /// One step on the given rows of a table only (a row-sparse gradient from [`gather_backward`]): the
    /// untouched rows keep their parameters and moments (lazy Adam); the bias correction uses the shared step
    /// count `state.t`, incremented once per call.
    ///
    /// # Errors
    /// As [`Adam::step`], plus [`Error::Param`] for a row out of range.
    pub fn step_rows(
        &self,
        mut param: ArrayViewMut2<'_, F>,
        grad: &SparseRows<F>,
        state: &mut AdamState<F>,
    ) -> Result<()> {
        const OP: &str = "Adam::step_rows";
        self.validate()?;
        if param.dim() != state.m.dim()
            || grad.values.ncols() != param.ncols()
            || grad.values.nrows() != grad.rows.len()
        {
            return Err(Error::shape(
                OP,
                "param, state, sparse grad",
                param.dim(),
                (state.m.dim(), grad.values.dim()),
            ));
        }
        if let Some(&r) = grad.rows.iter().find(|&&r| r >= param.nrows()) {
            return Err(Error::param(
                OP,
                "grad.rows",
                r,
                format!("out of range for {} rows", param.nrows()),
            ));
        }
        check_finite_array(OP, "grad", &grad.values.view())?;
        for &r in &grad.rows {
            check_finite_array(OP, "param (a row the gradient touches)", &param.row(r))?;
        }
        state.t += 1;
        let (c1, c2) = self.corrections(state.t);
        for (k, &r) in grad.rows.iter().enumerate() {
            let mut prow = param.row_mut(r);
            let mut mrow = state.m.row_mut(r);
            let mut vrow = state.v.row_mut(r);
            for (((p, &g), m), v) in prow
                .iter_mut()
                .zip(grad.values.row(k))
                .zip(mrow.iter_mut())
                .zip(vrow.iter_mut())
            {
                self.update(p, g, m, v, c1, c2);
            }
        }
        Ok(())
    }

    pub(crate) fn corrections(&self, t: u64) -> (F, F) {
        let t = i32::try_from(t).unwrap_or(i32::MAX);
        (F::one() - self.beta1.powi(t), F::one() - self.beta2.powi(t))
    }

    #[inline(always)]
    fn update(&self, p: &mut F, g: F, m: &mut F, v: &mut F, c1: F, c2: F) {
        let g = g + self.weight_decay * *p;
        *m = self.beta1 * *m + (F::one() - self.beta1) * g;
        *v = self.beta2 * *v + (F::one() - self.beta2) * g * g;
        let mhat = *m / c1;
        let vhat = *v / c2;
        *p -= self.lr * mhat / (vhat.sqrt() + self.eps);
    }
}

/// [`Adam::step`] over contiguous slices of equal length: the element update of [`Adam::update`] in a plain
/// loop, compiled for AVX2 where the CPU has it (division and square root stay exact, so the result is the
/// element-wise one bit for bit).
#[inline(always)]
fn adam_slices<F: Real>(
    adam: &Adam<F>,
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
    c1: F,
    c2: F,
) {
    let n = p.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    for i in 0..n {
        adam.update(&mut p[i], g[i], &mut m[i], &mut v[i], c1, c2);
    }
}

crate::simd::avx2_dispatch!(adam_slices_dispatch, adam_slices_avx2, adam_slices, <F>, (adam: &Adam<F>, p: &mut [F], g: &[F], m: &mut [F], v: &mut [F], c1: F, c2: F));
