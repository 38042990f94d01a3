//! The reference model from Python: datasets, the trainer and the recommender.

use crate::{int64_array, py_err, value_error};
use ndarray::Array2;
use numpy::{IntoPyArray, PyArray2, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use recgoat_core::data::{read_features, read_interactions, Dataset, IdMap};
use recgoat_core::eval::{Metrics, Split};
use recgoat_core::model::{EpochLog, RecGoatConfig, Trainer};
use recgoat_core::recommend::Recommender;
use recgoat_core::{Backend, Par};
use self_cell::self_cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A validated dataset: training, validation and test interactions and item features.
/// `Dataset.load(folder or CSV file, features=None)`, or `Dataset.from_arrays(train, valid, test,
/// features=None)` with N x 2 integer arrays of (user, item).
///
/// >>> import numpy as np, recgoat
/// >>> pairs = np.array([[0, 0], [0, 1], [1, 1], [1, 2], [2, 2], [2, 0]])
/// >>> data = recgoat.Dataset.from_arrays(pairs, np.array([[0, 2]]), np.array([[1, 0]]))
/// >>> data.n_users, data.n_items
/// (3, 3)
#[pyclass(name = "Dataset", module = "recgoat", frozen)]
pub(crate) struct PyDataset {
    data: Arc<Dataset>,
    /// The original ids, for a dataset read from a CSV / TSV file.
    ids: Option<IdMap>,
}

/// `(N, 2)` integer pairs as `(user, item)` tuples.
fn pairs(name: &str, x: &Bound<'_, PyAny>) -> PyResult<Vec<(usize, usize)>> {
    const WHAT: &str = "an N x 2 integer array of (user, item)";
    let arr = int64_array(name, x, WHAT)?;
    let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
    if shape.len() != 2 || shape[1] != 2 {
        return Err(value_error(format!(
            "{name}: expected {WHAT}, got shape {shape:?}"
        )));
    }
    let v: PyReadonlyArray2<'_, i64> = arr.extract()?;
    (v.as_array().rows().into_iter().enumerate())
        .map(
            |(k, r)| match (usize::try_from(r[0]), usize::try_from(r[1])) {
                (Ok(u), Ok(i)) => Ok((u, i)),
                _ => Err(value_error(format!(
                    "{name}[{k}] = ({}, {}) has a negative id",
                    r[0], r[1]
                ))),
            },
        )
        .collect()
}

fn pairs_array<'py>(py: Python<'py>, p: &[(usize, usize)]) -> Bound<'py, PyArray2<i64>> {
    Array2::from_shape_fn((p.len(), 2), |(r, c)| {
        if c == 0 {
            p[r].0 as i64
        } else {
            p[r].1 as i64
        }
    })
    .into_pyarray(py)
}

/// Float32 feature matrices from a `{name: array}` dict (any float dtype, cast to float32).
fn feature_dict(x: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, Array2<f32>)>> {
    let Some(d) = x else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for (k, v) in d.iter() {
        let name: String = k.extract()?;
        let np = v.py().import("numpy")?;
        let arr = np.call_method1("asarray", (v, "float32"))?;
        let a: PyReadonlyArray2<'_, f32> = arr.extract().map_err(|_| {
            value_error(format!(
                "features[{name:?}]: expected a 2-D array (items x width)"
            ))
        })?;
        out.push((name, a.as_array().to_owned()));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Every `.npy` file's stem in `dir`, sorted.
