//! Wall-clock time per model stage, accumulated over training steps.

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// A stage of a training step (declared in [`Stage::ALL`] order, so `stage as usize` indexes
/// [`Profile::seconds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// LightGCN propagation (forward and backward).
    Propagation,
    /// Projections and graph attention of every branch (forward and backward).
    Gat,
    /// OAT and the sample-level OT loss (forward and backward).
    Transport,
    /// Fusion: weights, LayerNorm, dropout, L2 normalisation (forward and backward).
    Fusion,
    /// The contrastive loss and its gradient.
    Contrastive,
    /// BPR and the regulariser.
    Loss,
    /// Adam updates.
    Optimizer,
    /// Negative sampling and batching.
    Sampling,
    /// Validation / test ranking.
    Evaluation,
    /// The device-resident training step on the GPU (forward, losses, backward and the embedding table's
    /// Adam step, with the per-stage work queued back to back): see [`crate::model::Trainer`].
    Device,
    /// Data-parallel training's exchanges between ranks: the gradient's all-reduce and the agreement on
    /// failures ([`crate::dist::World`]).
    Exchange,
}

impl Stage {
    /// Every stage, in report order.
    pub const ALL: [Stage; 11] = [
        Stage::Propagation,
        Stage::Gat,
        Stage::Transport,
        Stage::Fusion,
        Stage::Contrastive,
        Stage::Loss,
        Stage::Optimizer,
        Stage::Sampling,
        Stage::Evaluation,
        Stage::Device,
        Stage::Exchange,
    ];

    /// Short name.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Propagation => "propagation",
            Stage::Gat => "gat",
            Stage::Transport => "transport",
            Stage::Fusion => "fusion",
            Stage::Contrastive => "contrastive",
            Stage::Loss => "bpr+reg",
            Stage::Optimizer => "optimizer",
            Stage::Sampling => "sampling",
            Stage::Evaluation => "evaluation",
            Stage::Device => "device step",
            Stage::Exchange => "exchange",
        }
    }
}

/// Seconds spent per [`Stage`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Seconds per stage, indexed like [`Stage::ALL`].
    pub seconds: [f64; 11],
}

impl Profile {
    /// A timestamp for [`Profile::add`].
    pub fn start() -> Instant {
        Instant::now()
    }

    /// Adds the time since `since` to `stage` when a profile is being kept.
    pub fn add(profile: &mut Option<&mut Profile>, stage: Stage, since: Instant) {
        if let Some(p) = profile.as_deref_mut() {
            p.record(stage, since.elapsed());
        }
    }

    /// Adds a duration to a stage.
    pub fn record(&mut self, stage: Stage, d: Duration) {
        self.seconds[stage as usize] += d.as_secs_f64();
    }

    /// Seconds of one stage.
    pub fn get(&self, stage: Stage) -> f64 {
        self.seconds[stage as usize]
    }

    /// Total seconds.
    pub fn total(&self) -> f64 {
        self.seconds.iter().sum()
    }

    /// `(stage name, seconds, share of the total)` for every stage that took time.
    pub fn breakdown(&self) -> Vec<(&'static str, f64, f64)> {
        let total = self.total().max(f64::MIN_POSITIVE);
        Stage::ALL
            .iter()
            .zip(&self.seconds)
            .filter(|(_, &s)| s > 0.0)
            .map(|(st, &s)| (st.name(), s, s / total))
            .collect()
    }
}
