//! Serving a trained model: [`Recommender`] holds the final user and item vectors (a score is their dot
//! product) and each user's training items, saved and loaded on its own, without the training data. A
//! recommender made from a trainer ([`Recommender::from_trainer`]) also keeps what serving new data needs
//! without retraining: the content encoder that gives a new item its vector from its feature rows
//! ([`Recommender::add_items`], [`ContentEncoder`]) and the LightGCN tables that give a user a vector from
//! an item history ([`Recommender::recommend_history`]).
//!
//! # Example
//! ```
//! use recgoat_core::recommend::Recommender;
//! use ndarray::array;
//! let users = array![[1.0f32, 0.0], [0.0, 1.0]];
//! let items = array![[0.9f32, 0.1], [0.2, 0.8], [0.5, 0.5]];
//! let rec = Recommender::new(users, items, vec![vec![0], vec![]]).unwrap();
//! // user 0 has seen item 0: its best unseen item is 2
//! let top = rec.recommend(&[0, 1], 2).unwrap();
//! assert_eq!(top[0].iter().map(|r| r.0).collect::<Vec<_>>(), vec![2, 1]);
//! assert_eq!(top[1][0].0, 1);
//! assert!((rec.score(&[(1, 2)]).unwrap()[0] - 0.5).abs() < 1e-6);
//! ```

use crate::backend::{map_chunks, Par};
use crate::data::IdMap;
use crate::error::{check_finite_array, Error, Result};
use crate::io::{content_checksum, le_bytes, write_atomic};
use ndarray::{Array1, Array2, ArrayView2};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Format tag of a saved [`Recommender`]. Version 2 adds the content encoder and the fold-in tables,
/// version 3 the encoder's neighbours ([`Neighbours`]), version 4 its taste term
/// ([`ContentEncoder::with_taste`]), version 5 the new users' ego map ([`Recommender::fold_in`]); a version
/// 2, 3 or 4 file still loads (its encoder has no neighbours, or no taste term; a new user is folded in
/// without an ego term), and a version 1 file through [`Recommender::load_v1`].
pub const FORMAT: &str = "recgoat-core/recommender-v5";
const FORMAT_V4: &str = "recgoat-core/recommender-v4";
const FORMAT_V3: &str = "recgoat-core/recommender-v3";
const FORMAT_V2: &str = "recgoat-core/recommender-v2";
const FORMAT_V1: &str = "recgoat-core/recommender-v1";

/// Users scored together: a block of `BLOCK x items` scores at a time, never a users x items matrix.
const BLOCK: usize = 64;

/// The part of a modality's content encoder that leans on known items: a new item's `k` nearest reference
/// items by the cosine of their feature rows, their vectors averaged with the softmax weights of the
/// cosines at `temperature`, blended with the encoder's projection at `share` (the projection keeps
/// `1 - share`).
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::recommend::Neighbours;
/// // two reference items; the nearest one alone (k = 1) gives the vector
/// let n = Neighbours::new(array![[1.0f32, 0.0], [0.0, 1.0]], array![[1.0f32, 2.0], [3.0, 4.0]], 1, 0.1, 1.0)?;
/// assert_eq!(n.predict(array![[0.2f32, 0.9]].view()), array![[3.0f32, 4.0]]);
/// # Ok::<(), recgoat_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Neighbours {
    /// The reference items' feature rows, unit length.
    features: Array2<f32>,
    vectors: Array2<f32>,
    k: usize,
    temperature: f32,
    share: f32,
}

impl Neighbours {
    /// Neighbours among reference items with feature rows `features` (scaled to unit length here) and
    /// vectors `vectors`, one row each.
    ///
    /// # Errors
    /// [`Error::Shape`] for matrices with different row counts or no row; [`Error::Param`] for `k` 0 or
    /// above the reference items, a temperature that is not finite and > 0, or a share outside `[0, 1]`;
    /// [`Error::NonFinite`] for NaN/Inf values.
    pub fn new(
        mut features: Array2<f32>,
        vectors: Array2<f32>,
        k: usize,
        temperature: f32,
        share: f32,
    ) -> Result<Self> {
        const OP: &str = "Neighbours::new";
        let n = features.nrows();
        if n == 0 || vectors.nrows() != n {
            let what = "reference items (feature rows, vectors)";
            return Err(Error::shape(
                OP,
                what,
                (n.max(1), n.max(1)),
                (n, vectors.nrows()),
            ));
        }
        if k == 0 || k > n {
            return Err(Error::param(OP, "k", k, format!("must be in 1..={n}")));
        }
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::param(
                OP,
                "temperature",
                temperature,
                "must be finite and > 0",
            ));
        }
        if !(0.0..=1.0).contains(&share) {
            return Err(Error::param(OP, "share", share, "must be in [0, 1]"));
        }
        check_finite_array(OP, "features", &features.view())?;
        check_finite_array(OP, "vectors", &vectors.view())?;
        if !features.is_standard_layout() {
            features = features.as_standard_layout().into_owned();
        }
        // rows already of unit length (a saved encoder's) are kept to the bit
        for mut r in features.rows_mut() {
            let norm = r.dot(&r).sqrt();
            if norm > 0.0 && (norm - 1.0).abs() > 1e-6 {
                r.mapv_inplace(|v| v / norm);
            }
        }
        Ok(Neighbours {
            features,
            vectors,
            k,
            temperature,
            share,
        })
    }

    /// The share of the blend the neighbours take.
    pub fn share(&self) -> f32 {
        self.share
    }

    /// The neighbours' vector of each row of `x` (feature rows of any length): the softmax-weighted mean
    /// of its `k` nearest reference items' vectors.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Array2<f32> {
        let mut unit = x.to_owned();
        crate::nn::normalize_nonzero_rows_in_place(&mut unit);
        let mut out = Array2::<f32>::zeros((x.nrows(), self.vectors.ncols()));
        let refs = self.features.as_slice().expect("standard layout");
        let mut c = vec![0.0f32; self.features.nrows()];
        for (mut o, u) in out.rows_mut().into_iter().zip(unit.rows()) {
            // one matrix-vector product per row: a product with a few rows would pack every reference row
            let u = u.to_vec();
            for (c, r) in c.iter_mut().zip(refs.chunks_exact(u.len().max(1))) {
                *c = crate::simd::dot_f32(r, &u);
            }
            let top = crate::model::top_cosines(c.iter().copied().enumerate(), self.k);
            let weights =
                crate::model::neighbour_weights(&top, None, self.k, self.temperature.into());
            for (j, a) in weights {
                o.scaled_add(a as f32, &self.vectors.row(j));
            }
        }
        out
    }
}

/// Gives a new item its vector from its feature rows, in the space of the model's vectors: per modality
/// `m` a projection `x W_m + b_m` of the feature row (scaled to unit length first when the model
/// normalised its features), blended with the modality's [`Neighbours`] where it has them, combined as
/// `sum_m t_m (x_m W_m + b_m)` with the trusts `t_m` (times the cold items' scale) the model fitted on its
/// probe items. This is how the model scored its own items without training interactions, so new items
/// land on the scale of the catalogue's.
///
/// # Example
/// ```
/// use ndarray::array;
/// use recgoat_core::recommend::ContentEncoder;
/// // one 2-wide modality projected to 2 dimensions, trust 0.5
/// let enc = ContentEncoder::new(vec![("text".into(), 2)], false, vec![array![[1.0f32, 0.0], [0.0, 2.0]]],
///                               vec![array![0.0f32, 1.0]], vec![0.5])?;
/// let v = enc.encode(&[("text", array![[1.0f32, 1.0]].view())])?;
/// assert_eq!(v, array![[0.5f32, 1.5]]);
/// assert!(enc.encode(&[("audio", array![[1.0f32, 1.0]].view())]).is_err());
/// # Ok::<(), recgoat_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ContentEncoder {
    modalities: Vec<(String, usize)>,
    normalize: bool,
    weights: Vec<Array2<f32>>,
    biases: Vec<Array1<f32>>,
    trust: Vec<f32>,
    neighbours: Vec<Option<Neighbours>>,
    taste: Option<TasteMap>,
}

