//! [`Trainer`]: Adam over full-graph batches with uniform negative sampling, evaluation every few epochs,
//! early stopping on validation Recall@20 and restore of the best parameters.

use super::config::RecGoatConfig;
use super::params::Params;
use super::profile::{Profile, Stage};
use super::recgoat::RecGoat;
use super::step::TrainPass;
use crate::attention::Mode;
use crate::backend::{Backend, Par};
use crate::data::Batch;
use crate::data::Dataset;
use crate::dist::World;
use crate::error::{Error, Result};
use crate::eval::{by_user, split_in, split_scales_in, Metrics};
pub use crate::eval::{Split, EVAL_KS};
use crate::nn::{Adam, AdamState};
use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

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
    /// Mean content term (unweighted).
    #[serde(default)]
    pub content: f64,
    /// Seconds of training (without evaluation).
    pub train_seconds: f64,
    /// Validation Recall@20 and NDCG@20 that select the epoch, when evaluated this epoch: over every
    /// held-out item, or over the warm ones when the split also holds cold items ([`Trainer::validate`]).
    pub valid: Option<(f64, f64)>,
    /// Seconds of that evaluation.
    pub eval_seconds: f64,
}

/// Progress of a training run, saved in checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The scale of the cold items' content vectors chosen on the best epoch's parameters
    /// ([`Trainer::validate`], run once by [`Trainer::finish`]).
    #[serde(default = "unit_scale")]
    pub cold_scale: f64,
    /// The taste term's share in the cold items' vectors chosen with it (0: none;
    /// [`crate::model::RecGoatConfig::content_taste`]).
    #[serde(default)]
    pub taste_share: f64,
    /// The scales [`Trainer::validate`] tried on the best epoch's parameters on the validation split's cold
    /// items (or, when it has none, on the probe items standing in for them), with their validation
    /// Recall@20 (empty when it tried none).
    #[serde(default)]
    pub cold_trials: Vec<ColdTrial>,
    /// The epoch whose parameters chose [`TrainState::cold_scale`], [`TrainState::taste_share`] and
    /// [`TrainState::cold_trials`] (0: none yet). The choice does not select the epoch (the backbone alone
    /// does), so [`Trainer::finish`] makes it once, on the best epoch's parameters, when this is not
    /// already that epoch.
    #[serde(default)]
    pub placed_at: usize,
    /// The modalities' trusts fitted after the latest epoch, with
    /// [`crate::model::RecGoatConfig::cl_modality_trust`] (empty otherwise).
    #[serde(default)]
    pub modality_trust: Vec<f64>,
    /// How far each trained user's ego term is moved towards the one its training items predict (the new
    /// users' ego map, [`crate::recommend::Recommender::fold_in`]): a user's vector is
    /// `x_u + (1 - b) e_u + b x_u M`. Chosen by [`Trainer::finish`] on validation of [`EGO_SHARES`] with
    /// [`crate::model::RecGoatConfig::ego_share`] (0: each user keeps its own, as trained);
    /// [`Trainer::embeddings`] applies it.
    #[serde(default)]
    pub ego_share: f64,
    /// The shares [`Trainer::finish`] tried, with their validation Recall@20 (empty when it tried none).
    #[serde(default)]
    pub ego_trials: Vec<(f64, f64)>,
}

/// What [`Trainer::served`] gives: the user and item vectors, and the fold-in tables with each user's
/// training items (sorted, distinct).
pub(crate) type Served = (
    Array2<f32>,
    Array2<f32>,
    Option<(crate::recommend::FoldIn, Vec<Vec<u32>>)>,
);

/// What [`Trainer::validate`] gives: the validation Recall@20 and NDCG@20 that select the epoch, the cold
/// items' scale and taste share chosen, and every trial.
pub type Validated = ((f64, f64), (f64, f64), Vec<ColdTrial>);

/// One scale (and taste share) of the cold items' vectors tried on validation: the validation Recall@20
/// overall, on warm and on cold items.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColdTrial {
    /// The scale.
    pub scale: f64,
    /// The taste term's share ([`crate::model::RecGoatConfig::content_taste`]; 0: none).
    #[serde(default)]
    pub share: f64,
    /// Overall validation Recall@20.
    pub recall: f64,
    /// Validation Recall@20 of the warm items.
    pub warm: f64,
    /// Validation Recall@20 of the cold items.
    pub cold: f64,
}

