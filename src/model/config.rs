//! [`RecGoatConfig`]: every setting of the reference model and its training, with the three presets.

use crate::error::{Error, Result};
use crate::graph::KnnMethod;
use serde::{Deserialize, Serialize};

/// Which item feature matrices of the dataset the model uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Modalities {
    /// Every feature matrix the dataset carries, in its order. On a dataset without any, the terms that act
    /// on a modality (the modality contrastive terms, the content term) have none to act on and the model
    /// trains its backbone with the rest (for [`RecGoatConfig::recgoat`]: BPR and the user-item contrastive
    /// term); the parts built on a modality (OAT, graph attention, the fusion of views, the released code's
    /// contrastive terms) are refused by name when the model is built.
    All,
    /// These, by name, in this order; an empty list is the ID-only model (LightGCN, with
    /// [`Cmcl::Paper`]'s user-item contrastive term when `cl_weight > 0`).
    Named(Vec<String>),
}

/// How the loss reaches the embeddings through the OAT transport plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtGradient {
    /// The plan is a constant (the released code's `no_grad`).
    Detached,
    /// Implicit differentiation of the converged plan (the paper reading).
    Implicit,
    /// Backpropagation through this many Sinkhorn iterations.
    Unrolled(usize),
}

/// The contrastive (CMCL) objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmcl {
    /// Paper: `InfoNCE(user, fused_pos) + mean_m InfoNCE(modality_m, fused)` on the positive items.
    Paper,
    /// Released code: `0.5 InfoNCE(user, fused_pos) + 0.5 mean (1 - InfoNCE)` over the view pairs of the
    /// positive and of the negative items (pushes an item's views apart; RECGOAT.md section 4).
    OfficialCode,
}

/// How the views are weighted in the fusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fusion {
    /// Learnable logits through a softmax, initialised uniform (the paper reading).
    Softmax,
    /// Unconstrained learnable scalars, the collaborative one initialised to 0.15 and the modalities sharing
    /// 0.85 (the released code: 0.15 cf, 0.05 image, 0.80 text).
    Free,
    /// A residual on the backbone: `z_cf + w_g h + sum_m g_m a_m`, the collaborative items with weight 1,
    /// the item-graph view's free scalar `w_g` initialised to 1 and the modality gates `g_m` to
    /// `fusion_gate_init`, so that the model starts as its ID backbone (plus the item graph), and the
    /// modalities add what the loss supports; `weight_decay` applies to the gates.
    Residual,
    /// No fusion: the item vectors are the backbone's (`z_cf`), and the modalities act through the
    /// contrastive and content terms alone. Their encoders then only run on the rows those terms use.
    None,
}

