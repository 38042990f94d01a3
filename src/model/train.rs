//! [`Trainer`]: Adam over full-graph batches with uniform negative sampling, evaluation every few epochs,
//! early stopping on validation Recall@20 and restore of the best parameters.

use super::config::RecGoatConfig;
use super::params::Params;
use super::profile::{Profile, Stage};
use super::recgoat::{LossParts, RecGoat};
use super::step::TrainPass;
use crate::attention::Mode;
use crate::backend::Backend;
use crate::data::Batch;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::eval::{by_user, evaluate, Metrics};
use crate::nn::{Adam, AdamState};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Cut-offs every evaluation reports.
pub const EVAL_KS: [usize; 3] = [10, 20, 50];

/// Which held-out split to rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Validation: train items masked.
    Valid,
    /// Test: train and validation items masked.
    Test,
}

/// One epoch of training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean total loss over the batches.
    pub loss: f64,
    /// Mean BPR term.
    pub bpr: f64,
    /// Mean contrastive term (unweighted).
    pub cl: f64,
    /// Mean sample-level OT term (unweighted).
    pub ot: f64,
    /// Seconds of training (without evaluation).
    pub train_seconds: f64,
    /// Validation Recall@20 and NDCG@20, when evaluated this epoch.
    pub valid: Option<(f64, f64)>,
    /// Seconds of that evaluation.
    pub eval_seconds: f64,
}

/// Progress of a training run, saved in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Epoch of the best validation Recall@20 so far (0: none yet).
    pub best_epoch: usize,
    /// Best validation Recall@20 so far.
    pub best_recall: f64,
    /// Evaluations since the last improvement.
    pub bad_evals: usize,
    /// Every epoch's log.
    pub history: Vec<EpochLog>,
}

/// Trains a [`RecGoat`] model on a dataset (f32), deterministically for a given seed and backend.
///
/// Each epoch shuffles the training pairs, draws one uniform negative per pair (rejecting the user's
/// training items), and for each batch recomputes the full-graph forward pass, the loss and its gradient and
/// takes an Adam step on every parameter. Every `eval_every` epochs the validation split is ranked; the
/// parameters with the best validation Recall@20 are kept and restored by [`Trainer::finish`].
///
/// Every backend runs the same step: the parameters and their Adam states stay on the backend for the epoch
/// (on [`Backend::Gpu`], every activation of a step too: the README's "GPU backend of the model" lists what
/// crosses), the steps' losses are read at the epoch's end, and the parameters are back in
/// [`Trainer::params`] before the validation ranking, so checkpoints and early stopping work alike. An epoch
/// that fails (a non-finite loss, a failed check) leaves the parameters of its start.
///
/// # Example
/// ```
/// use recgoat_core::{Backend, data::Dataset, model::*};
/// let train = vec![(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 0)];
/// let ds = Dataset::new("toy", train, vec![(0, 2), (1, 3)], vec![(2, 0), (3, 1)], vec![]).unwrap();
/// let mut cfg = RecGoatConfig::lightgcn();
/// (cfg.embedding_dim, cfg.epochs, cfg.batch_size) = (8, 3, 4);
/// let mut trainer = Trainer::new(cfg, &ds, Backend::default()).unwrap();
/// trainer.fit(|_, _| {}).unwrap();
/// trainer.finish();
/// let test = trainer.evaluate(Split::Test).unwrap();
/// assert_eq!(trainer.state().epoch, 3);
/// assert!(test.recall.iter().all(|r| (0.0..=1.0).contains(r)));
/// ```
#[derive(Debug)]
pub struct Trainer<'d> {
    pub(crate) model: RecGoat<f32>,
    pub(crate) data: &'d Dataset,
    pub(crate) params: Params<f32>,
    pub(crate) best: Params<f32>,
    pub(crate) adam_states: Vec<AdamState<f32>>,
    pub(crate) state: TrainState,
    positives: Vec<Vec<u32>>,
    profile: Profile,
}