/// The taste term of a [`ContentEncoder`]: per modality the centre of its unit feature rows, and the map
/// (`width x d`, `width` the modalities' widths summed) from an item's code to its taste vector, the
/// share and scale the trainer chose already in it.
#[derive(Debug, Clone, PartialEq)]
struct TasteMap {
    means: Vec<Array1<f32>>,
    map: Array2<f32>,
}

impl ContentEncoder {
    /// An encoder of `modalities` (name and feature width, in order), rows scaled to unit length first with
    /// `normalize`, projections `weights[m]` (`width x d`) and `biases[m]` (`d`), and trusts `trust[m]`.
    ///
    /// # Errors
    /// [`Error::Shape`] for lists of different lengths or shapes that do not fit; [`Error::Param`] for no
    /// modality, a repeated name or a trust that is negative; [`Error::NonFinite`] for NaN/Inf values.
    pub fn new(
        modalities: Vec<(String, usize)>,
        normalize: bool,
        weights: Vec<Array2<f32>>,
        biases: Vec<Array1<f32>>,
        trust: Vec<f32>,
    ) -> Result<Self> {
        const OP: &str = "ContentEncoder::new";
        let m = modalities.len();
        if m == 0 {
            return Err(Error::param(OP, "modalities", "[]", "give at least one"));
        }
        for (what, n) in [
            ("weights", weights.len()),
            ("biases", biases.len()),
            ("trust", trust.len()),
        ] {
            if n != m {
                return Err(Error::shape(OP, format!("{what} (one per modality)"), m, n));
            }
        }
        let d = weights[0].ncols();
        for (k, ((name, width), (w, b))) in modalities
            .iter()
            .zip(weights.iter().zip(&biases))
            .enumerate()
        {
            if modalities[..k].iter().any(|(n, _)| n == name) {
                return Err(Error::param(OP, "modalities", name, "named twice"));
            }
            if w.dim() != (*width, d) || b.len() != d {
                return Err(Error::shape(
                    OP,
                    format!("modality `{name}` projection and bias"),
                    ((*width, d), d),
                    (w.dim(), b.len()),
                ));
            }
            check_finite_array(OP, "weights", &w.view())?;
            check_finite_array(OP, "biases", &b.view().insert_axis(ndarray::Axis(0)))?;
        }
        if let Some(t) = trust.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
            return Err(Error::param(OP, "trust", t, "must be finite and >= 0"));
        }
        Ok(ContentEncoder {
            neighbours: vec![None; modalities.len()],
            taste: None,
            modalities,
            normalize,
            weights,
            biases,
            trust,
        })
    }

    /// The same encoder with the modality at position `m` blended with `neighbours`.
    ///
    /// # Errors
    /// [`Error::Param`] for a position past the modalities; [`Error::Shape`] for neighbours whose feature
    /// rows or vectors are not as wide as the modality's features and the encoder's vectors.
    pub fn with_neighbours(mut self, m: usize, neighbours: Neighbours) -> Result<Self> {
        const OP: &str = "ContentEncoder::with_neighbours";
        let Some((name, width)) = self.modalities.get(m) else {
            let why = format!("the encoder has {} modalities", self.modalities.len());
            return Err(Error::param(OP, "m", m, why));
        };
        let (fw, vw) = (neighbours.features.ncols(), neighbours.vectors.ncols());
        if (fw, vw) != (*width, self.dim()) {
            let what = format!("modality `{name}` neighbours (feature width, vector width)");
            return Err(Error::shape(OP, what, (*width, self.dim()), (fw, vw)));
        }
        self.neighbours[m] = Some(neighbours);
        Ok(self)
    }

    /// The same encoder with a taste term: an item's code (per modality its unit feature rows minus
    /// `means[m]`, weighted `1 / sqrt(M)`, concatenated, scaled to unit length) times `map` (`width x d`,
    /// `width` the modalities' widths summed) is added to its vector (`docs/COLD-START.md`, "The taste
    /// term").
    ///
    /// # Errors
    /// [`Error::Shape`] for a mean per modality missing or of another width, or a map of another shape;
    /// [`Error::NonFinite`] for NaN/Inf values.
    ///
    /// # Example
    /// ```
    /// use ndarray::array;
    /// use recgoat_core::recommend::ContentEncoder;
    /// let enc = ContentEncoder::new(vec![("text".into(), 2)], true, vec![array![[0.0f32], [0.0]]],
    ///                               vec![array![0.0f32]], vec![1.0])?
    ///     .with_taste(vec![array![0.0f32, 0.0]], array![[2.0f32], [-2.0]])?;
    /// // the code of [3, 0] is [1, 0]: its taste vector is 2
    /// assert_eq!(enc.encode(&[("text", array![[3.0f32, 0.0]].view())])?, array![[2.0f32]]);
    /// # Ok::<(), recgoat_core::Error>(())
    /// ```
    pub fn with_taste(mut self, means: Vec<Array1<f32>>, map: Array2<f32>) -> Result<Self> {
        const OP: &str = "ContentEncoder::with_taste";
        if means.len() != self.modalities.len() {
            return Err(Error::shape(
                OP,
                "taste means (one per modality)",
                self.modalities.len(),
                means.len(),
            ));
        }
        for ((name, width), mean) in self.modalities.iter().zip(&means) {
            if mean.len() != *width {
                let what = format!("modality `{name}` taste mean");
                return Err(Error::shape(OP, what, *width, mean.len()));
            }
            check_finite_array(
                OP,
                "taste means",
                &mean.view().insert_axis(ndarray::Axis(0)),
            )?;
        }
        let width: usize = self.modalities.iter().map(|(_, w)| w).sum();
        if map.dim() != (width, self.dim()) {
            return Err(Error::shape(
                OP,
                "taste map",
                (width, self.dim()),
                map.dim(),
            ));
        }
        check_finite_array(OP, "taste map", &map.view())?;
        self.taste = Some(TasteMap { means, map });
        Ok(self)
    }

    /// Whether the encoder has a taste term ([`ContentEncoder::with_taste`]).
    pub fn has_taste(&self) -> bool {
        self.taste.is_some()
    }

    /// Per modality its neighbours, where it has them.
    pub fn neighbours(&self) -> &[Option<Neighbours>] {
        &self.neighbours
    }

    /// The modalities it encodes, with their feature widths, in order.
    pub fn modalities(&self) -> &[(String, usize)] {
        &self.modalities
    }

    /// The trusts of the modalities (times the cold items' scale), in order.
    pub fn trust(&self) -> &[f32] {
        &self.trust
    }

    /// The width of the vectors it gives.
    pub fn dim(&self) -> usize {
        self.weights[0].ncols()
    }

    /// The vectors of `n` items from their feature rows, one matrix per modality by name (any order), each
    /// `n x width`. A row of zeros stands for an item without that modality (a missing image, say): the
    /// modality adds nothing to its vector, as in training; an item with zeros in every modality gets the
    /// vector 0.
    ///
    /// # Errors
    /// [`Error::Param`] naming a modality the encoder lacks, one given twice or one missing;
    /// [`Error::Shape`] for a matrix of another width or row count; [`Error::NonFinite`] for NaN/Inf
    /// features; [`Error::Empty`] for no rows.
    pub fn encode(&self, features: &[(&str, ArrayView2<'_, f32>)]) -> Result<Array2<f32>> {
        const OP: &str = "ContentEncoder::encode";
        let have: Vec<&str> = self.modalities.iter().map(|(n, _)| n.as_str()).collect();
        for (k, (name, _)) in features.iter().enumerate() {
            if !have.contains(name) {
                let why = format!("the model was trained with modalities {have:?}");
                return Err(Error::param(OP, "features", name, why));
            }
            if features[..k].iter().any(|(n, _)| n == name) {
                return Err(Error::param(OP, "features", name, "given twice"));
            }
        }
        let n = features.first().map_or(0, |(_, x)| x.nrows());
        if n == 0 {
            return Err(Error::Empty {
                op: OP,
                what: "feature rows".into(),
            });
        }
        let mut out = Array2::<f32>::zeros((n, self.dim()));
        let mut ordered = Vec::with_capacity(self.modalities.len());
        for (k, (name, width)) in self.modalities.iter().enumerate() {
            let x =
                (features.iter().find(|(f, _)| f == name).map(|(_, x)| x)).ok_or_else(|| {
                    Error::param(OP, "features", name, "missing: every modality is needed")
                })?;
            ordered.push(x.view());
            if x.dim() != (n, *width) {
                return Err(Error::shape(
                    OP,
                    format!("features `{name}` (rows, width)"),
                    (n, *width),
                    x.dim(),
                ));
            }
            check_finite_array(OP, name, x)?;
            if self.trust[k] == 0.0 {
                // a modality the model does not trust adds nothing
                continue;
            }
            let mut x = x.to_owned();
            if self.normalize {
                crate::nn::normalize_nonzero_rows_in_place(&mut x);
            }
            let mut h = x.dot(&self.weights[k]);
            h += &self.biases[k];
            if let Some(n) = &self.neighbours[k] {
                h *= 1.0 - n.share;
                h.scaled_add(n.share, &n.predict(x.view()));
            }
            crate::nn::clear_rows(&mut h, &crate::nn::zero_rows(x.view()));
            out.scaled_add(self.trust[k], &h);
        }
        if let Some(t) = &self.taste {
            out += &crate::model::taste_codes(&t.means, &ordered).dot(&t.map);
        }
        Ok(out)
    }
}

/// What folding a user in from an item history needs ([`crate::model::RecGoat::fold_in_tables`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FoldIn {
    /// Per item `f_i`.
    items: Array2<f32>,
    /// Per user its ego term.
    users: Array2<f32>,
    /// LightGCN's layers `L` (items added later get `f_i = L z_i / (L + 1)`).
    layers: usize,
    /// A new user's ego term predicted from the rest of its vector: `x M` for `x = sum_i f_i / sqrt(|H|)`
    /// (`d x d`, [`ego_map`]); `None` when it predicts nothing on held-out users, or the file predates it.
    ego: Option<Array2<f32>>,
}