fn npy_stems(dir: &Path) -> PyResult<Vec<String>> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("{}: {e}", dir.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let p = e.path();
            if p.extension()? != "npy" {
                return None;
            }
            Some(p.file_stem()?.to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    Ok(names)
}

#[pymethods]
impl PyDataset {
    /// A dataset from a folder (LightGCN split files or an MMRec `.inter` file, with `.npy` item
    /// features: `features` names them, default every `.npy` in the folder) or from a CSV / TSV file of
    /// interactions with any ids (each user's last 10 % to test, the 10 % before to validation; `features`
    /// names `.npy` files beside it).
    #[staticmethod]
    #[pyo3(signature = (path, features=None))]
    fn load(py: Python<'_>, path: PathBuf, features: Option<Vec<String>>) -> PyResult<Self> {
        if path.is_file() {
            let names = features.unwrap_or_default();
            let (data, ids) = py
                .detach(|| -> recgoat_core::Result<_> {
                    let x = read_interactions(&path)?;
                    let feats = (names.iter())
                        .map(|n| {
                            Ok((
                                n.clone(),
                                read_features(path.with_file_name(format!("{n}.npy")))?,
                            ))
                        })
                        .collect::<recgoat_core::Result<Vec<_>>>()?;
                    Ok((Dataset::from_interactions(&path, &x, 0.1, feats)?, x.ids))
                })
                .map_err(py_err)?;
            return Ok(PyDataset {
                data: Arc::new(data),
                ids: Some(ids),
            });
        }
        let names = match features {
            Some(f) => f,
            None => npy_stems(&path)?,
        };
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let data = (py.detach(|| Dataset::load_dir(&path, &refs))).map_err(py_err)?;
        Ok(PyDataset {
            data: Arc::new(data),
            ids: None,
        })
    }

    /// A dataset from `(N, 2)` integer arrays of `(user, item)` pairs and an optional `{name: items x
    /// width}` dict of item features; the user and item counts are inferred.
    #[staticmethod]
    #[pyo3(signature = (train, valid, test, features=None, *, name="arrays"))]
    fn from_arrays(
        train: &Bound<'_, PyAny>,
        valid: &Bound<'_, PyAny>,
        test: &Bound<'_, PyAny>,
        features: Option<&Bound<'_, PyDict>>,
        name: &str,
    ) -> PyResult<Self> {
        let (tr, va, te) = (
            pairs("train", train)?,
            pairs("valid", valid)?,
            pairs("test", test)?,
        );
        let data = Dataset::new(name, tr, va, te, feature_dict(features)?).map_err(py_err)?;
        Ok(PyDataset {
            data: Arc::new(data),
            ids: None,
        })
    }

    /// This dataset with a seeded `fraction` of its items held out entirely (every interaction of half of
    /// them to validation, of the other half to test): a cold-item split.
    fn hold_out_items(&self, fraction: f64, seed: u64) -> PyResult<Self> {
        let data = self.data.hold_out_items(fraction, seed).map_err(py_err)?;
        Ok(PyDataset {
            data: Arc::new(data),
            ids: self.ids.clone(),
        })
    }

    #[getter]
    fn n_users(&self) -> usize {
        self.data.n_users
    }
    #[getter]
    fn n_items(&self) -> usize {
        self.data.n_items
    }
    /// Training pairs, `(N, 2)` int64.
    #[getter]
    fn train<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<i64>> {
        pairs_array(py, &self.data.train)
    }
    /// Validation pairs.
    #[getter]
    fn valid<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<i64>> {
        pairs_array(py, &self.data.valid)
    }
    /// Test pairs.
    #[getter]
    fn test<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<i64>> {
        pairs_array(py, &self.data.test)
    }
    /// Item feature names and widths.
    #[getter]
    fn features(&self) -> Vec<(String, usize)> {
        (self.data.item_features.iter())
            .map(|(n, x)| (n.clone(), x.ncols()))
            .collect()
    }
    /// Items without training interactions.
    #[getter]
    fn cold_items(&self) -> Vec<usize> {
        self.data.cold_items()
    }
    /// A checksum of the splits and features.
    #[getter]
    fn fingerprint(&self) -> String {
        self.data.fingerprint()
    }

    fn __repr__(&self) -> String {
        let d = &self.data;
        format!(
            "Dataset({} users, {} items, {} / {} / {} interactions, features {:?})",
            d.n_users,
            d.n_items,
            d.train.len(),
            d.valid.len(),
            d.test.len(),
            self.features()
        )
    }
}

type TrainerOf<'a> = Trainer<'a>;

/// A float32 matrix handed to Python.
type Matrix<'py> = Bound<'py, PyArray2<f32>>;

self_cell!(
    /// A trainer with the dataset it borrows.
    struct TrainerCell {
        owner: Arc<Dataset>,
        #[covariant]
        dependent: TrainerOf,
    }
);

/// Trains a model: Adam with early stopping on validation Recall@20, checkpoints.
/// `Trainer(dataset, preset="recgoat", threads=0, **settings)`: the preset "recgoat", "paper",
/// "official_code" or "lightgcn", any configuration field as a keyword.
///
/// >>> import numpy as np, recgoat
/// >>> pairs = np.array([[u, (u + k) % 6] for u in range(6) for k in range(3)])
/// >>> data = recgoat.Dataset.from_arrays(pairs, np.array([[0, 3]]), np.array([[1, 4]]))
/// >>> t = recgoat.Trainer(data, "lightgcn", embedding_dim=8, epochs=2, batch_size=8)
/// >>> t.fit(progress=False)
/// >>> t.state["epoch"], sorted(t.evaluate("test"))[:2]
/// (2, ['hit@10', 'hit@20'])
#[pyclass(name = "Trainer", module = "recgoat", unsendable)]
pub(crate) struct PyTrainer {
    cell: TrainerCell,
    ids: Option<IdMap>,
}

fn backend(threads: usize) -> Backend {
    match threads {
        1 => Backend::Cpu(Par::Seq),
        n => Backend::Cpu(Par::Rayon(n)),
    }
}

/// A configuration from a preset and keyword settings (each value as JSON).
fn configure(
    py: Python<'_>,
    preset: &str,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<RecGoatConfig> {
    let mut cfg = RecGoatConfig::preset(preset).map_err(py_err)?;
    if let Some(s) = settings {
        let json = py.import("json")?;
        for (k, v) in s.iter() {
            let key: String = k.extract()?;
            let value: String = json.call_method1("dumps", (v,))?.extract()?;
            cfg.set(&format!("{key}={value}")).map_err(py_err)?;
        }
    }
    Ok(cfg)
}

fn metrics_dict<'py>(py: Python<'py>, m: &Metrics) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (name, v) in [
        ("recall", &m.recall),
        ("ndcg", &m.ndcg),
        ("precision", &m.precision),
        ("hit", &m.hit),
    ] {
        for (k, x) in m.ks.iter().zip(v) {
            d.set_item(format!("{name}@{k}"), x)?;
        }
    }
    d.set_item("users", m.users)?;
    if let Some(w) = &m.warm {
        d.set_item("warm", metrics_dict(py, w)?)?;
    }
    if let Some(c) = &m.cold {
        d.set_item("cold", metrics_dict(py, c)?)?;
    }
    Ok(d)
}