/// Every setting of the reference RecGOAT model and its training loop. Start from a preset
/// ([`RecGoatConfig::recgoat`], [`RecGoatConfig::paper`], [`RecGoatConfig::official_code`],
/// [`RecGoatConfig::lightgcn`]) and change
/// fields; [`RecGoatConfig::validate`] (called by the model and the trainer) names any bad field.
///
/// # Example
/// ```
/// use recgoat_core::model::RecGoatConfig;
/// let mut cfg = RecGoatConfig::recgoat();
/// cfg.embedding_dim = 32;
/// cfg.validate().unwrap();
/// cfg.gat_heads = 5; // does not divide 32
/// assert!(cfg.validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecGoatConfig {
    /// Preset name this configuration started from (informational, shown in tables).
    pub name: String,
    /// Embedding size d.
    pub embedding_dim: usize,
    /// LightGCN propagation layers L.
    pub lightgcn_layers: usize,
    /// Item feature matrices used as modalities.
    pub modalities: Modalities,
    /// L2-normalise each feature row before the projection (raw-scale features such as VGGish need it).
    pub normalize_features: bool,
    /// GAT layers per modality branch (0: projection only).
    pub gat_layers: usize,
    /// Attention heads per GAT layer (must divide `embedding_dim`).
    pub gat_heads: usize,
    /// GATv2 scoring instead of GATConv.
    pub gatv2: bool,
    /// Neighbours per node in the kNN graphs.
    pub knn_k: usize,
    /// How the kNN graphs (modality, user-user and item-item) are found: exact (every preset), or
    /// approximate through HNSW for catalogues where exact kNN's `O(items^2)` work is too slow
    /// (docs/SCALE.md: recall and build times). From text: `knn_method={"Hnsw":{"ef_construction":100,
    /// "ef_search":100,"seed":0}}`.
    #[serde(default)]
    pub knn_method: KnnMethod,
    /// OAT (the transport map `M (d T + Delta)`); off: the modality embedding enters the fusion as is.
    pub oat: bool,
    /// Barycentric map `d T` (paper) rather than the raw plan `T` (released code).
    pub oat_barycentric: bool,
    /// Cost scale `s` of the dimension cost.
    pub oat_cost_scale: f64,
    /// OAT eps as a fraction of the mean cost (`None`: `oat_eps_absolute`). The scale is re-measured every
    /// step and held constant in the gradient (a stop-gradient, as OTT-JAX does for relative eps).
    pub oat_eps_relative: Option<f64>,
    /// OAT eps as an absolute value, used when `oat_eps_relative` is `None` (released code: 0.01).
    pub oat_eps_absolute: f64,
    /// Iteration cap of the OAT Sinkhorn solve.
    pub oat_iters: usize,
    /// Stopping tolerance (L1 marginal error) of the OAT solve.
    pub oat_tol: f64,
    /// Gradient through the plan.
    pub oat_gradient: OtGradient,
    /// Weight of the sample-level OT loss (debiased Sinkhorn divergence between aligned and collaborative rows
    /// of the batch items, per modality); 0 turns it off.
    pub ot_sample_weight: f64,
    /// Absolute eps of the sample-level divergence (its rows are unit vectors, so costs lie in `[0, 4]`).
    pub ot_sample_eps: f64,
    /// Stopping tolerance of the sample-level solves.
    pub ot_sample_tol: f64,
    /// Weight of the contrastive loss (0: off). `recgoat()` uses 0.05: above 0 and 0.1 on Last.fm-2k's validation
    /// Recall@20 (docs/ROBUSTNESS.md).
    pub cl_weight: f64,
    /// InfoNCE temperature.
    pub cl_temperature: f64,
    /// Run the contrastive term on the batch rows with a user and a positive item not seen earlier in the
    /// batch ([`Batch::distinct_rows`](super::Batch::distinct_rows)), so that a duplicate user or item is
    /// never an in-batch negative of itself. `recgoat()` and `paper()` set it: with every row, the
    /// paper's reading lost to `lightgcn()` on Last.fm-2k at 100 epochs; with distinct rows it won there
    /// (docs/RESULTS.md). `official_code()` keeps every row, duplicates included, as the released code does.
    #[serde(default)]
    pub cl_distinct_rows: bool,
    /// At most this many rows per batch for the contrastive term (0, every preset: no cap): the first ones,
    /// in batch order, of the rows `cl_distinct_rows` leaves. InfoNCE costs the square of its rows, and with
    /// distinct rows their count grows with the data (a batch of 2048 has about 670 on Last.fm-2k and 1,390
    /// on Baby, whose users and items repeat less), so without a cap a batch costs more as the data grows. With a cap the
    /// batch cost is fixed and, with `steps_per_epoch`, the epoch linear in the interactions; docs/SCALE.md
    /// measures what it costs in accuracy.
    #[serde(default)]
    pub cl_max_rows: usize,
    /// At most this many rows for the modality terms (`cl_modality_weight`), the first of the contrastive
    /// term's rows (0: all of them): the user-item term keeps its rows while the modality terms, which also
    /// run the encoders, cost less. `recgoat()` takes 256 (chosen on validation: on every entry of the
    /// robustness suite its mean validation Recall@20 is within one std of all rows', at about half to two
    /// thirds of the epoch), the other presets 0.
    #[serde(default)]
    pub cl_modality_max_rows: usize,
    /// Contrastive objective.
    pub cmcl: Cmcl,
    /// Weight of [`Cmcl::Paper`]'s modality terms (each modality against the fused item) relative to its
    /// user term; 0 leaves them out.
    #[serde(default = "one")]
    pub cl_modality_weight: f64,
    /// Weigh each modality's contrastive term by the modality's trust, `min(t_m, 1)`
    /// ([`crate::model::Forward::content_trust`], refitted after every epoch; 0 before the first): a
    /// modality whose encoder does not predict the items' vectors on the probe items pulls nothing, one
    /// that does pulls at up to `cl_modality_weight`. Needs the content term.
    #[serde(default)]
    pub cl_modality_trust: bool,
    /// View weighting in the fusion.
    pub fusion: Fusion,
    /// Initial fusion weight of the collaborative view, the modalities sharing the rest equally (in `(0, 1)`);
    /// `None`: uniform for softmax logits, 0.15 for free scalars (the released code's 0.15 cf / 0.05 image /
    /// 0.80 text).
    pub fusion_cf_init: Option<f64>,
    /// Initial modality gates of [`Fusion::Residual`].
    #[serde(default)]
    pub fusion_gate_init: f64,
    /// The residual gates' learning rate as a multiple of `lr` (0: the gates stay at their initial value).
    #[serde(default = "one")]
    pub fusion_gate_lr: f64,
    /// Layers `L` of the item-item view `h = S^L E_items`: the items' ID embeddings propagated over the frozen
    /// modality graph `S` (cosine kNN over the modalities' unit feature rows side by side, symmetrised and
    /// normalised; built once), a view of [`Fusion::Residual`]. 0: off.
    #[serde(default)]
    pub item_graph_layers: usize,
    /// Neighbours per item in `S`.
    #[serde(default)]
    pub item_graph_k: usize,
    /// LayerNorm and L2-normalise the fused item vectors (RECGOAT.md section 3). Off: the weighted sum of
    /// the views (after dropout) is the item vector, so item norms (popularity) survive into the scores.
    pub fusion_normalize: bool,
    /// The user-user graph-attention branch (paper only): kNN over user profiles (mean of the features of the
    /// user's training items), projection and GAT, added to the LightGCN user vector.
    pub user_user: bool,
    /// Dropout probability (GAT feature and attention dropout, branch output, fusion). `recgoat()` and
    /// `paper()` use 0: the paper's 0.1 gave a lower validation Recall@20 on Last.fm-2k with the
    /// paper's fusion (docs/RESULTS.md); `official_code()` keeps 0.1.
    pub dropout: f64,
    /// Weight of `mean(||E0_u||^2 + ||E0_pos||^2 + ||E0_neg||^2)`. `recgoat()`, `paper()` and
    /// `lightgcn()` use 1e-3: with it the paper's reading kept improving on Last.fm-2k's validation split to
    /// epoch 179 of 200, where RECGOAT.md's 1e-4 peaked at epoch 86 (docs/RESULTS.md); `official_code()`
    /// keeps 1e-4.
    pub reg_weight: f64,
    /// Adam learning rate.
    pub lr: f64,
    /// L2 weight decay (added to the gradient) of the projections, graph-attention layers, OAT maps and the
    /// residual fusion's gates: the embedding table has `reg_weight`, and the softmax or free fusion weights,
    /// which scale the backbone too, have none.
    #[serde(default)]
    pub weight_decay: f64,
    /// Weight of the content term, which trains each modality's encoder (its branch: the projection and any
    /// graph-attention layers) to output the item's final vector, held fixed (distillation from the warm
    /// items): `mean over items and modalities of ||z^m_i - z_i||^2`, on the batch's distinct positive items
    /// that are not probe items ([`RecGoatConfig::content_probe`]). The encoders then place items that have
    /// no training interaction: their vector is `sum_m t_m z^m_i`, the per-modality trusts `t_m` (>= 0)
    /// fitted by least squares in score space on the probe items, which the term never trains on
    /// ([`crate::model::Forward::content_trust`]). 0: off (items without training interactions keep
    /// whatever the model gives them; an ID-only model gives them nothing to rank them by).
    #[serde(default)]
    pub content_weight: f64,
    /// Fraction of the items with training interactions held out of the content term as probe items, on
    /// which the trusts are fitted (a modality whose encoder does not generalise gets a trust near 0).
    #[serde(default = "default_probe")]
    pub content_probe: f64,
    /// At most this many items per batch for the content term (0: every distinct positive item).
    #[serde(default)]
    pub content_max_rows: usize,
    /// Weight, inside the content term, of its ranking part: each encoder's vectors of the term's items
    /// scored against the vectors of users who chose them (held fixed), a softmax cross-entropy over the
    /// batch's items with raw dot products as logits (the item each user chose against the others'
    /// items), so that the content vectors also rank as scores do rather than only regress to the items'
    /// vectors (DropoutNet / CLCRec's reading of cold start). 0: distillation alone.
    #[serde(default)]
    pub content_rank_weight: f64,
    /// How much of the warm items' validation Recall@20 the cold items may cost when
    /// [`crate::model::Trainer::validate`] scales the cold items' vectors on a validation split that holds
    /// items without training interactions, or, without them, on the probe items ranked as new (0.1, the
    /// default: 10 %; 1: any, the scale that maximises the overall Recall@20; 0: none). A cold item placed in a list takes the place of a warm one: this is how
    /// many warm hits the new items may take. Where new items hold a live catalogue's share of the held-out
    /// interactions, 10 % lets in what maximises the overall Recall@20; where they hold most of them, it
    /// keeps them from taking over the lists (docs/COLD-START.md).
    #[serde(default = "default_warm_tolerance")]
    pub content_warm_tolerance: f64,
    /// How far below the overall validation Recall@20 of the backbone alone (no new item in the lists)
    /// the cold items' placement may take it so that more new items reach their users, when the validation
    /// split holds items without training interactions (0, the default: not below it).
    /// [`crate::model::Trainer::validate`] takes the placement that puts the most of the new items'
    /// held-out interactions in the lists among those that keep the overall Recall@20 at or above that
    /// floor and the warm items within [`RecGoatConfig::content_warm_tolerance`], when it places more than
    /// the placement with the best overall figure (docs/COLD-START.md). At 0 the new items enter as far as
    /// they pay for the warm hits they take; above 0 they may cost the overall figure that share.
    #[serde(default = "default_overall_tolerance")]
    pub content_overall_tolerance: f64,
    /// Place the cold items through closed-form content encoders: per modality, the ridge regression of
    /// the items' current vectors on their feature rows over the items the content term trains on, its
    /// penalty chosen on the probe items, refitted whenever cold items are placed; features wider than
    /// 1,024 columns are first projected to 512 by a fixed random projection (the map is kept on the
    /// original columns). The trained encoders still carry the
    /// contrastive modality terms. Off: the encoders the content term trains by gradient steps place them.
    /// On in `recgoat()` (chosen on validation, docs/COLD-START.md); a configuration saved without the field
    /// reads it as off, as it was trained.
    #[serde(default)]
    pub content_ridge: bool,
    /// With [`RecGoatConfig::content_ridge`], each closed-form encoder may also lean on the items it is
    /// fitted on: a cold item's nearest of them by feature cosine, their vectors averaged with softmax
    /// weights, blended with the linear map at a share chosen on the probe items with the neighbour count
    /// and temperature (share 0 among the choices: the linear map alone). On in `recgoat()` (chosen on
    /// validation, docs/COLD-START.md); a configuration saved without the field reads it as off.
    #[serde(default)]
    pub content_neighbours: bool,
    /// With the content term, a new item's vector also gets a taste term: how well its features match the
    /// users' tastes (their training items' features), read in the space of the ID vectors through a linear
    /// map fitted over the users (`docs/COLD-START.md`, "The taste term"). Its share is chosen on
    /// validation with the scale, when the validation split holds new items (0 otherwise). On in
    /// `recgoat()`; a configuration saved without the field reads it as off.
    #[serde(default)]
    pub content_taste: bool,
    /// After training, choose on validation how far each trained user's ego term moves towards the one
    /// its training items predict (the new users' ego map; [`crate::model::TrainState::ego_share`], of
    /// [`crate::model::EGO_SHARES`]): on sparse data a user's own ego term, learned from a few
    /// interactions, can rank worse than the prediction. On in `recgoat()`, off in the other presets
    /// (`lightgcn()` stays the standard LightGCN); a configuration saved without the field reads it as off.
    #[serde(default)]
    pub ego_share: bool,
    /// Triples per batch.
    pub batch_size: usize,
    /// Optimiser steps per epoch. 0 (every preset): one step per batch, each with its own forward and
    /// backward pass over the whole graphs, as the released code trains; an epoch then costs
    /// `batches x graph`, which grows with the square of the data. `k > 0`: the epoch's batches are split
    /// into `k` groups of consecutive batches; a group shares one forward pass, its batches' gradients are
    /// averaged through one backward pass and applied as one step (gradient accumulation), so an epoch costs
    /// `k` graph passes plus the batch losses: linear in the interactions. Fewer steps per epoch need more
    /// epochs or a higher `lr`; docs/SCALE.md measures the trade.
    #[serde(default)]
    pub steps_per_epoch: usize,
    /// From this many training interactions on, a configuration with `steps_per_epoch` 0 trains with the
    /// grouped schedule (8 steps per epoch, and, with a contrastive term, at most 512 of a batch's rows in
    /// it, `cl_max_rows`) instead, and the trainer says so ([`crate::model::Trainer::schedule_note`]). 0:
    /// never. Default 200,000: above the bundled datasets (Baby has 118,551), where the exact schedule's
    /// epoch, quadratic in the data, is already 2.4 times the grouped one's (docs/SCALE.md).
    #[serde(default = "default_auto_schedule_from")]
    pub auto_schedule_from: usize,
    /// Maximum epochs.
    pub epochs: usize,
    /// Evaluate on the validation split every this many epochs.
    pub eval_every: usize,
    /// Stop after this many evaluations without a better validation Recall@20 (0: never stop early).
    pub patience: usize,
    /// Seed of initialisation, sampling and dropout.
    pub seed: u64,
}