fn unit_scale() -> f64 {
    1.0
}

impl TrainState {
    /// Whether the state is one a run could have reached: one log per epoch in order, the best epoch among
    /// them, no more evaluations without improvement than evaluations, a best Recall@20 in `[0, 1]`.
    pub(crate) fn check(&self) -> std::result::Result<(), String> {
        if self.history.len() != self.epoch {
            return Err(format!(
                "{} epochs with {} epoch logs",
                self.epoch,
                self.history.len()
            ));
        }
        if let Some((k, log)) = (self.history.iter().enumerate()).find(|(k, l)| l.epoch != k + 1) {
            return Err(format!("epoch log {} is numbered {}", k + 1, log.epoch));
        }
        for (what, at) in [("best", self.best_epoch), ("placing", self.placed_at)] {
            if at > self.epoch {
                return Err(format!(
                    "{what} epoch {at} beyond the {} epochs run",
                    self.epoch
                ));
            }
        }
        let evaluations = self.history.iter().filter(|l| l.valid.is_some()).count();
        if self.bad_evals > evaluations {
            return Err(format!(
                "{} evaluations without improvement of {evaluations}",
                self.bad_evals
            ));
        }
        if !(0.0..=1.0).contains(&self.best_recall) {
            return Err(format!("best Recall@20 {}", self.best_recall));
        }
        Ok(())
    }
}

impl Default for TrainState {
    fn default() -> Self {
        TrainState {
            epoch: 0,
            best_epoch: 0,
            best_recall: 0.0,
            bad_evals: 0,
            history: Vec::new(),
            cold_scale: 1.0,
            taste_share: 0.0,
            cold_trials: Vec::new(),
            placed_at: 0,
            modality_trust: Vec::new(),
            ego_share: 0.0,
            ego_trials: Vec::new(),
        }
    }
}

/// The shares of the users' ego terms moved towards their prediction that [`Trainer::finish`] tries
/// ([`TrainState::ego_share`]). On sparse data a user's own ego term, learned from a few interactions, can
/// rank worse than the one its items predict; on dense data it ranks better and the share stays 0.
pub const EGO_SHARES: [f64; 5] = [0.0, 0.25, 0.5, 0.75, 1.0];

/// The scales of the cold items' vectors [`Trainer::validate`] tries. Least squares shrinks the trusts
/// towards 0 as the encoders' predictions get noisier, and a shrunk content vector rarely outscores a
/// user's top warm items, so weak features need scales well above 1: the grid reaches 10.
const COLD_SCALES: [f64; 23] = [
    0.0, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4, 1.5, 1.75, 2.0, 2.5,
    3.0, 4.0, 5.0, 7.0, 10.0,
];

/// The shares of the taste term in the cold items' vectors [`Trainer::validate`] tries with each scale
/// ([`crate::model::RecGoatConfig::content_taste`]): a cold item's vector is `s (content + a taste)`.
const TASTE_SHARES: [f64; 6] = [0.0, 0.25, 0.5, 1.0, 2.0, 4.0];