/// A serde value as a Python object (through JSON).
fn to_py<'py>(py: Python<'py>, v: &impl serde::Serialize) -> PyResult<Bound<'py, PyAny>> {
    let s = serde_json::to_string(v).map_err(|e| value_error(e.to_string()))?;
    py.import("json")?.call_method1("loads", (s,))
}

#[pymethods]
impl PyTrainer {
    /// A trainer of `preset` ("recgoat", "paper", "official_code", "lightgcn") on `dataset`, any
    /// configuration field given as a keyword (`epochs=50, lr=0.005`); `threads` CPU threads (0: all).
    #[new]
    #[pyo3(signature = (dataset, preset="recgoat", *, threads=0, **settings))]
    fn new(
        py: Python<'_>,
        dataset: &PyDataset,
        preset: &str,
        threads: usize,
        settings: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let cfg = configure(py, preset, settings)?;
        let cell = TrainerCell::try_new(dataset.data.clone(), |d| {
            Trainer::new(cfg, d, backend(threads))
        })
        .map_err(py_err)?;
        Ok(PyTrainer {
            cell,
            ids: dataset.ids.clone(),
        })
    }

    /// Resumes training from a checkpoint written by `save_checkpoint` (verified against `dataset`).
    #[staticmethod]
    #[pyo3(signature = (path, dataset, *, threads=0))]
    fn resume(path: PathBuf, dataset: &PyDataset, threads: usize) -> PyResult<Self> {
        let cell = TrainerCell::try_new(dataset.data.clone(), |d| {
            Trainer::resume(&path, d, backend(threads), None)
        })
        .map_err(py_err)?;
        Ok(PyTrainer {
            cell,
            ids: dataset.ids.clone(),
        })
    }