fn mix(a: u64, b: u64) -> u64 {
    let mut x = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl<'d> Trainer<'d> {
    /// A trainer with fresh parameters (`cfg.seed`).
    ///
    /// # Errors
    /// As [`RecGoat::new`], and [`Error::Data`] when a user has interacted with every item (no negative
    /// can be drawn).
    pub fn new(cfg: RecGoatConfig, data: &'d Dataset, backend: Backend) -> Result<Self> {
        let model = RecGoat::<f32>::new(cfg, data, backend)?;
        let params = model.init_params();
        Self::with_params(model, data, params)
    }

    pub(crate) fn with_params(
        model: RecGoat<f32>,
        data: &'d Dataset,
        params: Params<f32>,
    ) -> Result<Self> {
        model.check_params(&params)?;
        let positives = by_user(&data.train, data.n_users);
        for (u, p) in positives.iter().enumerate() {
            if p.len() >= data.n_items {
                return Err(Error::Data {
                    path: "dataset".into(),
                    line: 0,
                    reason: format!(
                        "user {u} has interacted with every item: no negative to sample"
                    ),
                });
            }
        }
        let adam_states = params
            .tensors()
            .iter()
            .map(|(_, t)| AdamState::new(t.dim()))
            .collect();
        Ok(Trainer {
            best: params.clone(),
            model,
            data,
            params,
            adam_states,
            state: TrainState::default(),
            positives,
            profile: Profile::default(),
        })
    }

    /// The model.
    pub fn model(&self) -> &RecGoat<f32> {
        &self.model
    }
    /// The configuration.
    pub fn config(&self) -> &RecGoatConfig {
        self.model.config()
    }
    /// The current parameters.
    pub fn params(&self) -> &Params<f32> {
        &self.params
    }
    /// The progress so far.
    pub fn state(&self) -> &TrainState {
        &self.state
    }
    /// Time per stage over all epochs run by this trainer (not restored from checkpoints).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Sets the epoch budget: a resumed run goes on to `epochs` (the configuration's `epochs` changes too).
    ///
    /// # Errors
    /// [`Error::Param`] when `epochs` is below the epochs already run.
    pub fn set_epochs(&mut self, epochs: usize) -> Result<()> {
        if epochs < self.state.epoch.max(1) {
            let reason = format!(
                "{} epochs have run already: give more to extend the run",
                self.state.epoch
            );
            return Err(Error::param(
                "Trainer::set_epochs",
                "epochs",
                epochs,
                reason,
            ));
        }
        self.model.cfg.epochs = epochs;
        Ok(())
    }

    /// Whether training is over: the epoch budget is spent or patience ran out.
    pub fn done(&self) -> bool {
        let cfg = self.model.config();
        self.state.epoch >= cfg.epochs || (cfg.patience > 0 && self.state.bad_evals >= cfg.patience)
    }

    fn sample_epoch(&self, rng: &mut ChaCha8Rng) -> Vec<(usize, usize, usize)> {
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        order.shuffle(rng);
        let n_items = self.data.n_items;
        order
            .into_iter()
            .map(|k| {
                let (u, i) = self.data.train[k];
                let neg = loop {
                    let j = rng.gen_range(0..n_items);
                    if self.positives[u].binary_search(&(j as u32)).is_err() {
                        break j;
                    }
                };
                (u, i, neg)
            })
            .collect()
    }

    /// Runs one epoch (and the validation ranking when due), calling `on_batch(done, total)` after each batch.
    ///
    /// # Errors
    /// The model's errors (for example non-finite values if training diverges).
    pub fn run_epoch(&mut self, mut on_batch: impl FnMut(usize, usize)) -> Result<EpochLog> {
        let cfg = self.model.config().clone();
        let epoch = self.state.epoch + 1;
        let started = Instant::now();
        let t = Profile::start();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, epoch as u64));
        let triples = self.sample_epoch(&mut rng);
        self.profile.record(Stage::Sampling, t.elapsed());
        let adam = Adam {
            weight_decay: cfg.weight_decay as f32,
            ..Adam::new(cfg.lr as f32)
        };
        let batches: Vec<(Batch, Mode)> = (triples.chunks(cfg.batch_size).enumerate())
            .map(|(b, chunk)| {
                let batch = Batch {
                    users: chunk.iter().map(|t| t.0).collect(),
                    pos: chunk.iter().map(|t| t.1).collect(),
                    neg: chunk.iter().map(|t| t.2).collect(),
                };
                let mode = Mode::Train {
                    seed: mix(mix(cfg.seed, epoch as u64), b as u64 + 1),
                };
                (batch, mode)
            })
            .collect();
        let total = batches.len();
        // the parameters and their Adam states stay on the backend for the epoch; the losses are read at its end
        let losses = self.model.train_pass(TrainPass {
            params: &mut self.params,
            states: &mut self.adam_states,
            adam: &adam,
            batches: &batches,
            profile: &mut self.profile,
            on_batch: &mut on_batch,
        });
        // a non-finite value mid-training is divergence more often than bad data: say what to change
        let losses = losses.map_err(|e| match e {
            Error::NonFinite {
                op,
                what,
                index,
                value,
            } => Error::NonFinite {
                op,
                what: format!(
                    "{what} (training diverged in epoch {epoch} at learning rate {}: lower it)",
                    cfg.lr
                ),
                index,
                value,
            },
            e => e,
        })?;
        let mut sum = LossParts::<f64>::default();
        for loss in losses {
            sum.total += f64::from(loss.total);
            sum.bpr += f64::from(loss.bpr);
            sum.cl += f64::from(loss.cl);
            sum.ot += f64::from(loss.ot);
        }
        let n = total.max(1) as f64;
        let mut log = EpochLog {
            epoch,
            loss: sum.total / n,
            bpr: sum.bpr / n,
            cl: sum.cl / n,
            ot: sum.ot / n,
            train_seconds: started.elapsed().as_secs_f64(),
            valid: None,
            eval_seconds: 0.0,
        };
        self.state.epoch = epoch;
        if epoch % cfg.eval_every == 0 || epoch == cfg.epochs {
            if self.data.valid.is_empty() {
                // no validation split: the latest parameters are the selected ones
                self.best = self.params.clone();
                self.state.best_epoch = epoch;
            } else {
                let t = Instant::now();
                let m = self.evaluate(Split::Valid)?;
                log.eval_seconds = t.elapsed().as_secs_f64();
                self.profile.record(Stage::Evaluation, t.elapsed());
                let (r, g) = (
                    m.at(&m.recall, 20).unwrap_or(0.0),
                    m.at(&m.ndcg, 20).unwrap_or(0.0),
                );
                log.valid = Some((r, g));
                if self.state.best_epoch == 0 || r > self.state.best_recall {
                    self.state.best_recall = r;
                    self.state.best_epoch = epoch;
                    self.state.bad_evals = 0;
                    self.best = self.params.clone();
                } else {
                    self.state.bad_evals += 1;
                }
            }
        }
        self.state.history.push(log.clone());
        Ok(log)
    }

    /// Runs epochs until [`Trainer::done`], calling `on_epoch` after each.
    ///
    /// # Errors
    /// As [`Trainer::run_epoch`].
    pub fn fit(&mut self, mut on_epoch: impl FnMut(&EpochLog, &TrainState)) -> Result<()> {
        while !self.done() {
            let log = self.run_epoch(|_, _| {})?;
            on_epoch(&log, &self.state);
        }
        Ok(())
    }

    /// Restores the parameters of the best validation epoch (the latest ones when nothing was evaluated).
    pub fn finish(&mut self) {
        if self.state.best_epoch > 0 {
            self.params = self.best.clone();
        }
    }

    /// Final user and item vectors of the current parameters (evaluation mode, dropout off).
    ///
    /// # Errors
    /// The model's forward errors.
    pub fn embeddings(&self) -> Result<(Array2<f32>, Array2<f32>)> {
        self.model.embeddings(&self.params)
    }

    /// Ranks all items for a split with the MMRec protocol (Recall / NDCG / Precision / Hit at 10, 20, 50),
    /// over the users with training interactions ([`Dataset::cold_users`] are left out).
    ///
    /// # Errors
    /// The model's forward errors, and those of [`evaluate`].
    pub fn evaluate(&self, split: Split) -> Result<Metrics> {
        let (users, items) = self.embeddings()?;
        let d = self.data;
        let (truth, masked): (&[_], Vec<&[_]>) = match split {
            Split::Valid => (&d.valid, vec![&d.train]),
            Split::Test => (&d.test, vec![&d.train, &d.valid]),
        };
        // users with no training interaction (cold users) are left out: the model learnt nothing about them
        let warm: Vec<_> = (truth.iter().copied())
            .filter(|&(u, _)| !self.positives[u].is_empty())
            .collect();
        let par = self.model.backend().par();
        evaluate(users.view(), items.view(), &warm, &masked, &EVAL_KS, par)
    }
}