/// The trial whose scale [`Trainer::validate`] keeps, of `trials` ranked on validation (the first at scale
/// 0, the others in increasing scale). A scale is allowed when it keeps the warm items' Recall@20 within
/// `warm_tolerance` of its value at scale 0 (a NaN figure, no warm item held out, bars nothing).
///
/// - `overall` `None` (the probe items stand in for new items; their held-out interactions are those of
///   established items, so they measure only what items scored by content cost the warm ones): the
///   largest allowed scale that changes the ranking at all (0 when none does: features that carry nothing).
/// - `overall` `Some(t)` (the split's own new items): of the allowed trials, the one with the best overall
///   Recall@20 (the first of equal ones), unless other allowed trials keep the overall Recall@20 at or
///   above `1 - t` times its value at scale 0 (the backbone alone: no new item in the lists) and place more
///   of the new items' held-out interactions in the lists (a higher cold Recall@20): then of those the one
///   that places the most (of equal ones the best overall, then the last). With `t = 0` the new items enter
///   the lists as far as they pay, on validation, for the warm hits they take: the overall figure never
///   ends below the backbone alone's. The trials may be several grids of scales, one per taste share
///   ([`crate::model::RecGoatConfig::content_taste`]), the first at share 0.
///
/// # Example
/// ```
/// use recgoat_core::model::{choose_cold_scale, ColdTrial};
/// let trial = |scale, recall, warm, cold| ColdTrial { scale, share: 0.0, recall, warm, cold };
/// // the best overall figure at scale 1.5; scale 2 places more new items' interactions and still gives
/// // more than the backbone alone; scale 2.5 places the most but gives less
/// let trials = [
///     trial(0.0, 0.4070, 0.4434, 0.0),
///     trial(1.5, 0.4150, 0.4390, 0.1250),
///     trial(2.0, 0.4090, 0.4260, 0.2420),
///     trial(2.5, 0.4020, 0.4150, 0.3200),
/// ];
/// assert_eq!(choose_cold_scale(&trials, 0.1, Some(0.0)), 2); // at least the backbone alone's figure
/// assert_eq!(choose_cold_scale(&trials, 0.1, Some(0.02)), 3); // within 2 % of it
/// assert_eq!(choose_cold_scale(&trials, 0.03, Some(0.02)), 1); // the warm items may give 3 %: scale 1.5
/// ```
pub fn choose_cold_scale(trials: &[ColdTrial], warm_tolerance: f64, overall: Option<f64>) -> usize {
    let Some(first) = trials.first() else {
        return 0;
    };
    let floor = first.warm * (1.0 - warm_tolerance);
    let allowed = |k: usize| trials[k].warm >= floor || trials[k].warm.is_nan() || floor.is_nan();
    // a scale whose figures are those of scale 0 changes nothing (features that carry nothing)
    let moves = |k: usize| {
        let a = &trials[k];
        a.recall != first.recall || a.warm != first.warm || a.cold != first.cold
    };
    let Some(overall) = overall else {
        return (0..trials.len())
            .rev()
            .find(|&k| allowed(k) && moves(k))
            .unwrap_or(0);
    };
    // of equal recalls, the smallest scale (the cold items' vectors carry nothing when all tie)
    let best = (0..trials.len()).filter(|&k| allowed(k)).fold(0, |b, k| {
        match trials[k].recall > trials[b].recall {
            true => k,
            false => b,
        }
    });
    let within = first.recall * (1.0 - overall);
    let placing = (0..trials.len()).filter(|&k| {
        allowed(k) && trials[k].recall >= within && trials[k].cold > trials[best].cold
    });
    placing
        .max_by(|&a, &b| {
            let (ta, tb) = (&trials[a], &trials[b]);
            (ta.cold.total_cmp(&tb.cold))
                .then(ta.recall.total_cmp(&tb.recall))
                .then(a.cmp(&b))
        })
        .unwrap_or(best)
}