    /// One epoch (and the validation ranking when due): its log as a dict.
    fn run_epoch<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let log = self.epoch(py)?;
        to_py(py, &log)
    }

    /// Trains until the epoch budget is spent or patience runs out, printing one line per epoch when
    /// `progress`; then restores the best validation epoch's parameters (`finish`). Ctrl-C stops between
    /// epochs.
    #[pyo3(signature = (*, progress=true))]
    fn fit(&mut self, py: Python<'_>, progress: bool) -> PyResult<()> {
        let print = py.import("builtins")?.getattr("print")?;
        while !self.cell.borrow_dependent().done() {
            let log = self.epoch(py)?;
            if progress {
                let st = self.cell.borrow_dependent().state();
                let valid = log
                    .valid
                    .map_or(String::new(), |(r, _)| format!(", valid R@20 {r:.4}"));
                let line = format!(
                    "epoch {:>4}: loss {:.4}{valid}, best {:.4} at {} ({:.2} s)",
                    log.epoch, log.loss, st.best_recall, st.best_epoch, log.train_seconds
                );
                print.call1((line,))?;
            }
            py.check_signals()?;
        }
        self.finish()
    }

    /// Restores the parameters of the best validation epoch.
    fn finish(&mut self) -> PyResult<()> {
        self.cell
            .with_dependent_mut(|_, t| t.finish())
            .map_err(py_err)
    }

    /// Ranking metrics of a split ("valid" or "test"): Recall, NDCG, Precision and Hit at 10, 20, 50, and
    /// the warm and cold items apart when the split holds items without training interactions.
    #[pyo3(signature = (split="test"))]
    fn evaluate<'py>(&self, py: Python<'py>, split: &str) -> PyResult<Bound<'py, PyDict>> {
        let split = match split {
            "valid" => Split::Valid,
            "test" => Split::Test,
            other => {
                return Err(value_error(format!(
                    "split: {other:?} is not \"valid\" or \"test\""
                )))
            }
        };
        let t = self.cell.borrow_dependent();
        let m = py.detach(|| t.evaluate(split)).map_err(py_err)?;
        metrics_dict(py, &m)
    }

    /// Writes a checkpoint (atomically) to resume from.
    fn save_checkpoint(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let t = self.cell.borrow_dependent();
        py.detach(|| t.save_checkpoint(&path)).map_err(py_err)
    }

    /// The final user and item vectors `(users, items)`.
    fn embeddings<'py>(&self, py: Python<'py>) -> PyResult<(Matrix<'py>, Matrix<'py>)> {
        let t = self.cell.borrow_dependent();
        let (u, i) = py.detach(|| t.embeddings()).map_err(py_err)?;
        Ok((u.into_pyarray(py), i.into_pyarray(py)))
    }

    /// A recommender of the current parameters (with the original ids of a CSV dataset).
    fn recommender(&self) -> PyResult<PyRecommender> {
        let mut rec = Recommender::from_trainer(self.cell.borrow_dependent()).map_err(py_err)?;
        if let Some(ids) = &self.ids {
            rec = rec.with_ids(ids.clone()).map_err(py_err)?;
        }
        Ok(PyRecommender { rec })
    }

    /// The configuration trained with, as a dict.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, self.cell.borrow_dependent().config())
    }

    /// The progress: epochs, the best epoch and Recall@20, every epoch's log.
    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, self.cell.borrow_dependent().state())
    }
}

impl PyTrainer {
    /// One epoch, the GIL released.
    fn epoch(&mut self, py: Python<'_>) -> PyResult<EpochLog> {
        (self.cell)
            .with_dependent_mut(|_, t| py.detach(|| t.run_epoch(|_, _| {})))
            .map_err(py_err)
    }
}

/// Serves a trained model: top-k items, scores, similar items, new items from their features and new users
/// from an item history. `Recommender.load(path)` or `trainer.recommender()`.
///
/// >>> import numpy as np, recgoat
/// >>> pairs = np.array([[u, (u + k) % 6] for u in range(6) for k in range(3)])
/// >>> data = recgoat.Dataset.from_arrays(pairs, np.array([[0, 3]]), np.array([[1, 4]]))
/// >>> t = recgoat.Trainer(data, "lightgcn", embedding_dim=8, epochs=1, batch_size=8)
/// >>> t.fit(progress=False)
/// >>> rec = t.recommender()
/// >>> [len(r) for r in rec.recommend([0, 1], k=2)]
/// [2, 2]
/// >>> len(rec.recommend_history([0, 1], k=3))  # a new user
/// 3
#[pyclass(name = "Recommender", module = "recgoat", unsendable)]
pub(crate) struct PyRecommender {
    rec: Recommender,
}

