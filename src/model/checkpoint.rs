//! Checkpoints in safetensors (parameters, best parameters, Adam moments, configuration, progress), written
//! atomically and verified on load; `.npy` export of the final embeddings.

use super::config::RecGoatConfig;
use super::params::Params;
use super::recgoat::RecGoat;
use super::train::{TrainState, Trainer};
use crate::backend::Backend;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::io::{content_checksum, le_bytes, write_atomic, write_npy_atomic};
use crate::nn::AdamState;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::path::Path;

/// Format tag stored in every checkpoint. Version 3's dataset fingerprint covers the three splits and the
/// feature matrices ([`Dataset::fingerprint`]); version 2's covered the training pairs, and a version 2
/// checkpoint is still verified against that; version 1 carries neither a checksum nor a fingerprint and
/// loads only through [`Trainer::resume_unverified`].
const FORMAT: &str = "recgoat-core/checkpoint-v3";
const FORMAT_V2: &str = "recgoat-core/checkpoint-v2";
const FORMAT_V1: &str = "recgoat-core/checkpoint-v1";

/// Config fields that may differ between a checkpoint and the run that resumes it (they only bound how
/// long training goes on).
const RESUMABLE_CHANGES: [&str; 2] = ["epochs", "patience"];

fn io_err(op: &'static str, path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Io {
        op,
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn ckpt_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// A tensor of a checkpoint: name, shape and little-endian bytes.
type OwnedTensor = (String, Vec<usize>, Vec<u8>);

/// Views of `owned` for safetensors (`path` names the file in errors).
fn tensor_views<'a>(
    owned: &'a [OwnedTensor],
    path: &Path,
) -> Result<Vec<(String, TensorView<'a>)>> {
    (owned.iter())
        .map(|(n, s, b)| {
            TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| ckpt_err(path, e.to_string()))
        })
        .collect()
}

fn changed_fields(a: &RecGoatConfig, b: &RecGoatConfig) -> Vec<String> {
    let (va, vb) = (
        serde_json::to_value(a).expect("config serialises"),
        serde_json::to_value(b).expect("config serialises"),
    );
    match (va, vb) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => x
            .iter()
            .filter(|(k, v)| y.get(*k) != Some(v) && !RESUMABLE_CHANGES.contains(&k.as_str()))
            .map(|(k, v)| {
                format!(
                    "{k}: checkpoint {v}, requested {}",
                    y.get(k).unwrap_or(&serde_json::Value::Null)
                )
            })
            .collect(),
        _ => vec!["<config is not an object>".into()],
    }
}