/// Trains a [`RecGoat`] model on a dataset (f32), deterministically for a given seed and backend.
///
/// Each epoch shuffles the training pairs, draws one uniform negative per pair among the items with
/// training interactions (rejecting the user's training items), and for each batch recomputes the full-graph forward pass, the loss and its gradient and
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
/// trainer.finish().unwrap();
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
    /// The items with training interactions: negatives are drawn from them.
    warm_items: Vec<u32>,
    profile: Profile,
    /// The ranks training together ([`Trainer::distribute`]).
    world: World,
    /// What [`Trainer::new`] changed in the configuration ([`Trainer::schedule_note`]).
    schedule_note: Option<String>,
    /// [`Dataset::fingerprint`], hashed once: every checkpoint carries it, and the dataset is borrowed
    /// unchanged for the trainer's life.
    fingerprint: std::sync::OnceLock<String>,
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
        // past `auto_schedule_from` interactions, the grouped schedule
        let (cfg, note) = cfg.scheduled_for(data.train.len());
        let model = RecGoat::<f32>::new(cfg, data, backend)?;
        let params = model.init_params();
        let mut trainer = Self::with_params(model, data, params)?;
        trainer.schedule_note = note;
        Ok(trainer)
    }

    /// What the trainer changed in the configuration it was given, when it did: on data past
    /// [`RecGoatConfig::auto_schedule_from`] it takes the grouped schedule
    /// ([`RecGoatConfig::scheduled_for`]). [`Trainer::config`] is the configuration it trains with.
    pub fn schedule_note(&self) -> Option<&str> {
        self.schedule_note.as_deref()
    }

    pub(crate) fn with_params(
        model: RecGoat<f32>,
        data: &'d Dataset,
        params: Params<f32>,
    ) -> Result<Self> {
        model.check_params(&params)?;
        let positives = by_user(&data.train, data.n_users);
        let mut warm = vec![false; data.n_items];
        for &(_, i) in &data.train {
            warm[i] = true;
        }
        let warm_items: Vec<u32> = (0..data.n_items as u32)
            .filter(|&i| warm[i as usize])
            .collect();
        for (u, p) in positives.iter().enumerate() {
            if p.len() >= warm_items.len() {
                return Err(Error::Data {
                    path: "dataset".into(),
                    line: 0,
                    reason: format!(
                        "user {u} has interacted with every item that has training interactions: no negative to sample"
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
            warm_items,
            profile: Profile::default(),
            world: World::single(),
            schedule_note: None,
            fingerprint: std::sync::OnceLock::new(),
        })
    }

    /// The dataset's fingerprint, computed on first use.
    pub(crate) fn data_fingerprint(&self) -> &str {
        self.fingerprint.get_or_init(|| self.data.fingerprint())
    }

    /// Trains with the ranks of `world` from now on: data-parallel training (see [`crate::dist`]). Each
    /// step's group of batches (`steps_per_epoch` groups per epoch; without it, one batch per rank) is
    /// split over the ranks, their gradients summed by one all-reduce, and every rank applies the same
    /// Adam step: the parameters after a step are those of one process running the same groups, within
    /// `f32` summation order. Evaluation splits the users over the ranks. Rank 0 alone writes
    /// checkpoints and embeddings; a checkpoint resumes on any number of ranks. Collective: call it, and
    /// every method that trains or evaluates, on every rank.
    ///
    /// # Errors
    /// [`Error::Distributed`] on every rank when the ranks' datasets, configurations or parameters and
    /// progress differ (each rank must load the same data and configuration, and resume from the same
    /// checkpoint).
    ///
    /// # Example
    /// ```
    /// use recgoat_core::{Backend, data::Dataset, dist::World, model::*};
    /// let train = vec![(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 0)];
    /// let ds = Dataset::new("toy", train, vec![(0, 2)], vec![(2, 0)], vec![]).unwrap();
    /// let mut cfg = RecGoatConfig::lightgcn();
    /// (cfg.embedding_dim, cfg.epochs, cfg.batch_size, cfg.steps_per_epoch) = (8, 2, 2, 2);
    /// let mut trainer = Trainer::new(cfg, &ds, Backend::default())?;
    /// // under `mpirun -np P` (with the `mpi` feature) the P processes train together
    /// trainer.distribute(World::from_env()?)?;
    /// trainer.fit(|_, _| {})?;
    /// # Ok::<(), recgoat_core::Error>(())
    /// ```
    pub fn distribute(&mut self, world: World) -> Result<()> {
        world.check_same("dataset", self.data_fingerprint())?;
        let config = serde_json::to_string(self.config()).expect("serialises");
        world.check_same("configuration", &config)?;
        world.check_same("parameters and progress", &self.checksum()?)?;
        self.world = world;
        Ok(())
    }

    /// The ranks training together ([`Trainer::distribute`]; one process by default).
    pub fn world(&self) -> &World {
        &self.world
    }

    /// The model.
    pub fn model(&self) -> &RecGoat<f32> {
        &self.model
    }
    /// The dataset it trains on.
    pub fn dataset(&self) -> &'d Dataset {
        self.data
    }
    /// Whether the validation split holds items without training interactions (then the cold items' scale
    /// is chosen on them, else on the probe items standing in for them: [`Trainer::validate`]).
    pub fn new_items_in_validation(&self) -> bool {
        let cold = self.model.cold_items();
        self.data.valid.iter().any(|p| cold[p.1])
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
        // negatives are items with training interactions: an item without any is not known to be disliked,
        // and a content encoder must not learn that new items' features mark negatives
        let warm = &self.warm_items;
        order
            .into_iter()
            .map(|k| {
                let (u, i) = self.data.train[k];
                let neg = loop {
                    let j = warm[rng.gen_range(0..warm.len())];
                    if self.positives[u].binary_search(&j).is_err() {
                        break j as usize;
                    }
                };
                (u, i, neg)
            })
            .collect()
    }

    /// Runs one epoch (and the validation ranking when due), calling `on_batch(done, total)` after each batch.
    ///
    /// On a parallel CPU backend in one process the epoch runs on a worker of rayon's pool (the calling
    /// thread waits), so that each of its many short parallel ops starts on a worker instead of being handed
    /// over from an outside thread: `on_batch` is called from that worker.
    ///
    /// # Errors
    /// The model's errors (for example non-finite values if training diverges).
    pub fn run_epoch(&mut self, mut on_batch: impl FnMut(usize, usize) + Send) -> Result<EpochLog> {
        let par = match self.model.backend() {
            Backend::Cpu(par) if self.world.size() == 1 => *par,
            _ => Par::Seq,
        };
        crate::backend::on_worker(par, || self.epoch_here(&mut on_batch))
    }

    /// [`Trainer::run_epoch`] on the calling thread.
    fn epoch_here(&mut self, mut on_batch: impl FnMut(usize, usize)) -> Result<EpochLog> {
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
        // a non-finite value mid-training is divergence more often than bad data: say what to change
        let explain = |e: Error| match e {
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
        };
        let losses = self.model.train_pass(TrainPass {
            params: &mut self.params,
            states: &mut self.adam_states,
            adam: &adam,
            batches: &batches,
            profile: &mut self.profile,
            on_batch: &mut on_batch,
            world: &self.world,
            explain: &explain,
        })?;
        // each rank holds its batches' losses: their sums are added up over the ranks
        let mut sum = [0.0f64; 5];
        for loss in losses {
            let parts = [loss.total, loss.bpr, loss.cl, loss.ot, loss.content];
            for (s, v) in sum.iter_mut().zip(parts) {
                *s += f64::from(v);
            }
        }
        self.world.sum(&mut sum)?;
        let n = total.max(1) as f64;
        let mut log = EpochLog {
            epoch,
            loss: sum[0] / n,
            bpr: sum[1] / n,
            cl: sum[2] / n,
            ot: sum[3] / n,
            content: sum[4] / n,
            train_seconds: started.elapsed().as_secs_f64(),
            valid: None,
            eval_seconds: 0.0,
        };
        self.state.epoch = epoch;
        let due = epoch % cfg.eval_every == 0 || epoch == cfg.epochs;
        let evaluate = due && !self.data.valid.is_empty();
        // one evaluation-mode pass gives the trusts (refitted every epoch) and the validation ranking
        let t = Instant::now();
        let vectors = if evaluate || cfg.cl_modality_trust {
            let vt = self.model.vectors_and_trust(&self.params, 1.0);
            let (users, items, trust) = self.world.agree(vt)?;
            if cfg.cl_modality_trust {
                let trust: Vec<f64> = trust.iter().map(|&t| f64::from(t)).collect();
                self.model.set_modality_trust(&trust)?;
                self.state.modality_trust = trust;
            }
            Some((users, items))
        } else {
            None
        };
        self.profile.record(Stage::Evaluation, t.elapsed());
        if due {
            if self.data.valid.is_empty() {
                // no validation split: the latest parameters are the selected ones
                self.best = self.params.clone();
                self.state.best_epoch = epoch;
            } else if let Some((users, items)) = vectors {
                let t = Instant::now();
                // the epoch is selected at scale 0; the grid of scales is tried once, by `finish`, on
                // the best epoch's parameters
                let ((r, g), _, _) = self.validate_scales(users, items, false)?;
                let better = self.state.best_epoch == 0 || r > self.state.best_recall;
                log.eval_seconds = t.elapsed().as_secs_f64();
                self.profile.record(Stage::Evaluation, t.elapsed());
                log.valid = Some((r, g));
                if better {
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

    /// Restores the parameters of the best validation epoch (the latest ones when nothing was evaluated)
    /// and, with the content term, chooses the scale and taste share of the cold items' vectors on them
    /// ([`Trainer::validate`]'s grid, once per best epoch: [`TrainState::placed_at`]) and gives them to
    /// the model.
    ///
    /// # Errors
    /// [`Error::Param`] for a saved scale that is not finite and >= 0 (a hand-edited state); the errors of
    /// [`Trainer::validate`].
    pub fn finish(&mut self) -> Result<()> {
        if self.state.best_epoch > 0 {
            self.params = self.best.clone();
            self.place_cold_items()?;
        }
        self.model.set_cold_scale(self.state.cold_scale)?;
        self.model.set_taste_share(self.state.taste_share)?;
        self.choose_ego_share()
    }

    /// Chooses [`TrainState::ego_share`] of [`EGO_SHARES`] on the validation split, with the vectors the
    /// model serves (the cold items placed): the share with the best Recall@20 over every held-out item,
    /// the smallest of equals. 0 unless [`crate::model::RecGoatConfig::ego_share`], without a validation
    /// split, with a user-user branch, or without an ego map (the users' items do not predict their ego
    /// terms on held-out users).
    fn choose_ego_share(&mut self) -> Result<()> {
        self.state.ego_share = 0.0;
        self.state.ego_trials.clear();
        if !self.model.config().ego_share || self.data.valid.is_empty() {
            return Ok(());
        }
        let t = Instant::now();
        // every rank finishes: they agree on failures here
        let (users, items, fold) = self.world.agree(self.served(true))?;
        let Some(shift) = fold.and_then(|(fold, seen)| crate::recommend::ego_shift(&fold, &seen))
        else {
            return Ok(());
        };
        let par = self.model.backend().par();
        let mut best = (f64::NEG_INFINITY, 0.0);
        for share in EGO_SHARES {
            let moved = &users + &(&shift * share as f32);
            let vectors = (moved.view(), items.view());
            let recall = split_in(&self.world, self.data, vectors, Split::Valid, par)?
                .recall_ndcg(20)
                .0;
            self.state.ego_trials.push((share, recall));
            if recall > best.0 {
                best = (recall, share);
            }
        }
        self.state.ego_share = best.1;
        self.profile.record(Stage::Evaluation, t.elapsed());
        Ok(())
    }

    /// The vectors the model serves, the users' ego terms moved by [`TrainState::ego_share`], and, when
    /// `with_fold` or when the share needs them, the fold-in tables ([`crate::recommend::trainer_fold`]:
    /// `None` with a user-user branch) with their ego terms moved by the same share: the one place the
    /// share is applied. Local to the rank, with no exchange: [`Trainer::embeddings`] runs on one rank
    /// alone where only the root writes, and the parameters are the same on every rank.
    pub(crate) fn served(&self, with_fold: bool) -> Result<Served> {
        let (mut users, items) = self.model.embeddings(&self.params)?;
        let share = self.state.ego_share as f32;
        let mut fold = match with_fold || share > 0.0 {
            true => crate::recommend::trainer_fold(self, &items)?,
            false => None,
        };
        if let Some((fold, seen)) = fold.as_mut().filter(|_| share > 0.0) {
            crate::recommend::move_egos(fold, seen, share, &mut users);
        }
        Ok((users, items, fold))
    }

    /// Chooses the cold items' scale and taste share on the current parameters (the best epoch's, restored
    /// by [`Trainer::finish`]) with the content term and a validation split, unless the state already
    /// holds the choice made on that epoch's parameters.
    fn place_cold_items(&mut self) -> Result<()> {
        let st = &self.state;
        if !self.model.content_on() || self.data.valid.is_empty() || st.placed_at == st.best_epoch {
            return Ok(());
        }
        let t = Instant::now();
        let (_, chosen, trials) = self.validate()?;
        self.profile.record(Stage::Evaluation, t.elapsed());
        (self.state.cold_scale, self.state.taste_share) = chosen;
        self.state.cold_trials = trials;
        self.state.placed_at = self.state.best_epoch;
        Ok(())
    }

    /// Ranks the validation split with the current parameters: the Recall@20 and NDCG@20 that select the
    /// epoch, the scale and taste share of the cold items' vectors, and the scales tried. The selecting
    /// figures are over every held-out item, or, when the split also holds items without training
    /// interactions, over its
    /// warm items (with a content term: with the cold items out of the lists, the backbone alone), so that
    /// the epoch is the backbone's best whatever the share of new items. With the content term and such a
    /// split, the scale is chosen here, of a grid of scales ([`choose_cold_scale`]): among those that keep
    /// the warm items' Recall@20 within [`crate::model::RecGoatConfig::content_warm_tolerance`] of its value
    /// at scale 0, of those that keep the overall Recall@20 at or above its value at scale 0 (less
    /// [`crate::model::RecGoatConfig::content_overall_tolerance`]) and place more of the new items'
    /// held-out interactions than the one with the best overall Recall@20 does, the one that places the
    /// most (else the best one). With [`crate::model::RecGoatConfig::content_taste`] the grid of scales is
    /// tried at each of six taste shares (0 to 4), and the scale and share are chosen together; the share
    /// is 0 wherever the split holds no new item. With the content
    /// term and a split without such items, the probe items stand in for new ones: they are ranked through
    /// their content vectors instead of their own (the vectors a new item gets; their training pairs stay
    /// masked), their validation interactions as the cold ones. Their interactions are those of
    /// established items, so they cannot say what new items are worth, only what letting items scored by
    /// content into the lists costs the warm ones: the scale is then the largest that keeps the warm
    /// items' Recall@20 within the tolerance times probe / new items when the catalogue holds fewer new
    /// items than probe items (what the new items would cost; with no new item yet, the tolerance
    /// itself), and changes the ranking at all (0 when none does).
    /// Otherwise (no content term, or no validation interaction on a probe item) the scale is 1, the
    /// trusts' own calibration, and no scale is tried.
    ///
    /// # Errors
    /// The forward pass's and the evaluation's errors.
    pub fn validate(&self) -> Result<Validated> {
        let vectors = self
            .model
            .vectors_and_trust(&self.params, 1.0)
            .map(|(u, i, _)| (u, i));
        let (users, items) = self.world.agree(vectors)?;
        self.validate_scales(users, items, true)
    }

    /// [`Trainer::validate`] of the vectors `users` and `items` (the cold items at scale 1), the grid of
    /// scales tried only when `grid` (else only scale 0, which selects the epoch, is ranked).
    fn validate_scales(
        &self,
        users: Array2<f32>,
        items: Array2<f32>,
        grid: bool,
    ) -> Result<Validated> {
        let par = self.model.backend().par();
        let selecting = |m: &Metrics| {
            m.warm
                .as_ref()
                .map_or(m.recall_ndcg(20), |w| w.recall_ndcg(20))
        };
        let scales: &[f64] = if grid {
            &COLD_SCALES
        } else {
            &COLD_SCALES[..1]
        };
        let world = &self.world;
        let vectors = (users.view(), items.view());
        if !self.model.content_on() || !self.new_items_in_validation() {
            let m = split_in(world, self.data, vectors, Split::Valid, par)?;
            // no new item to validate the scale on: the probe items stand in for them, scored through
            // their content vectors, when validation holds some of their interactions
            let probe_held_out = || self.data.valid.iter().any(|p| self.model.is_probe[p.1]);
            if !(grid && self.model.content_on() && probe_held_out()) {
                return Ok((selecting(&m), (1.0, 0.0), Vec::new()));
            }
            let probe = self.model.embeddings_probe_as_new(&self.params, 1.0);
            let (pu, pi) = world.agree(probe)?;
            let all = split_scales_in(
                world,
                self.data,
                (pu.view(), pi.view()),
                Split::Valid,
                self.model.probe_items(),
                scales,
                par,
            )?;
            let (chosen, trials) = self.choose_scale(scales, &[0.0], &all, true);
            return Ok((selecting(&m), chosen, trials));
        }
        // with the taste term, each share is a grid of scales of the cold items' vectors `content + a taste`
        let taste = match grid {
            true => world.agree(self.model.taste_vectors(users.view(), items.view()))?,
            false => None,
        };
        let shares: &[f64] = if taste.is_some() {
            &TASTE_SHARES
        } else {
            &TASTE_SHARES[..1]
        };
        let mut all = Vec::with_capacity(shares.len() * scales.len());
        for &share in shares {
            let placed = match (&taste, share > 0.0) {
                (Some(t), true) => Some(&items + &(t * share as f32)),
                _ => None,
            };
            let vectors = (users.view(), placed.as_ref().unwrap_or(&items).view());
            all.extend(split_scales_in(
                world,
                self.data,
                vectors,
                Split::Valid,
                &[],
                scales,
                par,
            )?);
        }
        let (chosen, trials) = self.choose_scale(scales, shares, &all, false);
        // COLD_SCALES[0] is 0: the backbone alone selects the epoch
        Ok((selecting(&all[0]), chosen, trials))
    }

    /// Of the scales ranked in `all` (one metrics each, the first at scale 0), the one [`choose_cold_scale`]
    /// keeps (`spend` true: the probe items stand in for new items, and measure only what they cost the
    /// warm ones; the warm tolerance is then scaled by probe / new items when the catalogue has fewer new
    /// items than probe items); with every trial.
    fn choose_scale(
        &self,
        scales: &[f64],
        shares: &[f64],
        all: &[Metrics],
        spend: bool,
    ) -> ((f64, f64), Vec<ColdTrial>) {
        let part = |g: &Option<Box<Metrics>>| g.as_ref().map_or(f64::NAN, |g| g.recall_ndcg(20).0);
        let grid = shares
            .iter()
            .flat_map(|&a| scales.iter().map(move |&s| (s, a)));
        let trials: Vec<ColdTrial> = (grid.zip(all))
            .map(|((scale, share), m)| ColdTrial {
                scale,
                share,
                recall: m.recall_ndcg(20).0,
                warm: part(&m.warm),
                cold: part(&m.cold),
            })
            .collect();
        let mut tolerance = self.model.config().content_warm_tolerance;
        if spend {
            // the probe items' cost to the warm items grows with how many of them are in the lists: what
            // the catalogue's new items would cost is theirs times new / probe items (with no new item yet,
            // as many as probe items are assumed)
            let new = self.model.cold_items().iter().filter(|&&c| c).count();
            let probe = self.model.probe_items().len();
            if new > 0 && probe > new {
                tolerance = (tolerance * probe as f64 / new as f64).min(1.0);
            }
        }
        let overall = match spend {
            true => None,
            false => Some(self.model.config().content_overall_tolerance),
        };
        let k = choose_cold_scale(&trials, tolerance, overall);
        ((trials[k].scale, trials[k].share), trials)
    }

    /// Final user and item vectors of the current parameters (evaluation mode, dropout off), the users' ego
    /// terms moved by [`TrainState::ego_share`] (chosen by [`Trainer::finish`]).
    ///
    /// # Errors
    /// The model's forward errors.
    pub fn embeddings(&self) -> Result<(Array2<f32>, Array2<f32>)> {
        self.served(false).map(|(users, items, _)| (users, items))
    }

    /// Ranks all items for a split with the MMRec protocol (Recall / NDCG / Precision / Hit at 10, 20, 50),
    /// over the users with training interactions ([`Dataset::cold_users`] are left out); when the split
    /// holds items without training interactions, [`Metrics::warm`] and [`Metrics::cold`] give them apart
    /// ([`crate::eval::evaluate_split`]).
    ///
    /// # Errors
    /// The model's forward errors, and those of [`crate::eval::evaluate_grouped`].
    pub fn evaluate(&self, split: Split) -> Result<Metrics> {
        let (users, items) = self.world.agree(self.embeddings())?;
        let par = self.model.backend().par();
        let vectors = (users.view(), items.view());
        split_in(&self.world, self.data, vectors, split, par)
    }
}