/// `[(item, score), ...]` as a Python list.
fn ranked<'py>(py: Python<'py>, list: Vec<(usize, f32)>) -> PyResult<Bound<'py, PyList>> {
    PyList::new(py, list)
}

#[pymethods]
impl PyRecommender {
    /// Loads a recommender file written by `save`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let rec = py.detach(|| Recommender::load(&path)).map_err(py_err)?;
        Ok(PyRecommender { rec })
    }

    /// Writes the recommender (atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.rec.save(&path)).map_err(py_err)
    }

    /// `(users, items)`.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        self.rec.shape()
    }

    /// The top `k` unseen items of each user in `users`: a list of `[(item, score), ...]`.
    #[pyo3(signature = (users, k=10))]
    fn recommend<'py>(
        &self,
        py: Python<'py>,
        users: Vec<usize>,
        k: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        let lists = py
            .detach(|| self.rec.recommend(&users, k))
            .map_err(py_err)?;
        let out = PyList::empty(py);
        for l in lists {
            out.append(ranked(py, l)?)?;
        }
        Ok(out)
    }

    /// The top `k` items for an item history (a new user, or `user` with new interactions), folded in
    /// without retraining; the history's items left out.
    #[pyo3(signature = (history, k=10, *, user=None))]
    fn recommend_history<'py>(
        &self,
        py: Python<'py>,
        history: Vec<usize>,
        k: usize,
        user: Option<usize>,
    ) -> PyResult<Bound<'py, PyList>> {
        let l = (py.detach(|| self.rec.recommend_history(user, &history, k))).map_err(py_err)?;
        ranked(py, l)
    }

    /// Scores of `(user, item)` pairs.
    fn score(&self, pairs: Vec<(usize, usize)>) -> PyResult<Vec<f32>> {
        self.rec.score(&pairs).map_err(py_err)
    }

    /// The `k` items most similar to `item` (dot product of their vectors).
    #[pyo3(signature = (item, k=10))]
    fn similar_items<'py>(
        &self,
        py: Python<'py>,
        item: usize,
        k: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        ranked(py, self.rec.similar_items(item, k).map_err(py_err)?)
    }

    /// Adds new items from their feature rows (`{modality: items x width}`, the modalities and widths of
    /// training): their ids, from `shape[1]` on.
    #[pyo3(signature = (features, ids=None))]
    fn add_items(
        &mut self,
        features: &Bound<'_, PyDict>,
        ids: Option<Vec<String>>,
    ) -> PyResult<(usize, usize)> {
        let feats = feature_dict(Some(features))?;
        let views: Vec<(&str, ndarray::ArrayView2<'_, f32>)> =
            feats.iter().map(|(n, x)| (n.as_str(), x.view())).collect();
        let r = self.rec.add_items(&views, ids).map_err(py_err)?;
        Ok((r.start, r.end))
    }

    /// The vectors new items would get from their feature rows.
    fn embed_items<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyDict>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let feats = feature_dict(Some(features))?;
        let views: Vec<(&str, ndarray::ArrayView2<'_, f32>)> =
            feats.iter().map(|(n, x)| (n.as_str(), x.view())).collect();
        Ok(self
            .rec
            .embed_items(&views)
            .map_err(py_err)?
            .into_pyarray(py))
    }

    /// The user vectors (a copy).
    #[getter]
    fn user_vectors<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        self.rec.user_vectors().to_owned().into_pyarray(py)
    }

    /// The item vectors (a copy).
    #[getter]
    fn item_vectors<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray2<f32>> {
        self.rec.item_vectors().to_owned().into_pyarray(py)
    }

    fn __repr__(&self) -> String {
        let (u, i) = self.rec.shape();
        format!("Recommender({u} users, {i} items)")
    }
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyDataset>()?;
    m.add_class::<PyTrainer>()?;
    m.add_class::<PyRecommender>()?;
    Ok(())
}