impl FoldIn {
    /// The part of a user's vector that LightGCN propagates from its distinct items `h` (summed in their
    /// order): `x = sum_{i in h} f_i / sqrt(|h|)`.
    fn propagated(&self, h: &[u32]) -> Array1<f32> {
        let mut x = Array1::<f32>::zeros(self.items.ncols());
        let w = 1.0 / (h.len() as f32).sqrt();
        for &i in h {
            x.scaled_add(w, &self.items.row(i as usize));
        }
        x
    }
}

/// The fold-in tables of a trainer's current parameters with their ego map, and each user's training items
/// (sorted, distinct) that the map was fitted on; `None` for a model with a user-user branch. `items` are
/// the trainer's final item vectors (the map's score-space weights).
pub(crate) fn trainer_fold(
    t: &crate::model::Trainer<'_>,
    items: &Array2<f32>,
) -> Result<Option<(FoldIn, Vec<Vec<u32>>)>> {
    let model = t.model();
    let cfg = model.config();
    if cfg.user_user {
        return Ok(None);
    }
    let mut seen = vec![Vec::new(); t.data.n_users];
    for &(u, i) in &t.data.train {
        seen[u].push(i as u32);
    }
    for s in &mut seen {
        s.sort_unstable();
        s.dedup();
    }
    let (item_rows, users) = model.fold_in_tables(t.params())?;
    let mut fold = FoldIn {
        items: item_rows,
        users,
        layers: cfg.lightgcn_layers,
        ego: None,
    };
    fold.ego = ego_map(&fold, &seen, items)?;
    Ok(Some((fold, seen)))
}

/// How far each trained user's ego term moves towards the one its training items predict, `x_u M - e_u`
/// per user (0 for a user without training items); `None` without an ego map. A trained user's vector
/// plus `b` times this is `x_u + (1 - b) e_u + b x_u M`: at `b = 1` the vector a new user with the same
/// items gets.
pub(crate) fn ego_shift(fold: &FoldIn, seen: &[Vec<u32>]) -> Option<Array2<f32>> {
    let m = fold.ego.as_ref()?;
    let mut shift = Array2::<f32>::zeros(fold.users.dim());
    for (u, h) in seen.iter().enumerate().filter(|(_, h)| !h.is_empty()) {
        let predicted = fold.propagated(h).dot(m);
        shift.row_mut(u).assign(&(predicted - fold.users.row(u)));
    }
    Some(shift)
}

/// Moves each trained user's ego term `share` of the way to the one its items predict ([`ego_shift`]), in
/// the users' vectors `users` and in the fold-in tables alike; nothing without an ego map.
pub(crate) fn move_egos(fold: &mut FoldIn, seen: &[Vec<u32>], share: f32, users: &mut Array2<f32>) {
    if let Some(shift) = ego_shift(fold, seen) {
        users.scaled_add(share, &shift);
        fold.users.scaled_add(share, &shift);
    }
}

/// The ridge penalties [`ego_map`] chooses from, in multiples of the mean diagonal of `X^T X`.
const EGO_PENALTIES: [f64; 4] = [1e-3, 1e-2, 1e-1, 1.0];

/// The map `M` (`d x d`) that predicts a user's ego term `e_u / (L + 1)` from the part of its vector that
/// LightGCN propagates from its items, `x_u` ([`FoldIn::propagated`] of its `seen` items): the ridge
/// regression of the trained users' ego terms (`fold.users`) on their `x_u`, computed as a new user's is. A
/// new user has no ego term of its own; `x + x M` is its vector as a trained user with the same items would
/// have it.
///
/// The penalty is chosen on every tenth user (the others fit), by the squared error of the predicted
/// scores, `(y - x M)^T G (y - x M)` with `G` the items' second moment (`item_vectors`); the map is then
/// fitted on every user. `None` when fewer than 20 users have seen items, or when no penalty predicts the
/// held-out users' ego terms better than 0 does (then a new user is folded in without one).
fn ego_map(
    fold: &FoldIn,
    seen: &[Vec<u32>],
    item_vectors: &Array2<f32>,
) -> Result<Option<Array2<f32>>> {
    let d = fold.items.ncols();
    let known: Vec<usize> = (0..fold.users.nrows())
        .filter(|&u| !seen[u].is_empty())
        .collect();
    if known.len() < 20 {
        return Ok(None);
    }
    let mut x = Array2::<f64>::zeros((known.len(), d));
    let mut y = Array2::<f64>::zeros((known.len(), d));
    for (r, &u) in known.iter().enumerate() {
        x.row_mut(r)
            .assign(&fold.propagated(&seen[u]).mapv(f64::from));
        y.row_mut(r).assign(&fold.users.row(u).mapv(f64::from));
    }
    let g = item_vectors.mapv(f64::from);
    let g = g.t().dot(&g) / item_vectors.nrows().max(1) as f64;
    let solve = |rows: &[usize], penalty: f64| -> Result<Array2<f64>> {
        let (xs, ys) = (
            x.select(ndarray::Axis(0), rows),
            y.select(ndarray::Axis(0), rows),
        );
        let mut a = xs.t().dot(&xs);
        let scale = (0..d).map(|k| a[[k, k]]).sum::<f64>() / d as f64;
        for k in 0..d {
            a[[k, k]] += penalty * scale.max(f64::MIN_POSITIVE);
        }
        Ok(crate::model::spd_inverse(a)?.dot(&xs.t().dot(&ys)))
    };
    let (fit, probe): (Vec<usize>, Vec<usize>) = (0..known.len()).partition(|r| r % 10 != 9);
    let (xp, yp) = (
        x.select(ndarray::Axis(0), &probe),
        y.select(ndarray::Axis(0), &probe),
    );
    let error = |e: &Array2<f64>| (e.dot(&g) * e).sum();
    let mut best = (error(&yp), None);
    for penalty in EGO_PENALTIES {
        let Ok(m) = solve(&fit, penalty) else {
            continue;
        };
        let e = error(&(&yp - &xp.dot(&m)));
        if e < best.0 {
            best = (e, Some(penalty));
        }
    }
    let Some(penalty) = best.1 else {
        return Ok(None);
    };
    let all: Vec<usize> = (0..known.len()).collect();
    Ok(Some(solve(&all, penalty)?.mapv(|v| v as f32)))
}