/// The default of fields that scale something.
fn one() -> f64 {
    1.0
}

fn default_auto_schedule_from() -> usize {
    200_000
}

/// The default of [`RecGoatConfig::content_warm_tolerance`].
fn default_warm_tolerance() -> f64 {
    0.1
}

/// The default of [`RecGoatConfig::content_overall_tolerance`].
fn default_overall_tolerance() -> f64 {
    0.0
}

/// The default probe fraction of the content term.
fn default_probe() -> f64 {
    0.1
}

impl Default for RecGoatConfig {
    fn default() -> Self {
        Self::recgoat()
    }
}

impl RecGoatConfig {
    /// The recommended model (the default): the LightGCN backbone scores warm items (`z_u . z_i`,
    /// unnormalised; no fusion, [`Fusion::None`]), trained with BPR and the paper's CMCL at weight 0.05: the
    /// user against its positive item and, at a quarter of that weight (`cl_modality_weight`), each modality's
    /// encoder against the item (on the batch rows with distinct users and items), which pulls items with
    /// similar features together. Each modality's encoder (a projection of its features, decayed at 0.01) is
    /// also distilled towards the items' vectors (`content_weight`), so that an item without training
    /// interactions is ranked from its features, through the trusts fitted on probe items
    /// ([`RecGoatConfig::content_weight`]). Graph attention, OAT, fusion, the item-item view and trust-weighted
    /// modality terms stay settings ([`RecGoatConfig::paper`] has the paper's parts all on); none raised
    /// validation Recall@20 on Last.fm-2k and Baby (docs/ROBUSTNESS.md has the ablations). On a dataset
    /// without item features it trains the backbone with the user-item term alone ([`Modalities::All`]).
    pub fn recgoat() -> Self {
        RecGoatConfig {
            name: "recgoat".into(),
            embedding_dim: 64,
            lightgcn_layers: 3,
            modalities: Modalities::All,
            normalize_features: true,
            gat_layers: 0,
            gat_heads: 8,
            gatv2: false,
            knn_k: 20,
            knn_method: KnnMethod::Exact,
            oat: false,
            oat_barycentric: true,
            oat_cost_scale: 100.0,
            oat_eps_relative: Some(0.05),
            oat_eps_absolute: 0.01,
            oat_iters: 500,
            oat_tol: 1e-5,
            oat_gradient: OtGradient::Implicit,
            ot_sample_weight: 0.0,
            ot_sample_eps: 0.05,
            ot_sample_tol: 1e-4,
            cl_weight: 0.05,
            cl_temperature: 0.2,
            cl_distinct_rows: true,
            cl_max_rows: 0,
            cl_modality_max_rows: 256,
            cmcl: Cmcl::Paper,
            cl_modality_weight: 0.25,
            cl_modality_trust: false,
            fusion: Fusion::None,
            fusion_cf_init: None,
            fusion_gate_init: 0.0,
            fusion_gate_lr: 0.0,
            item_graph_layers: 0,
            item_graph_k: 10,
            fusion_normalize: false,
            user_user: false,
            dropout: 0.0,
            reg_weight: 1e-3,
            lr: 1e-3,
            weight_decay: 0.01,
            content_weight: 1.0,
            content_probe: 0.1,
            content_max_rows: 128,
            content_rank_weight: 0.0,
            content_warm_tolerance: default_warm_tolerance(),
            content_overall_tolerance: default_overall_tolerance(),
            content_ridge: true,
            content_neighbours: true,
            content_taste: true,
            ego_share: true,
            batch_size: 2048,
            steps_per_epoch: 0,
            auto_schedule_from: default_auto_schedule_from(),
            epochs: 200,
            eval_every: 1,
            patience: 20,
            seed: 2026,
        }
    }