impl<'d> Trainer<'d> {
    /// Saves everything needed to resume training identically: parameters, the best parameters so far, the
    /// Adam moments and step counts, the configuration, the dataset shape and the progress. Written
    /// atomically. In data-parallel training rank 0 alone writes (the replicas are identical); the other
    /// ranks return at once.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    pub fn save_checkpoint(&self, path: impl AsRef<Path>) -> Result<()> {
        if !self.world().is_root() {
            return Ok(());
        }
        let path = path.as_ref();
        let (owned, mut meta) = self.contents();
        let views = tensor_views(&owned, path)?;
        let sum = content_checksum(views.iter().cloned(), &meta);
        meta.insert("checksum".into(), sum);
        let bytes = safetensors::tensor::serialize(views, Some(meta))
            .map_err(|e| ckpt_err(path, e.to_string()))?;
        write_atomic(path, &bytes)
    }

    /// The checksum a checkpoint of the trainer would carry: its parameters, the best ones, the Adam
    /// states, the progress, the configuration and the dataset's fingerprint.
    pub(super) fn checksum(&self) -> Result<String> {
        let (owned, meta) = self.contents();
        let views = tensor_views(&owned, Path::new("<training state>"))?;
        Ok(content_checksum(views.into_iter(), &meta))
    }

    /// What a checkpoint holds: every tensor (name, shape, little-endian bytes) and the metadata, without
    /// the checksum.
    fn contents(&self) -> (Vec<OwnedTensor>, HashMap<String, String>) {
        let cur = self.params.tensors();
        let best = self.best.tensors();
        let mut owned: Vec<OwnedTensor> = Vec::new();
        for (k, (name, t)) in cur.iter().enumerate() {
            let shape = vec![t.nrows(), t.ncols()];
            owned.push((format!("param/{name}"), shape.clone(), le_bytes(t.view())));
            owned.push((
                format!("best/{name}"),
                shape.clone(),
                le_bytes(best[k].1.view()),
            ));
            let st = &self.adam_states[k];
            owned.push((
                format!("adam_m/{name}"),
                shape.clone(),
                le_bytes(st.m().view()),
            ));
            owned.push((format!("adam_v/{name}"), shape, le_bytes(st.v().view())));
        }
        let (nu, ni) = self.model.shape();
        let adam_t: Vec<u64> = self.adam_states.iter().map(|s| s.t).collect();
        let meta: HashMap<String, String> = [
            ("format", FORMAT.to_string()),
            ("dataset", self.data_fingerprint().to_string()),
            (
                "config",
                serde_json::to_string(self.model.config()).expect("serialises"),
            ),
            (
                "state",
                serde_json::to_string(&self.state).expect("serialises"),
            ),
            (
                "adam_t",
                serde_json::to_string(&adam_t).expect("serialises"),
            ),
            ("n_users", nu.to_string()),
            ("n_items", ni.to_string()),
            (
                "modalities",
                serde_json::to_string(&self.model.modalities()).expect("serialises"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        (owned, meta)
    }

    /// Resumes training from a checkpoint of [`Trainer::save_checkpoint`] on the same dataset: the next
    /// epochs continue exactly as the saved run would have.
    ///
    /// `expected`, when given, must equal the checkpoint's configuration except for `epochs` and `patience`
    /// (which then take the expected values, so a run can be extended).
    ///
    /// # Errors
    /// [`Error::Io`] for an unreadable file; [`Error::Checkpoint`] for a file that is not a recgoat-core
    /// checkpoint, one of format version 1 (which cannot be verified: [`Trainer::resume_unverified`]), a
    /// checksum that does not match, another dataset (splits and features included), a configuration that
    /// differs from `expected` (the differing fields are listed), a training state that is not consistent
    /// (epochs against their history, the best epoch), other modalities, or a missing tensor or one of the
    /// wrong shape.
    pub fn resume(
        path: impl AsRef<Path>,
        data: &'d Dataset,
        backend: Backend,
        expected: Option<&RecGoatConfig>,
    ) -> Result<Self> {
        Self::resume_checked(path.as_ref(), data, backend, expected, false)
    }

    /// [`Trainer::resume`] that also takes a checkpoint of format version 1, which has no checksum and no
    /// dataset fingerprint: its configuration, state and tensors are still checked for shape and
    /// consistency, but nothing shows that it was made for `data` or was not edited. Say so to whoever
    /// relies on the run.
    ///
    /// # Errors
    /// As [`Trainer::resume`], but for the format.
    pub fn resume_unverified(
        path: impl AsRef<Path>,
        data: &'d Dataset,
        backend: Backend,
        expected: Option<&RecGoatConfig>,
    ) -> Result<Self> {
        Self::resume_checked(path.as_ref(), data, backend, expected, true)
    }

    fn resume_checked(
        path: &Path,
        data: &'d Dataset,
        backend: Backend,
        expected: Option<&RecGoatConfig>,
        unverified: bool,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| io_err("Trainer::resume", path, e))?;
        let corrupt = |e: safetensors::SafeTensorError| {
            ckpt_err(
                path,
                format!("not a readable safetensors file's metadata: {e}"),
            )
        };
        let st = crate::io::read_safetensors(&bytes).map_err(|why| ckpt_err(path, why))?;
        let (_, metadata) = SafeTensors::read_metadata(&bytes).map_err(corrupt)?;
        let meta = metadata
            .metadata()
            .clone()
            .ok_or_else(|| ckpt_err(path, "no metadata: not a recgoat-core checkpoint"))?;
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| ckpt_err(path, format!("metadata field `{k}` missing")))
        };
        let format = get("format")?.as_str();
        let fingerprint = match format {
            FORMAT => Some(data.fingerprint()),
            FORMAT_V2 => Some(data.training_fingerprint()),
            FORMAT_V1 if unverified => None,
            FORMAT_V1 => {
                let why = format!(
                    "format {FORMAT_V1:?} carries no checksum and no dataset fingerprint, so nothing in it can \
                     be verified: resume it with Trainer::resume_unverified if you trust it"
                );
                return Err(ckpt_err(path, why));
            }
            other => {
                let why = format!("format {other:?}, expected {FORMAT:?} (or {FORMAT_V2:?})");
                return Err(ckpt_err(path, why));
            }
        };
        if let Some(fingerprint) = fingerprint {
            let want = content_checksum(st.tensors().into_iter(), &meta);
            if get("checksum")? != &want {
                return Err(ckpt_err(
                    path,
                    format!(
                        "checksum {} does not match its contents ({want}): the file is corrupt or was edited",
                        get("checksum")?
                    ),
                ));
            }
            if get("dataset")? != &fingerprint {
                return Err(ckpt_err(
                    path,
                    format!(
                        "made for another dataset, or other splits or features ({}); this one is {fingerprint}",
                        get("dataset")?,
                    ),
                ));
            }
        }
        let parse_err =
            |k: &str, e: serde_json::Error| ckpt_err(path, format!("metadata `{k}`: {e}"));
        let mut cfg: RecGoatConfig =
            serde_json::from_str(get("config")?).map_err(|e| parse_err("config", e))?;
        if let Some(want) = expected {
            let diff = changed_fields(&cfg, want);
            if !diff.is_empty() {
                return Err(ckpt_err(
                    path,
                    format!("made with another configuration: {}", diff.join("; ")),
                ));
            }
            cfg.epochs = want.epochs;
            cfg.patience = want.patience;
        }
        cfg.validate()
            .map_err(|e| ckpt_err(path, format!("its configuration is invalid: {e}")))?;
        let state: TrainState =
            serde_json::from_str(get("state")?).map_err(|e| parse_err("state", e))?;
        state
            .check()
            .map_err(|why| ckpt_err(path, format!("its training state is inconsistent: {why}")))?;
        let adam_t: Vec<u64> =
            serde_json::from_str(get("adam_t")?).map_err(|e| parse_err("adam_t", e))?;
        let saved_shape = (get("n_users")?.as_str(), get("n_items")?.as_str());
        let shape = (data.n_users.to_string(), data.n_items.to_string());
        if saved_shape != (shape.0.as_str(), shape.1.as_str()) {
            return Err(ckpt_err(
                path,
                format!(
                    "made for {} users x {} items, the dataset has {} x {}",
                    saved_shape.0, saved_shape.1, shape.0, shape.1
                ),
            ));
        }
        let model = RecGoat::<f32>::new(cfg, data, backend)?;
        let saved_modalities: Vec<(String, usize)> =
            serde_json::from_str(get("modalities")?).map_err(|e| parse_err("modalities", e))?;
        if saved_modalities != model.modalities() {
            return Err(ckpt_err(
                path,
                format!(
                    "made with modalities {saved_modalities:?}, the dataset gives {:?}",
                    model.modalities()
                ),
            ));
        }
        let template = model.init_params();
        let load = |prefix: &str| -> Result<Params<f32>> {
            let mut p = template.clone();
            for (name, mut t) in p.tensors_mut() {
                let key = format!("{prefix}/{name}");
                let v = st
                    .tensor(&key)
                    .map_err(|_| ckpt_err(path, format!("tensor `{key}` missing")))?;
                if v.dtype() != Dtype::F32 || v.shape() != [t.nrows(), t.ncols()] {
                    return Err(ckpt_err(
                        path,
                        format!(
                            "tensor `{key}` is {:?} {:?}, the model needs F32 {:?}",
                            v.dtype(),
                            v.shape(),
                            t.dim()
                        ),
                    ));
                }
                for (dst, c) in t.iter_mut().zip(v.data().chunks_exact(4)) {
                    *dst = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
                if let Some(k) = t.iter().position(|x| !x.is_finite()) {
                    return Err(ckpt_err(
                        path,
                        format!("tensor `{key}` holds a non-finite value at {k}"),
                    ));
                }
            }
            Ok(p)
        };
        let params = load("param")?;
        let best = load("best")?;
        let (m, v) = (load("adam_m")?, load("adam_v")?);
        let mut trainer = Trainer::with_params(model, data, params)?;
        if adam_t.len() != trainer.adam_states.len() {
            return Err(ckpt_err(
                path,
                format!(
                    "{} Adam step counts for {} tensors",
                    adam_t.len(),
                    trainer.adam_states.len()
                ),
            ));
        }
        for (((s, (_, mm)), (_, vv)), t) in trainer
            .adam_states
            .iter_mut()
            .zip(m.tensors())
            .zip(v.tensors())
            .zip(adam_t)
        {
            *s = AdamState::from_moments(mm.to_owned(), vv.to_owned(), t)
                .map_err(|e| ckpt_err(path, e.to_string()))?;
        }
        trainer.best = best;
        trainer
            .model
            .set_cold_scale(state.cold_scale)
            .map_err(|e| ckpt_err(path, e.to_string()))?;
        (trainer.model)
            .set_taste_share(state.taste_share)
            .map_err(|e| ckpt_err(path, format!("its taste share: {e}")))?;
        if !state.modality_trust.is_empty() {
            (trainer.model)
                .set_modality_trust(&state.modality_trust)
                .map_err(|e| ckpt_err(path, format!("its modality trusts: {e}")))?;
        }
        trainer.state = state;
        Ok(trainer)
    }

    /// Writes the final user and item vectors (evaluation mode) as `users.npy` and `items.npy` in `dir`,
    /// each atomically, with `embeddings.json` naming their format version, shapes and dataset. In
    /// data-parallel training rank 0 alone writes; the other ranks return at once.
    ///
    /// # Errors
    /// [`Error::Io`] when the folder cannot be written, and the forward pass's errors.
    pub fn export_embeddings(&self, dir: impl AsRef<Path>) -> Result<()> {
        if !self.world().is_root() {
            return Ok(());
        }
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| io_err("export_embeddings", dir, e))?;
        let (users, items) = self.embeddings()?;
        write_npy_atomic(dir.join("users.npy"), &users)?;
        write_npy_atomic(dir.join("items.npy"), &items)?;
        let about = serde_json::json!({"format": "recgoat-core/embeddings-v1", "users": users.dim(),
            "items": items.dim(), "score": "dot product", "dataset": self.data_fingerprint()});
        write_atomic(dir.join("embeddings.json"), about.to_string().as_bytes())
    }
}