/// Top-k items for users, scores for pairs and item neighbours, from final user and item vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommender {
    users: Array2<f32>,
    items: Array2<f32>,
    /// Each user's items to leave out of recommendations (the training items), sorted.
    seen: Vec<Vec<u32>>,
    /// The original user and item ids, when the data had its own.
    ids: Option<IdMap>,
    par: Par,
    encoder: Option<ContentEncoder>,
    fold: Option<FoldIn>,
}

fn bad(what: &str, reason: impl Into<String>) -> Error {
    Error::param("Recommender", "input", what.to_string(), reason)
}

impl Recommender {
    /// A recommender from final user vectors (`U x d`), item vectors (`I x d`) and each user's seen items
    /// (one list per user, or none at all), parallel over users with rayon. It has no content encoder and
    /// no fold-in tables ([`Recommender::from_trainer`] adds them).
    ///
    /// # Errors
    /// [`Error::Shape`] for widths that differ or a seen list per user that does not match; [`Error::Param`]
    /// for a seen item out of range; [`Error::NonFinite`] for NaN/Inf vectors.
    pub fn new(users: Array2<f32>, items: Array2<f32>, seen: Vec<Vec<usize>>) -> Result<Self> {
        const OP: &str = "Recommender::new";
        if users.ncols() != items.ncols() {
            return Err(Error::shape(
                OP,
                "item width vs user width",
                users.ncols(),
                items.ncols(),
            ));
        }
        check_finite_array(OP, "users", &users.view())?;
        check_finite_array(OP, "items", &items.view())?;
        let seen = if seen.is_empty() {
            vec![Vec::new(); users.nrows()]
        } else if seen.len() != users.nrows() {
            return Err(Error::shape(
                OP,
                "seen lists (one per user)",
                users.nrows(),
                seen.len(),
            ));
        } else {
            let n = items.nrows();
            seen.into_iter()
                .enumerate()
                .map(|(u, mut s)| {
                    s.sort_unstable();
                    s.dedup();
                    match s.iter().find(|&&i| i >= n) {
                        Some(i) => Err(bad(
                            &format!("seen[{u}]"),
                            format!("item {i} out of range ({n} items)"),
                        )),
                        None => Ok(s.into_iter().map(|i| i as u32).collect()),
                    }
                })
                .collect::<Result<Vec<_>>>()?
        };
        Ok(Recommender {
            users,
            items,
            seen,
            ids: None,
            par: Par::rayon(),
            encoder: None,
            fold: None,
        })
    }

    /// The recommender of a trainer's current parameters (call [`crate::model::Trainer::finish`] first for
    /// the best epoch's), leaving out each user's training items. With the content term and projection-only
    /// encoders (no graph-attention layers, whose output depends on the catalogue's graph) it keeps the
    /// [`ContentEncoder`]; without a user-user branch, the fold-in tables
    /// ([`crate::model::RecGoat::fold_in_tables`]).
    ///
    /// # Errors
    /// The forward pass's errors.
    pub fn from_trainer(t: &crate::model::Trainer<'_>) -> Result<Self> {
        let model = t.model();
        // the fold-in tables' ego terms carry the users' ego share as the users' vectors do
        let (users, items, fold) = t.served(true)?;
        let mut seen = vec![Vec::new(); users.nrows()];
        for &(u, i) in &t.data.train {
            seen[u].push(i);
        }
        let mut rec = Recommender::new(users, items, seen)?;
        let cfg = model.config();
        if model.content_on() && cfg.gat_layers == 0 {
            rec.encoder = Some(model.content_encoder(t.params())?);
        }
        rec.fold = fold.map(|(fold, _)| fold);
        Ok(rec)
    }

    /// The same recommender knowing the original ids behind its contiguous ones (saved with it).
    ///
    /// # Errors
    /// [`Error::Shape`] when the map does not have one id per user and per item; [`Error::Param`] when an
    /// original id names two users or two items.
    pub fn with_ids(mut self, ids: IdMap) -> Result<Self> {
        if let Some((what, id)) = ids.duplicate() {
            let why = format!("names two {what}s: each original id must name one");
            return Err(Error::param(
                "Recommender::with_ids",
                "ids",
                format!("{id:?}"),
                why,
            ));
        }
        if (ids.users.len(), ids.items.len()) != self.shape() {
            return Err(Error::shape(
                "Recommender::with_ids",
                "ids (users, items)",
                self.shape(),
                (ids.users.len(), ids.items.len()),
            ));
        }
        self.ids = Some(ids);
        Ok(self)
    }

    /// The original ids, when known.
    pub fn ids(&self) -> Option<&IdMap> {
        self.ids.as_ref()
    }

    /// The same recommender running on `par`.
    pub fn with_par(mut self, par: Par) -> Self {
        self.par = par;
        self
    }