    /// The paper's RecGOAT, read with the library's numerical fixes: one graph-attention layer per modality,
    /// OAT (log-domain Sinkhorn, implicit gradients through the plan, barycentric map `d T + Delta`),
    /// softmax fusion weights with LayerNorm and L2 normalisation, CMCL (modality vs fused) at weight 0.05
    /// on the batch rows with distinct users and items. Every part of the paper in one configuration, for
    /// comparison; no content term (the paper has none: its items without training interactions keep their
    /// untrained ID part in the fusion). [`RecGoatConfig::recgoat`] is the recommended model.
    pub fn paper() -> Self {
        RecGoatConfig {
            name: "paper".into(),
            gat_layers: 1,
            cl_modality_weight: 1.0,
            cl_modality_trust: false,
            fusion_gate_lr: 1.0,
            oat: true,
            cl_weight: 0.05,
            fusion: Fusion::Softmax,
            fusion_normalize: true,
            weight_decay: 0.0,
            content_weight: 0.0,
            ego_share: false,
            ..Self::recgoat()
        }
    }

    /// The released code's semantics (RECGOAT.md sections 3-5 and 7) for side-by-side comparison: plan
    /// without gradient and without the factor `d`, absolute eps 0.01 with 100 iterations, free fusion
    /// scalars, the `1 - InfoNCE` CMCL at weight 0.1 over every batch row, dropout 0.1, regulariser 1e-4. The
    /// solve itself stays log-domain (the released scaling-domain solve underflows to a zero plan); evaluation
    /// follows MMRec's protocol, not the released code's.
    pub fn official_code() -> Self {
        RecGoatConfig {
            name: "official_code".into(),
            gat_layers: 1,
            cl_modality_weight: 1.0,
            fusion_gate_lr: 1.0,
            oat: true,
            oat_barycentric: false,
            oat_eps_relative: None,
            oat_eps_absolute: 0.01,
            oat_iters: 100,
            oat_gradient: OtGradient::Detached,
            cl_modality_trust: false,
            cl_weight: 0.1,
            cl_distinct_rows: false,
            cl_max_rows: 0,
            cl_modality_max_rows: 0,
            dropout: 0.1,
            reg_weight: 1e-4,
            cmcl: Cmcl::OfficialCode,
            fusion: Fusion::Free,
            fusion_normalize: true,
            weight_decay: 0.0,
            content_weight: 0.0,
            ego_share: false,
            ..Self::recgoat()
        }
    }

    /// The ID-only backbone: LightGCN (no modalities, no OAT, no contrastive term), scores `z_u . z_i`.
    /// `reg_weight` 1e-3: of {1e-4, 1e-3}, the better on Baby's validation split (and the one that reproduces
    /// MMRec's published LightGCN figures there).
    pub fn lightgcn() -> Self {
        RecGoatConfig {
            name: "lightgcn".into(),
            reg_weight: 1e-3,
            modalities: Modalities::Named(Vec::new()),
            oat: false,
            cl_weight: 0.0,
            ot_sample_weight: 0.0,
            weight_decay: 0.0,
            content_weight: 0.0,
            content_max_rows: 0,
            content_rank_weight: 0.0,
            cl_modality_trust: false,
            ego_share: false,
            ..Self::recgoat()
        }
    }

    /// A preset by name: `recgoat`, `paper` (or `paper_reading`), `official_code` (or `official`),
    /// `lightgcn`.
    ///
    /// # Errors
    /// [`Error::Param`] for an unknown name.
    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "recgoat" => Ok(Self::recgoat()),
            "paper" | "paper_reading" => Ok(Self::paper()),
            "official_code" | "official" => Ok(Self::official_code()),
            "lightgcn" => Ok(Self::lightgcn()),
            other => Err(Error::param(
                "RecGoatConfig::preset",
                "name",
                other,
                "one of recgoat, paper, official_code, lightgcn",
            )),
        }
    }

    /// Sets one field from `field=value` text, the value read as JSON (`lr=0.002`, `fusion="Residual"`,
    /// `oat_gradient={"Unrolled":10}`) or, when it is not JSON, as a string; the result is validated.
    ///
    /// # Errors
    /// [`Error::Param`] for text without `=`, an unknown field, a value of the wrong type, or an invalid result
    /// (`self` unchanged).
    ///
    /// # Example
    /// ```
    /// use recgoat_core::model::{Fusion, RecGoatConfig};
    /// let mut cfg = RecGoatConfig::recgoat();
    /// cfg.set("fusion=Residual").unwrap();
    /// assert_eq!(cfg.fusion, Fusion::Residual);
    /// assert!(cfg.set("no_such_field=1").is_err());
    /// ```
    pub fn set(&mut self, assignment: &str) -> Result<()> {
        const OP: &str = "RecGoatConfig::set";
        let bad = |why: String| Error::param(OP, "assignment", assignment, why);
        let (key, text) =
            (assignment.split_once('=')).ok_or_else(|| bad("expected field=value".into()))?;
        let (key, text) = (key.trim(), text.trim());
        let mut json = serde_json::to_value(&*self).map_err(|e| bad(e.to_string()))?;
        let slot = (json.get_mut(key)).ok_or_else(|| bad(format!("no field named {key:?}")))?;
        *slot = match serde_json::from_str(text) {
            Ok(v) => v,
            // a number JSON cannot hold (1e999 overflows f64) is not a string either
            Err(_) if slot.is_number() || text.parse::<f64>().is_ok() => {
                let why = format!("{key} takes a finite number; `{text}` is not one");
                return Err(bad(why));
            }
            Err(_) => text.into(),
        };
        let cfg: RecGoatConfig =
            serde_json::from_value(json).map_err(|e| bad(format!("{key} = `{text}`: {e}")))?;
        cfg.validate()?;
        *self = cfg;
        Ok(())
    }

    /// The configuration a trainer uses on `interactions` training pairs: this one, or, from
    /// [`RecGoatConfig::auto_schedule_from`] on when `steps_per_epoch` is 0, the grouped schedule (8 steps
    /// per epoch; with a contrastive term and no `cl_max_rows`, at most 512 rows in it), with a note that
    /// says what changed.
    ///
    /// # Example
    /// ```
    /// use recgoat_core::model::RecGoatConfig;
    /// let cfg = RecGoatConfig::recgoat();
    /// assert_eq!(cfg.scheduled_for(44_327).0, cfg); // Last.fm-2k: the exact schedule
    /// let (large, note) = cfg.scheduled_for(2_000_000);
    /// assert_eq!((large.steps_per_epoch, large.cl_max_rows), (8, 512));
    /// assert!(note.unwrap().contains("grouped schedule"));
    /// ```
    pub fn scheduled_for(&self, interactions: usize) -> (RecGoatConfig, Option<String>) {
        let from = self.auto_schedule_from;
        if self.steps_per_epoch > 0 || from == 0 || interactions < from {
            return (self.clone(), None);
        }
        let mut cfg = self.clone();
        cfg.steps_per_epoch = 8;
        let mut what = format!("steps_per_epoch = {}", cfg.steps_per_epoch);
        if cfg.cl_weight > 0.0 && cfg.cl_max_rows == 0 {
            cfg.cl_max_rows = 512;
            what += &format!(", cl_max_rows = {}", cfg.cl_max_rows);
        }
        let note = format!(
            "{interactions} training interactions (from {from} on, auto_schedule_from): the grouped \
             schedule, linear in the data, instead of one step per batch ({what}; set steps_per_epoch to \
             choose, or auto_schedule_from = 0 for the exact schedule)"
        );
        (cfg, Some(note))
    }

    /// Whether the model uses no modality (pure LightGCN scoring).
    pub fn id_only(&self) -> bool {
        matches!(&self.modalities, Modalities::Named(v) if v.is_empty())
    }

    /// Checks every field.
    ///
    /// # Errors
    /// [`Error::Param`] naming the first bad field and its value.
    pub fn validate(&self) -> Result<()> {
        const OP: &str = "RecGoatConfig";
        // sizes a file or a caller claims are bounded before anything is allocated for them
        let within = |name: &'static str, v: usize, (lo, hi): (usize, usize)| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(Error::param(OP, name, v, format!("must be in {lo}..={hi}")))
            }
        };
        let positive = |name, v| within(name, v, (1, 1 << 30));
        within("embedding_dim", self.embedding_dim, (1, 1 << 16))?;
        positive("batch_size", self.batch_size)?;
        within("steps_per_epoch", self.steps_per_epoch, (0, 1 << 30))?;
        within("cl_max_rows", self.cl_max_rows, (0, 1 << 30))?;
        within(
            "cl_modality_max_rows",
            self.cl_modality_max_rows,
            (0, 1 << 30),
        )?;
        within("content_max_rows", self.content_max_rows, (0, 1 << 30))?;
        positive("epochs", self.epochs)?;
        positive("eval_every", self.eval_every)?;
        positive("oat_iters", self.oat_iters)?;
        within("gat_layers", self.gat_layers, (0, 64))?;
        within("lightgcn_layers", self.lightgcn_layers, (0, 64))?;
        within("gat_heads", self.gat_heads, (0, 1 << 10))?;
        within("knn_k", self.knn_k, (0, 1 << 12))?;
        within("item_graph_layers", self.item_graph_layers, (0, 64))?;
        if self.item_graph_layers > 0 {
            within("item_graph_k", self.item_graph_k, (1, 1 << 12))?;
            if self.fusion != Fusion::Residual || self.id_only() {
                let why =
                    "the item-graph view is a residual term: needs fusion Residual and a modality";
                return Err(Error::param(
                    OP,
                    "item_graph_layers",
                    self.item_graph_layers,
                    why,
                ));
            }
        }
        if !self.id_only() || self.user_user {
            positive("gat_heads", self.gat_heads)?;
            positive("knn_k", self.knn_k)?;
            if self.embedding_dim % self.gat_heads != 0 {
                return Err(Error::param(
                    OP,
                    "gat_heads",
                    self.gat_heads,
                    format!("must divide embedding_dim = {}", self.embedding_dim),
                ));
            }
        }
        if let KnnMethod::Hnsw(h) = self.knn_method {
            within(
                "knn_method.ef_construction",
                h.ef_construction,
                (1, 1 << 16),
            )?;
            within("knn_method.ef_search", h.ef_search, (0, 1 << 16))?;
            if cfg!(not(feature = "ann")) {
                let why = "the approximate build needs the crate's `ann` feature";
                return Err(Error::param(OP, "knn_method", "Hnsw", why));
            }
        }
        if let OtGradient::Unrolled(0) = self.oat_gradient {
            return Err(Error::param(
                OP,
                "oat_gradient",
                "Unrolled(0)",
                "needs >= 1 iteration",
            ));
        }
        let finite_pos = [
            ("oat_cost_scale", self.oat_cost_scale),
            ("oat_eps_absolute", self.oat_eps_absolute),
            ("ot_sample_eps", self.ot_sample_eps),
            ("oat_tol", self.oat_tol),
            ("ot_sample_tol", self.ot_sample_tol),
            ("cl_temperature", self.cl_temperature),
            ("lr", self.lr),
        ];
        for (name, v) in finite_pos {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::param(OP, name, v, "must be finite and > 0"));
            }
        }
        if let Some(r) = self.oat_eps_relative {
            if !(r.is_finite() && r > 0.0) {
                return Err(Error::param(
                    OP,
                    "oat_eps_relative",
                    r,
                    "must be finite and > 0",
                ));
            }
        }
        for (name, v) in [
            ("ot_sample_weight", self.ot_sample_weight),
            ("cl_weight", self.cl_weight),
            ("reg_weight", self.reg_weight),
            ("fusion_gate_init", self.fusion_gate_init),
            ("weight_decay", self.weight_decay),
            ("fusion_gate_lr", self.fusion_gate_lr),
            ("cl_modality_weight", self.cl_modality_weight),
            ("content_weight", self.content_weight),
            ("content_rank_weight", self.content_rank_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::param(OP, name, v, "must be finite and >= 0"));
            }
        }
        for (name, v) in [
            ("content_warm_tolerance", self.content_warm_tolerance),
            ("content_overall_tolerance", self.content_overall_tolerance),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::param(OP, name, v, "must be in [0, 1]"));
            }
        }
        if !(0.0..1.0).contains(&self.content_probe) {
            return Err(Error::param(
                OP,
                "content_probe",
                self.content_probe,
                "must be in [0, 1)",
            ));
        }
        if let Some(w) = self.fusion_cf_init {
            if !(w > 0.0 && w < 1.0) {
                return Err(Error::param(OP, "fusion_cf_init", w, "must be in (0, 1)"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::param(
                OP,
                "dropout",
                self.dropout,
                "must be in [0, 1)",
            ));
        }
        // the paper's user-item contrastive term reads no modality; the released code's terms read them
        let modal_cl = self.cl_weight > 0.0 && self.cmcl == Cmcl::OfficialCode;
        if self.id_only()
            && (self.oat || modal_cl || self.ot_sample_weight > 0.0 || self.content_weight > 0.0)
        {
            return Err(Error::param(
                OP,
                "modalities",
                "[] (ID only)",
                "OAT, the released code's contrastive terms, the OT sample and the content terms need at least one modality: turn them off",
            ));
        }
        if self.cl_modality_trust && self.content_weight == 0.0 {
            let why = "the trusts are fitted from the content encoders: needs content_weight > 0";
            return Err(Error::param(OP, "cl_modality_trust", true, why));
        }
        if self.fusion == Fusion::None && !self.id_only() {
            let why = |what: &str| format!("{what} feeds the fusion: fusion None has none");
            if self.oat {
                return Err(Error::param(OP, "oat", true, why("OAT")));
            }
            if self.fusion_normalize {
                let why = why("the normalisation of the fused items");
                return Err(Error::param(OP, "fusion_normalize", true, why));
            }
        }
        if self.ot_sample_weight > 0.0 && !self.oat {
            return Err(Error::param(
                OP,
                "ot_sample_weight",
                self.ot_sample_weight,
                "the sample-level OT loss aligns the OAT output: needs oat = true",
            ));
        }
        Ok(())
    }
}