    /// `(users, items)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.users.nrows(), self.items.nrows())
    }

    fn check_user(&self, u: usize) -> Result<()> {
        if u >= self.users.nrows() {
            return Err(bad(
                "user",
                format!("{u} out of range ({} users)", self.users.nrows()),
            ));
        }
        Ok(())
    }

    /// The `k` best items for each of `users` with the user's seen items left out, best first, as
    /// `(item, score)`; ties go to the smaller item id. Users are scored in blocks, in parallel.
    ///
    /// # Errors
    /// [`Error::Param`] for a user out of range or `k == 0`.
    pub fn recommend(&self, users: &[usize], k: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        self.recommend_excluding(users, k, |u| &self.seen[u])
    }

    /// [`Recommender::recommend`] leaving out, for user `u`, the sorted items `exclude(u)` instead of its
    /// seen ones.
    ///
    /// # Errors
    /// As [`Recommender::recommend`].
    pub fn recommend_excluding<'a>(
        &'a self,
        users: &[usize],
        k: usize,
        exclude: impl Fn(usize) -> &'a [u32] + Sync,
    ) -> Result<Vec<Vec<(usize, f32)>>> {
        if k == 0 {
            return Err(bad("k", "must be >= 1"));
        }
        for &u in users {
            self.check_user(u)?;
        }
        let blocks: Vec<&[usize]> = users.chunks(BLOCK).collect();
        let out = map_chunks(self.par, blocks.len(), |_, range| {
            let mut res = Vec::new();
            for block in &blocks[range] {
                let rows = Array2::from_shape_fn((block.len(), self.users.ncols()), |(r, c)| {
                    self.users[[block[r], c]]
                });
                let scores = rows.dot(&self.items.t());
                for (r, &u) in block.iter().enumerate() {
                    res.push(top_k(
                        scores.row(r).as_slice().unwrap_or(&[]),
                        k,
                        exclude(u),
                    ));
                }
            }
            res
        });
        Ok(out.into_iter().flatten().collect())
    }

    /// The scores of `(user, item)` pairs.
    ///
    /// # Errors
    /// [`Error::Param`] for an id out of range.
    pub fn score(&self, pairs: &[(usize, usize)]) -> Result<Vec<f32>> {
        pairs
            .iter()
            .map(|&(u, i)| {
                self.check_user(u)?;
                if i >= self.items.nrows() {
                    return Err(bad(
                        "item",
                        format!("{i} out of range ({} items)", self.items.nrows()),
                    ));
                }
                Ok(self.users.row(u).dot(&self.items.row(i)))
            })
            .collect()
    }

    /// The `k` items nearest to `item` by cosine similarity of their vectors (the item itself left out).
    ///
    /// # Errors
    /// [`Error::Param`] for an item out of range or `k == 0`.
    pub fn similar_items(&self, item: usize, k: usize) -> Result<Vec<(usize, f32)>> {
        let n = self.items.nrows();
        if item >= n {
            return Err(bad("item", format!("{item} out of range ({n} items)")));
        }
        if k == 0 {
            return Err(bad("k", "must be >= 1"));
        }
        let norm = |r: ndarray::ArrayView1<'_, f32>| r.dot(&r).sqrt().max(f32::MIN_POSITIVE);
        let q = self.items.row(item);
        let qn = norm(q);
        let sims: Vec<f32> = (0..n)
            .map(|j| self.items.row(j).dot(&q) / (norm(self.items.row(j)) * qn))
            .collect();
        Ok(top_k(&sims, k, &[item as u32]))
    }

    /// The items a user has seen (left out of its recommendations), ascending.
    ///
    /// # Errors
    /// [`Error::Param`] for a user out of range.
    pub fn seen_items(&self, user: usize) -> Result<Vec<usize>> {
        self.check_user(user)?;
        Ok(self.seen[user].iter().map(|&i| i as usize).collect())
    }

    /// The same recommender embedding new items with `encoder` (saved with it).
    ///
    /// # Errors
    /// [`Error::Shape`] for an encoder whose vectors are not as wide as the items'.
    pub fn with_encoder(mut self, encoder: ContentEncoder) -> Result<Self> {
        if encoder.dim() != self.items.ncols() {
            let what = "content encoder's vector width";
            return Err(Error::shape(
                "Recommender::with_encoder",
                what,
                self.items.ncols(),
                encoder.dim(),
            ));
        }
        self.encoder = Some(encoder);
        Ok(self)
    }

    /// The content encoder that gives new items their vectors, when the recommender has one.
    pub fn encoder(&self) -> Option<&ContentEncoder> {
        self.encoder.as_ref()
    }

    fn need_encoder(&self, op: &'static str) -> Result<&ContentEncoder> {
        self.encoder.as_ref().ok_or_else(|| {
            let why = "this recommender has no content encoder: its model had no content term (or had \
                       graph-attention layers), or it was saved before encoders were (format v1): export it \
                       again from a trainer of a model with the content term";
            Error::param(op, "recommender", "no content encoder", why)
        })
    }

    /// The vectors new items would have, from their feature rows (one matrix per modality, by the names
    /// and widths the model was trained with), without adding them.
    ///
    /// # Errors
    /// [`Error::Param`] when the recommender has no content encoder; as [`ContentEncoder::encode`].
    pub fn embed_items(&self, features: &[(&str, ArrayView2<'_, f32>)]) -> Result<Array2<f32>> {
        self.need_encoder("Recommender::embed_items")?
            .encode(features)
    }

    /// Adds new items to the catalogue from their feature rows: from now on they are recommended, scored
    /// and folded in like the others (no user has seen them). Returns their ids. When the recommender
    /// knows original ids, `ids` gives the new items' (one each); otherwise pass `None`.
    ///
    /// # Errors
    /// As [`Recommender::embed_items`]; [`Error::Param`] for ids missing, given where none are kept, of
    /// the wrong count, or already used.
    pub fn add_items(
        &mut self,
        features: &[(&str, ArrayView2<'_, f32>)],
        ids: Option<Vec<String>>,
    ) -> Result<std::ops::Range<usize>> {
        const OP: &str = "Recommender::add_items";
        let vectors = self.embed_items(features)?;
        let n = vectors.nrows();
        match (&self.ids, &ids) {
            (Some(map), Some(new)) => {
                if new.len() != n {
                    return Err(Error::shape(OP, "ids (one per new item)", n, new.len()));
                }
                let mut all: std::collections::HashSet<&String> = map.items.iter().collect();
                if let Some(dup) = new.iter().find(|id| !all.insert(id)) {
                    return Err(Error::param(OP, "ids", dup, "already names an item"));
                }
            }
            (Some(_), None) => {
                let why = "the recommender knows original item ids: give one per new item";
                return Err(Error::param(OP, "ids", "none", why));
            }
            (None, Some(_)) => {
                let why = "the recommender keeps no original ids: pass None";
                return Err(Error::param(OP, "ids", "some", why));
            }
            (None, None) => {}
        }
        let first = self.items.nrows();
        if first + n > crate::data::MAX_ID {
            let why = format!("the catalogue would exceed {} items", crate::data::MAX_ID);
            return Err(Error::param(OP, "features", n, why));
        }
        if let Some(f) = &mut self.fold {
            let share = f.layers as f32 / (f.layers + 1) as f32;
            let rows = vectors.mapv(|v| v * share);
            f.items = ndarray::concatenate(ndarray::Axis(0), &[f.items.view(), rows.view()])
                .map_err(|e| Error::shape(OP, "fold-in rows", f.items.ncols(), e))?;
        }
        self.items = ndarray::concatenate(ndarray::Axis(0), &[self.items.view(), vectors.view()])
            .map_err(|e| Error::shape(OP, "item vectors", self.items.ncols(), e))?;
        if let (Some(map), Some(new)) = (&mut self.ids, ids) {
            map.items.extend(new);
        }
        Ok(first..first + n)
    }

    /// Whether the recommender can fold a user in from an item history (it was made from a trainer of a
    /// model without a user-user branch).
    pub fn can_fold_in(&self) -> bool {
        self.fold.is_some()
    }

    /// The vector of a user from an item history, without a gradient step: LightGCN's propagation of the
    /// user's row over its items' layers ([`crate::model::RecGoat::fold_in_tables`]). For a new user
    /// (`user` `None`) the history is every item it interacted with; for a known user, the items it
    /// interacted with since training (its training items are added). A known user's training items alone
    /// give back its trained vector.
    ///
    /// # Errors
    /// [`Error::Param`] when the recommender has no fold-in tables, for a user or item out of range, or an
    /// empty history for a new user.
    pub fn fold_in(&self, user: Option<usize>, history: &[usize]) -> Result<Array1<f32>> {
        const OP: &str = "Recommender::fold_in";
        let fold = self.fold.as_ref().ok_or_else(|| {
            let why =
                "this recommender has no fold-in tables: its model had a user-user branch, or it \
                       was saved before they were (format v1): export it again from a trainer";
            Error::param(OP, "recommender", "no fold-in tables", why)
        })?;
        let items = self.history_items(user, history)?;
        if items.is_empty() {
            return Err(Error::param(
                OP,
                "history",
                "[]",
                "a new user needs at least one item",
            ));
        }
        let mut z = match user {
            Some(u) => fold.users.row(u).to_owned(),
            None => Array1::zeros(self.items.ncols()),
        };
        let x = fold.propagated(&items);
        // a new user's ego term, predicted from the rest
        if let (None, Some(m)) = (user, &fold.ego) {
            z += &x.dot(m);
        }
        Ok(z + x)
    }

    /// The sorted, distinct items of a history, a known user's seen items included.
    fn history_items(&self, user: Option<usize>, history: &[usize]) -> Result<Vec<u32>> {
        if let Some(u) = user {
            self.check_user(u)?;
        }
        let n = self.items.nrows();
        if let Some(i) = history.iter().find(|&&i| i >= n) {
            return Err(bad("history", format!("item {i} out of range ({n} items)")));
        }
        let mut items: Vec<u32> = history.iter().map(|&i| i as u32).collect();
        if let Some(u) = user {
            items.extend(&self.seen[u]);
        }
        items.sort_unstable();
        items.dedup();
        Ok(items)
    }

    /// The `k` best items for a user given by an item history ([`Recommender::fold_in`]), the history's
    /// items (and a known user's seen items) left out, best first, as `(item, score)`.
    ///
    /// # Errors
    /// As [`Recommender::fold_in`]; [`Error::Param`] for `k == 0`.
    ///
    /// # Example
    /// ```no_run
    /// # use recgoat_core::recommend::Recommender;
    /// let rec = Recommender::load("out/train/recgoat-s2026/recommender.safetensors")?;
    /// let top = rec.recommend_history(None, &[3, 17, 42], 10)?; // a new user who liked items 3, 17, 42
    /// # Ok::<(), recgoat_core::Error>(())
    /// ```
    pub fn recommend_history(
        &self,
        user: Option<usize>,
        history: &[usize],
        k: usize,
    ) -> Result<Vec<(usize, f32)>> {
        if k == 0 {
            return Err(bad("k", "must be >= 1"));
        }
        let z = self.fold_in(user, history)?;
        let exclude = self.history_items(user, history)?;
        let scores = self.items.dot(&z);
        Ok(top_k(scores.as_slice().unwrap_or(&[]), k, &exclude))
    }

    /// Saves the vectors, the seen items, the ids, the content encoder and the fold-in tables (safetensors,
    /// atomically) with the format tag [`FORMAT`] and a checksum of the contents.
    ///
    /// # Errors
    /// [`Error::Write`] when the file cannot be written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let err = |e: safetensors::SafeTensorError| Error::Write {
            op: "Recommender::save",
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        let indptr: Vec<u8> = std::iter::once(0u64)
            .chain(self.seen.iter().scan(0u64, |acc, s| {
                *acc += s.len() as u64;
                Some(*acc)
            }))
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let indices: Vec<u8> = (self.seen.iter().flatten())
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let nnz = self.seen.iter().map(Vec::len).sum::<usize>();
        // (name, dtype, shape, bytes)
        let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = vec![
            matrix_tensor("users", self.users.view()),
            matrix_tensor("items", self.items.view()),
            (
                "seen_indptr".into(),
                Dtype::U64,
                vec![self.seen.len() + 1],
                indptr,
            ),
            ("seen_indices".into(), Dtype::U32, vec![nnz], indices),
        ];
        let mut meta: HashMap<String, String> = [("format".to_string(), FORMAT.to_string())].into();
        if let Some(ids) = &self.ids {
            meta.insert("ids".into(), serde_json::to_string(ids).unwrap_or_default());
        }
        if let Some(enc) = &self.encoder {
            for (k, (w, b)) in enc.weights.iter().zip(&enc.biases).enumerate() {
                owned.push(matrix_tensor(format!("encoder/{k}/w"), w.view()));
                owned.push(vector_tensor(format!("encoder/{k}/b"), b));
            }
            let mut near = Vec::new();
            for (k, n) in enc.neighbours.iter().enumerate() {
                let Some(n) = n else {
                    near.push(serde_json::Value::Null);
                    continue;
                };
                for (what, a) in [("features", &n.features), ("vectors", &n.vectors)] {
                    owned.push(matrix_tensor(
                        format!("encoder/{k}/neighbour_{what}"),
                        a.view(),
                    ));
                }
                near.push(
                    serde_json::json!({"k": n.k, "temperature": n.temperature, "share": n.share}),
                );
            }
            if let Some(t) = &enc.taste {
                owned.push(matrix_tensor("encoder/taste_map", t.map.view()));
                for (k, mean) in t.means.iter().enumerate() {
                    owned.push(vector_tensor(format!("encoder/{k}/taste_mean"), mean));
                }
            }
            let about = serde_json::json!({"modalities": enc.modalities, "normalize": enc.normalize,
                "trust": enc.trust, "neighbours": near, "taste": enc.taste.is_some()});
            meta.insert("encoder".into(), about.to_string());
        }
        if let Some(f) = &self.fold {
            owned.push(matrix_tensor("fold_items", f.items.view()));
            owned.push(matrix_tensor("fold_users", f.users.view()));
            meta.insert("fold_layers".into(), f.layers.to_string());
            if let Some(m) = &f.ego {
                owned.push(matrix_tensor("fold_ego", m.view()));
            }
        }
        let views = (owned.iter())
            .map(|(n, dt, shape, bytes)| {
                TensorView::new(*dt, shape.clone(), bytes).map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(err)?;
        let sum = content_checksum(views.iter().cloned(), &meta);
        meta.insert("checksum".into(), sum);
        let bytes = safetensors::tensor::serialize(views, Some(meta)).map_err(err)?;
        write_atomic(path, &bytes)
    }

    /// Loads a recommender saved by [`Recommender::save`], checking its format tag, checksum, shapes and
    /// values. A file of format version 1 (without a content encoder and fold-in tables) loads only through
    /// [`Recommender::load_v1`].
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Recommender`] for another format (format version 1
    /// included: [`Recommender::load_v1`]), a truncated or malformed file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_checked(path.as_ref(), false)
    }

    /// [`Recommender::load`] that also takes a file of format version 1, saved before new items and users
    /// could be served: it is verified the same way (checksum, shapes, values) and serves its users and
    /// items, but has no content encoder and no fold-in tables, so [`Recommender::embed_items`] and
    /// [`Recommender::fold_in`] say that it was saved before them.
    ///
    /// # Errors
    /// As [`Recommender::load`], but for format version 1.
    pub fn load_v1(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_checked(path.as_ref(), true)
    }

    fn load_checked(path: &Path, v1: bool) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::Io {
            op: "Recommender::load",
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let fail = |reason: String| Error::Recommender {
            path: path.display().to_string(),
            reason,
        };
        let st = crate::io::read_safetensors(&bytes).map_err(fail)?;
        let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| fail(e.to_string()))?;
        let m = meta.metadata().clone().unwrap_or_default();
        let format = m.get("format").cloned();
        match format.as_deref() {
            Some(FORMAT | FORMAT_V4 | FORMAT_V3 | FORMAT_V2) => {}
            Some(FORMAT_V1) if v1 => {}
            Some(FORMAT_V1) => {
                let why = format!(
                    "format {FORMAT_V1:?}, saved before new items and users could be served: load it with \
                     Recommender::load_v1 to serve its users and items as they are, or export it again from \
                     a trainer"
                );
                return Err(fail(why));
            }
            _ => {
                return Err(fail(format!(
                    "format {format:?}, expected {FORMAT:?}, {FORMAT_V4:?}, {FORMAT_V3:?} or {FORMAT_V2:?} (or \
                     {FORMAT_V1:?} through Recommender::load_v1)"
                )));
            }
        }
        let want = content_checksum(st.tensors().into_iter(), &m);
        if m.get("checksum") != Some(&want) {
            return Err(fail(format!(
                "checksum {:?} does not match its contents ({want}): the file is corrupt or was edited",
                m.get("checksum")
            )));
        }
        let tensor = |name: &str, dtype: Dtype| {
            let t = st
                .tensor(name)
                .map_err(|_| fail(format!("tensor `{name}` missing")))?;
            if t.dtype() != dtype {
                return Err(fail(format!(
                    "tensor `{name}` is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok(t)
        };
        let floats = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = tensor(name, Dtype::F32)?;
            let v = (t.data().chunks_exact(4))
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((t.shape().to_vec(), v))
        };
        let matrix = |name: &str| -> Result<Array2<f32>> {
            let (shape, v) = floats(name)?;
            let &[r, c] = shape.as_slice() else {
                return Err(fail(format!("tensor `{name}` is not a matrix: {shape:?}")));
            };
            Array2::from_shape_vec((r, c), v).map_err(|e| fail(format!("tensor `{name}`: {e}")))
        };
        let (users, items) = (matrix("users")?, matrix("items")?);
        let u64s: Vec<u64> = tensor("seen_indptr", Dtype::U64)?
            .data()
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        let idx: Vec<u32> = tensor("seen_indices", Dtype::U32)?
            .data()
            .chunks_exact(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ok = u64s.len() == users.nrows() + 1
            && u64s.first() == Some(&0)
            && u64s.last() == Some(&(idx.len() as u64))
            && u64s.windows(2).all(|w| w[0] <= w[1]);
        if !ok {
            return Err(fail("seen_indptr does not index seen_indices".into()));
        }
        let seen = u64s
            .windows(2)
            .map(|w| {
                idx[w[0] as usize..w[1] as usize]
                    .iter()
                    .map(|&i| i as usize)
                    .collect()
            })
            .collect();
        let mut rec = Recommender::new(users, items, seen).map_err(|e| fail(e.to_string()))?;
        if let Some(json) = m.get("encoder") {
            #[derive(serde::Deserialize)]
            struct About {
                modalities: Vec<(String, usize)>,
                normalize: bool,
                trust: Vec<f32>,
                #[serde(default)]
                neighbours: Vec<Option<Near>>,
                #[serde(default)]
                taste: bool,
            }
            #[derive(serde::Deserialize)]
            struct Near {
                k: usize,
                temperature: f32,
                share: f32,
            }
            let about: About =
                serde_json::from_str(json).map_err(|e| fail(format!("metadata `encoder`: {e}")))?;
            let n = about.modalities.len();
            let weights = (0..n)
                .map(|k| matrix(&format!("encoder/{k}/w")))
                .collect::<Result<Vec<_>>>()?;
            let biases = (0..n)
                .map(|k| floats(&format!("encoder/{k}/b")).map(|(_, v)| Array1::from_vec(v)))
                .collect::<Result<Vec<_>>>()?;
            let mut enc = ContentEncoder::new(
                about.modalities,
                about.normalize,
                weights,
                biases,
                about.trust,
            )
            .map_err(|e| fail(format!("its content encoder: {e}")))?;
            if about.neighbours.len() > n {
                let why = format!(
                    "{} neighbour entries for {n} modalities",
                    about.neighbours.len()
                );
                return Err(fail(format!("metadata `encoder`: {why}")));
            }
            for (k, near) in about.neighbours.into_iter().enumerate() {
                let Some(near) = near else { continue };
                let features = matrix(&format!("encoder/{k}/neighbour_features"))?;
                let vectors = matrix(&format!("encoder/{k}/neighbour_vectors"))?;
                enc = Neighbours::new(features, vectors, near.k, near.temperature, near.share)
                    .and_then(|nb| enc.with_neighbours(k, nb))
                    .map_err(|e| fail(format!("its content encoder's neighbours: {e}")))?;
            }
            if about.taste {
                let map = matrix("encoder/taste_map")?;
                let means = (0..n)
                    .map(|k| {
                        floats(&format!("encoder/{k}/taste_mean")).map(|(_, v)| Array1::from_vec(v))
                    })
                    .collect::<Result<Vec<_>>>()?;
                enc = (enc.with_taste(means, map))
                    .map_err(|e| fail(format!("its content encoder's taste term: {e}")))?;
            }
            rec = (rec.with_encoder(enc)).map_err(|e| fail(format!("its content encoder: {e}")))?;
        }
        if let Some(layers) = m.get("fold_layers") {
            let layers: usize = (layers.parse().ok()).filter(|&l| l <= 64).ok_or_else(|| {
                fail(format!(
                    "metadata `fold_layers` {layers:?} is not a layer count"
                ))
            })?;
            let (fi, fu) = (matrix("fold_items")?, matrix("fold_users")?);
            if fi.dim() != rec.items.dim() || fu.dim() != rec.users.dim() {
                return Err(fail(format!(
                    "fold-in tables of shapes {:?} and {:?} for items {:?} and users {:?}",
                    fi.dim(),
                    fu.dim(),
                    rec.items.dim(),
                    rec.users.dim()
                )));
            }
            for (name, t) in [("fold_items", &fi), ("fold_users", &fu)] {
                check_finite_array("Recommender::load", name, &t.view())
                    .map_err(|e| fail(e.to_string()))?;
            }
            let ego = match st.names().contains(&"fold_ego") {
                true => {
                    let m = matrix("fold_ego")?;
                    let d = fi.ncols();
                    if m.dim() != (d, d) {
                        let why = format!(
                            "the new users' ego map has shape {:?}, not ({d}, {d})",
                            m.dim()
                        );
                        return Err(fail(why));
                    }
                    check_finite_array("Recommender::load", "fold_ego", &m.view())
                        .map_err(|e| fail(e.to_string()))?;
                    Some(m)
                }
                false => None,
            };
            rec.fold = Some(FoldIn {
                items: fi,
                users: fu,
                layers,
                ego,
            });
        }
        match m.get("ids") {
            Some(json) => {
                let ids: IdMap =
                    serde_json::from_str(json).map_err(|e| fail(format!("ids: {e}")))?;
                rec.with_ids(ids).map_err(|e| fail(e.to_string()))
            }
            None => Ok(rec),
        }
    }

    /// The final user vectors.
    pub fn user_vectors(&self) -> ArrayView2<'_, f32> {
        self.users.view()
    }

    /// The final item vectors.
    pub fn item_vectors(&self) -> ArrayView2<'_, f32> {
        self.items.view()
    }
}

/// A matrix as a named `f32` tensor of a recommender file: (name, dtype, shape, bytes).
fn matrix_tensor(
    name: impl Into<String>,
    a: ArrayView2<'_, f32>,
) -> (String, Dtype, Vec<usize>, Vec<u8>) {
    (name.into(), Dtype::F32, a.shape().to_vec(), le_bytes(a))
}

/// A vector as a named one-dimensional `f32` tensor of a recommender file.
fn vector_tensor(name: impl Into<String>, v: &Array1<f32>) -> (String, Dtype, Vec<usize>, Vec<u8>) {
    let row = v.view().insert_axis(ndarray::Axis(0));
    (name.into(), Dtype::F32, vec![v.len()], le_bytes(row))
}

/// The `k` largest of `scores` outside the sorted `exclude`, best first, ties to the smaller index.
fn top_k(scores: &[f32], k: usize, exclude: &[u32]) -> Vec<(usize, f32)> {
    let mut cand: Vec<(usize, f32)> = scores
        .iter()
        .enumerate()
        .filter(|(j, _)| exclude.binary_search(&(*j as u32)).is_err())
        .map(|(j, &s)| (j, s))
        .collect();
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(cand.len());
    if k < cand.len() {
        cand.select_nth_unstable_by(k, order);
        cand.truncate(k);
    }
    cand.sort_by(order);
    cand
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference: every score, sorted.
    fn brute(rec: &Recommender, u: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<(usize, f32)> = (0..rec.items.nrows())
            .filter(|i| !rec.seen[u].contains(&(*i as u32)))
            .map(|i| (i, rec.users.row(u).dot(&rec.items.row(i))))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|x| x.0).collect()
    }

    /// A recommender with fold-in tables whose users' ego terms are `x_u A` (plus `noise` times Gaussian
    /// noise), `x_u` the propagated part of user `u` over its seen items, and the ego map fitted to them.
    fn folded(a: &Array2<f32>, noise: f32) -> (Recommender, Array2<f32>) {
        let (n_users, n_items, d) = (200, 60, a.nrows());
        let mut r = crate::testing::rng(5);
        let f = crate::testing::randn::<f32, _, _>(&mut r, (n_items, d));
        let items = crate::testing::randn::<f32, _, _>(&mut r, (n_items, d));
        let seen: Vec<Vec<usize>> = (0..n_users)
            .map(|u| (0..1 + u % 5).map(|k| (u * 7 + k * 13) % n_items).collect())
            .collect();
        let mut x = Array2::<f32>::zeros((n_users, d));
        for (u, s) in seen.iter().enumerate() {
            for &i in s {
                x.row_mut(u)
                    .scaled_add(1.0 / (s.len() as f32).sqrt(), &f.row(i));
            }
        }
        let ego = x.dot(a) + crate::testing::randn::<f32, _, _>(&mut r, (n_users, d)) * noise;
        let mut rec = Recommender::new(&x + &ego, items, seen).unwrap();
        let mut fold = FoldIn {
            items: f,
            users: ego,
            layers: 3,
            ego: None,
        };
        fold.ego = ego_map(&fold, &rec.seen, &rec.items).unwrap();
        rec.fold = Some(fold);
        (rec, x)
    }

    #[test]
    fn a_new_user_gets_the_ego_term_its_items_predict() {
        let a = ndarray::array![[0.5f32, -0.2, 0.0], [0.1, 0.3, 0.0], [0.0, 0.4, -0.6]];
        let (rec, x) = folded(&a, 0.0);
        let m = rec
            .fold
            .as_ref()
            .unwrap()
            .ego
            .clone()
            .expect("a map that predicts");
        // the smallest penalty (1e-3 of the scale) shrinks the map by about that share; a transposed or
        // negated map would be off by 0.1 or more
        let close = crate::testing::Tolerance::new(1e-2, 2e-3);
        close.assert_close("the map", &m.view(), &a.view());
        // a user's items alone, as a new user's history, give back its vector with the ego term
        for u in [0, 17, 123] {
            let h: Vec<usize> = rec.seen[u].iter().map(|&i| i as usize).collect();
            let z = rec.fold_in(None, &h).unwrap();
            close.assert_close(&format!("user {u}"), &z.view(), &rec.users.row(u));
            assert!(
                (&z - &x.row(u)).iter().any(|v| v.abs() > 1e-2),
                "the ego term is added"
            );
            // a known user keeps its own ego term
            let known = rec.fold_in(Some(u), &[]).unwrap();
            crate::testing::Tolerance::new(1e-5, 1e-6).assert_close(
                &format!("known user {u}"),
                &known.view(),
                &rec.users.row(u),
            );
        }
        // saved and loaded with the map; a file without one (as format v4 files are) folds new users in
        // without an ego term
        let path =
            std::env::temp_dir().join(format!("recgoat-ego-{}.safetensors", std::process::id()));
        rec.save(&path).unwrap();
        assert_eq!(Recommender::load(&path).unwrap(), rec);
        let mut old = rec.clone();
        old.fold.as_mut().unwrap().ego = None;
        old.save(&path).unwrap();
        let back = Recommender::load(&path).unwrap();
        let h: Vec<usize> = rec.seen[17].iter().map(|&i| i as usize).collect();
        crate::testing::Tolerance::new(1e-5, 1e-6).assert_close(
            "without the map",
            &back.fold_in(None, &h).unwrap().view(),
            &x.row(17),
        );
        // a map of the wrong shape, or with a NaN, is refused by name
        for (map, what) in [
            (Array2::zeros((2, 3)), "(2, 3)"),
            (Array2::from_elem((3, 3), f32::NAN), "fold_ego"),
        ] {
            let mut bad = rec.clone();
            bad.fold.as_mut().unwrap().ego = Some(map);
            bad.save(&path).unwrap();
            let e = Recommender::load(&path).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// The ego shift moves a trained user's ego term to the one its items predict: a trained user plus its
    /// whole shift is the new user with the same items; without a map there is no shift.
    #[test]
    fn the_ego_shift_leads_a_trained_user_to_the_new_user_with_its_items() {
        let a = ndarray::array![[0.5f32, -0.2, 0.0], [0.1, 0.3, 0.0], [0.0, 0.4, -0.6]];
        let (rec, _) = folded(&a, 0.5);
        let fold = rec.fold.as_ref().unwrap();
        let shift = ego_shift(fold, &rec.seen).expect("a map, so a shift");
        let m = fold.ego.as_ref().unwrap();
        let close = crate::testing::Tolerance::new(1e-5, 1e-6);
        for u in [0, 17, 123] {
            let h: Vec<usize> = rec.seen[u].iter().map(|&i| i as usize).collect();
            let predicted = fold.propagated(&rec.seen[u]).dot(m);
            let expected = &predicted - &fold.users.row(u);
            close.assert_close(&format!("shift {u}"), &shift.row(u), &expected.view());
            // the noisy ego term is not the predicted one: the shift moves it
            assert!(expected.iter().any(|v| v.abs() > 1e-2), "user {u} moves");
            let moved = &rec.users.row(u) + &shift.row(u);
            let new = rec.fold_in(None, &h).unwrap();
            close.assert_close(&format!("user {u} as new"), &moved.view(), &new.view());
        }
        let mut without = fold.clone();
        without.ego = None;
        assert!(ego_shift(&without, &rec.seen).is_none());
    }

    #[test]
    fn ego_terms_that_the_items_do_not_predict_give_no_map() {
        let (rec, _) = folded(&Array2::zeros((3, 3)), 0.0);
        assert!(rec.fold.as_ref().unwrap().ego.is_none());
    }

    #[test]
    fn top_k_matches_brute_force_and_survives_a_round_trip() {
        let mut r = crate::testing::rng(3);
        let users = crate::testing::randn::<f32, _, _>(&mut r, (150, 8));
        let items = crate::testing::randn::<f32, _, _>(&mut r, (90, 8));
        let seen: Vec<Vec<usize>> = (0..150)
            .map(|u| (0..u % 7).map(|k| (u * 3 + k * 11) % 90).collect())
            .collect();
        let ids = IdMap {
            users: (0..150).map(|u| format!("u{u}")).collect(),
            items: (0..90).map(|i| format!("i{i}")).collect(),
        };
        let rec = Recommender::new(users, items, seen)
            .unwrap()
            .with_ids(ids)
            .unwrap();
        let all: Vec<usize> = (0..150).collect();
        for par in [Par::Seq, Par::Rayon(3)] {
            let got = rec.clone().with_par(par).recommend(&all, 10).unwrap();
            for (u, top) in got.iter().enumerate() {
                let ids: Vec<usize> = top.iter().map(|x| x.0).collect();
                assert_eq!(ids, brute(&rec, u, 10), "user {u}");
            }
        }
        let path =
            std::env::temp_dir().join(format!("recgoat-rec-{}.safetensors", std::process::id()));
        rec.save(&path).unwrap();
        assert_eq!(Recommender::load(&path).unwrap(), rec);
        std::fs::remove_file(&path).unwrap();
        let sim = rec.similar_items(4, 5).unwrap();
        assert_eq!(sim.len(), 5);
        assert!(sim.iter().all(|x| x.0 != 4) && sim.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(rec.recommend(&[150], 3).is_err() && rec.recommend(&[0], 0).is_err());
        assert!(rec.score(&[(0, 90)]).is_err());
    }

    /// A file of format version 1 (written before encoders and fold-in tables were saved): it loads, and
    /// what it cannot do says why; a file of another format is refused.
    #[test]
    fn version_one_files_load_without_encoder_or_tables() {
        let users = ndarray::array![[1.0f32, 0.0], [0.0, 1.0]];
        let items = ndarray::array![[0.9f32, 0.1], [0.2, 0.8], [0.5, 0.5]];
        let (u, i) = (le_bytes(users.view()), le_bytes(items.view()));
        let indptr: Vec<u8> = [0u64, 1, 1].iter().flat_map(|v| v.to_le_bytes()).collect();
        let indices: Vec<u8> = 2u32.to_le_bytes().to_vec();
        let write = |format: &str| {
            let views = vec![
                (
                    "users".to_string(),
                    TensorView::new(Dtype::F32, vec![2, 2], &u).unwrap(),
                ),
                (
                    "items".to_string(),
                    TensorView::new(Dtype::F32, vec![3, 2], &i).unwrap(),
                ),
                (
                    "seen_indptr".to_string(),
                    TensorView::new(Dtype::U64, vec![3], &indptr).unwrap(),
                ),
                (
                    "seen_indices".to_string(),
                    TensorView::new(Dtype::U32, vec![1], &indices).unwrap(),
                ),
            ];
            let mut meta: HashMap<String, String> =
                [("format".to_string(), format.to_string())].into();
            let sum = content_checksum(views.iter().cloned(), &meta);
            meta.insert("checksum".into(), sum);
            let bytes = safetensors::tensor::serialize(views, Some(meta)).unwrap();
            let path = std::env::temp_dir().join(format!(
                "recgoat-v1-{}-{}.safetensors",
                format.len(),
                std::process::id()
            ));
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let path = write(FORMAT_V1);
        // an earlier format loads only when asked for by name
        let e = Recommender::load(&path).unwrap_err().to_string();
        assert!(e.contains("Recommender::load_v1"), "{e}");
        let rec = Recommender::load_v1(&path).unwrap();
        assert_eq!(
            rec,
            Recommender::new(users.clone(), items.clone(), vec![vec![2], vec![]]).unwrap()
        );
        assert_eq!(rec.recommend(&[0], 1).unwrap()[0][0].0, 0);
        let x = ndarray::array![[1.0f32, 0.0]];
        let e = rec
            .embed_items(&[("text", x.view())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("format v1"), "{e}");
        let e = rec
            .recommend_history(None, &[0], 1)
            .unwrap_err()
            .to_string();
        assert!(e.contains("format v1"), "{e}");
        std::fs::remove_file(&path).unwrap();
        // format version 2 (an encoder without neighbours when it has one) loads as it is
        let path = write(FORMAT_V2);
        assert_eq!(Recommender::load(&path).unwrap(), rec);
        std::fs::remove_file(&path).unwrap();
        let path = write("recgoat-core/recommender-v9");
        let e = Recommender::load(&path).unwrap_err().to_string();
        assert!(e.contains("recommender-v9") && e.contains(FORMAT), "{e}");
        std::fs::remove_file(&path).unwrap();
    }
}
