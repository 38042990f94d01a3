//! Train the reference RecGOAT model end to end on real data and compare it with the LightGCN baseline.
//!
//! ```text
//! cargo run --release --example train                                   # recgoat() vs lightgcn() on data/lfm2k
//! cargo run --release --example train -- --cold-items 0.2 --features text_feat   # 20 % of the items held out
//! cargo run --release --example train -- --preset paper --seeds 3         # the paper's reading
//! cargo run --release --example train -- --data data/baby --preset lightgcn --baseline none --epochs 1000 --lr 0.001
//! cargo run --release --example train -- --resume out/train/recgoat-s2026/checkpoint.safetensors
//! ```
//! Each model trains until validation Recall@20 has not improved for 30 evaluations (under a cap of 1000
//! epochs, named in the output when it is what stopped a run) and is reported at its own best validation
//! epoch, mean +- std over the seeds. When the splits hold items without training interactions (a
//! `--cold-items` split, or new items in the data), a second table gives the warm and the cold items apart
//! beside the raw-feature cosine baseline, and the scale chosen for the cold items is printed. Writes
//! under `--out` (default `out/train`): per run a folder with `checkpoint.safetensors` (saved after every
//! epoch, atomically), `users.npy` / `items.npy` (final embeddings) and `recommender.safetensors` (for the
//! `recommend` example), and for the whole call `curve.svg` (validation Recall@20 per epoch, a colour per
//! model, a line style per seed) and `results.json` (every run's metrics, warm and cold apart, the cold
//! items' scale, the trusts and the profile; the baseline's metrics).

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use recgoat_core::data::{read_features, read_interactions_with, Dataset, IdMap, ReadOptions};
use recgoat_core::dist::World;
use recgoat_core::eval::evaluate_split;
use recgoat_core::model::{
    write_atomic, Metrics, Modalities, RecGoatConfig, Split, Stage, Trainer,
};
use recgoat_core::recommend::Recommender;
use recgoat_core::{Backend, Error, Par};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod common;
use common::{mean_std, say};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Cpu,
    Gpu,
}

#[derive(Parser, Debug)]
#[command(
    about = "Train RecGOAT on a LightGCN-format dataset and compare it with LightGCN",
    after_help = presets_help()
)]
struct Args {
    /// Dataset: a folder with LightGCN split files (train.txt, valid.txt, test.txt) or one MMRec .inter file
    /// and optional <name>.npy item features; or a CSV / TSV file with any ids, its columns named by a header
    /// (user, item, timestamp, rating and common aliases such as userId, movieId) or `user,item[,timestamp]`
    /// by position (each user's last 10 % to test, the 10 % before to validation, a repeated pair kept once;
    /// the id mapping is saved with the recommender).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k"))]
    data: PathBuf,
    /// Feature files to load (names without .npy); default: every .npy in the folder but the user features.
    #[arg(long, value_delimiter = ',')]
    features: Option<Vec<String>>,
    /// User feature files in the data folder (names without .npy, one row per user): the user-user branch's
    /// profiles (with --user-user) instead of the mean of each user's items' features.
    #[arg(long, value_delimiter = ',')]
    user_features: Vec<String>,
    /// Model preset (their defaults are listed below).
    #[arg(long, default_value = "recgoat", value_parser = ["recgoat", "paper", "official_code", "lightgcn"])]
    preset: String,
    /// Baseline trained the same way for the comparison table ("none" to skip).
    #[arg(long, default_value = "lightgcn", value_parser = ["recgoat", "paper", "official_code", "lightgcn", "none"])]
    baseline: String,
    /// Seeds per model (mean +- std over them); seed, seed + 1, ...
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// First seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Epoch cap [default: 1000, far beyond where early stopping ends the bundled runs; the table says when
    /// the cap, not early stopping, ended a run]; with --resume, the epoch to extend the resumed run to (it
    /// must be beyond the epochs it has run).
    #[arg(long)]
    epochs: Option<usize>,
    /// Early-stopping patience in evaluations without a better validation Recall@20 (0: off; then the run
    /// lasts --epochs).
    #[arg(long, default_value_t = 30)]
    patience: usize,
    /// Evaluate on valid every N epochs.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Learning rate (the presets say 1e-3; 5e-3 reaches the same validation Recall@20 in a fifth of the
    /// epochs).
    #[arg(long, default_value_t = 0.005)]
    lr: f64,
    /// Embedding size.
    #[arg(long)]
    dim: Option<usize>,
    /// Batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// LightGCN layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Regularisation weight.
    #[arg(long)]
    reg: Option<f64>,
    /// Contrastive weight (RecGOAT presets).
    #[arg(long)]
    cl_weight: Option<f64>,
    /// Contrastive temperature (RecGOAT presets).
    #[arg(long)]
    cl_temperature: Option<f64>,
    /// Contrastive term over every batch row, duplicate users and items included (RecGOAT presets; the
    /// released code's way; `recgoat()` and `paper()` use the rows with distinct users and items).
    #[arg(long)]
    cl_all_rows: bool,
    /// Graph-attention layers per modality (RecGOAT presets).
    #[arg(long)]
    gat_layers: Option<usize>,
    /// Sample-level OT loss weight (RecGOAT presets).
    #[arg(long)]
    ot_weight: Option<f64>,
    /// kNN neighbours.
    #[arg(long)]
    knn_k: Option<usize>,
    /// Dropout.
    #[arg(long)]
    dropout: Option<f64>,
    /// Turn on the user-user branch.
    #[arg(long)]
    user_user: bool,
    /// Initial fusion weight of the collaborative view (modalities share the rest).
    #[arg(long)]
    fusion_cf_init: Option<f64>,
    /// Score with the raw weighted sum of the views (no LayerNorm / L2 normalisation of the fused items).
    #[arg(long)]
    no_fusion_normalize: bool,
    /// Set any configuration field of the --preset model (not the baseline), after the options above:
    /// `--set item_graph_layers=1 --set fusion=Residual` (the value as JSON, or a string).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    /// Backend: cpu, or gpu (build with `--features gpu`; trains with the device-resident step).
    #[arg(long, value_enum, default_value_t = BackendArg::Cpu)]
    backend: BackendArg,
    /// CPU threads (0: all).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Output folder.
    #[arg(long, default_value = "out/train")]
    out: PathBuf,
    /// Resume the main model's run from this checkpoint (its configuration is used).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// For a CSV / TSV file with a rating column: the ratings at least this count as interactions, the
    /// others are dropped (for example 4 on a 1-5 scale; -inf keeps every one).
    #[arg(long, allow_negative_numbers = true)]
    min_rating: Option<f64>,
    /// Hold out this fraction of the items entirely (every interaction of half of them to validation, of
    /// the other half to test): a cold-item split, whose metrics come apart for warm and cold items beside
    /// the raw-feature cosine baseline.
    #[arg(long)]
    cold_items: Option<f64>,
    /// Seed of the cold-item split.
    #[arg(long, default_value_t = 7)]
    split_seed: u64,
}

struct RunResult {
    label: String,
    config: RecGoatConfig,
    best_epoch: usize,
    epochs_run: usize,
    /// The epoch cap ended the run while validation Recall@20 was still within its patience.
    capped: bool,
    seconds_per_epoch: f64,
    valid: Metrics,
    test: Metrics,
    curve: Vec<(usize, f64)>,
    profile: Vec<(&'static str, f64, f64)>,
    /// The cold items' scale and taste share, the scales tried on validation, and the modalities' trusts.
    cold_scale: f64,
    taste_share: f64,
    cold_trials: Vec<recgoat_core::model::ColdTrial>,
    content_trust: Vec<(String, f32)>,
    /// The users' ego share chosen on validation, with the shares tried.
    ego_share: f64,
    ego_trials: Vec<(f64, f64)>,
}

/// Each preset's main defaults, for `--help`.
fn presets_help() -> String {
    let mut out = String::from(
        "Presets: recgoat (the recommended model: LightGCN scoring, the user-item contrastive term, content \
         encoders that rank items without interactions), paper (the paper's RecGOAT: graph attention, OAT, \
         fused items), official_code (the released code's choices), lightgcn (the ID-only backbone).\n\
         Their defaults (before the options above override them):\n",
    );
    for name in ["recgoat", "paper", "official_code", "lightgcn"] {
        let Ok(c) = RecGoatConfig::preset(name) else {
            continue;
        };
        out += &format!(
            "  {name:<14} dim {}, LightGCN layers {}, GAT layers {} x {} heads, kNN k {}, OAT {}, fusion {:?}{}, \
             CL weight {} (tau {}, modality terms {}), content weight {}, dropout {}, reg {}, weight decay {}, \
             batch {}\n",
            c.embedding_dim, c.lightgcn_layers, c.gat_layers, c.gat_heads, c.knn_k,
            if c.oat { "on" } else { "off" }, c.fusion,
            if c.fusion_normalize { " normalised" } else { "" },
            c.cl_weight, c.cl_temperature, c.cl_modality_weight, c.content_weight, c.dropout, c.reg_weight,
            c.weight_decay, c.batch_size
        );
    }
    out
}

/// Maps an I/O failure on `path` to the crate's error.
fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Io {
        op: "train",
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn configure(name: &str, args: &Args, seed: u64) -> Result<RecGoatConfig, Error> {
    let mut c = RecGoatConfig::preset(name)?;
    c.seed = seed;
    macro_rules! set {
        ($($field:ident <- $arg:ident),*) => {$(if let Some(v) = args.$arg.clone() { c.$field = v; })*};
    }
    c.epochs = args.epochs.unwrap_or(1000);
    c.lr = args.lr;
    c.patience = args.patience;
    set!(eval_every <- eval_every,
         embedding_dim <- dim, batch_size <- batch_size, lightgcn_layers <- layers, reg_weight <- reg,
         knn_k <- knn_k, dropout <- dropout);
    if !c.id_only() {
        set!(cl_weight <- cl_weight, cl_temperature <- cl_temperature, gat_layers <- gat_layers,
             ot_sample_weight <- ot_weight);
        c.user_user |= args.user_user;
        c.cl_distinct_rows &= !args.cl_all_rows;
        c.fusion_normalize &= !args.no_fusion_normalize;
        if args.fusion_cf_init.is_some() {
            c.fusion_cf_init = args.fusion_cf_init;
        }
    }
    if let Some(f) = &args.features {
        if !c.id_only() {
            c.modalities = Modalities::Named(f.clone());
        }
    }
    if name == args.preset {
        for a in &args.sets {
            c.set(a)?;
        }
    }
    c.validate()?;
    Ok(c)
}

fn train_one(
    mut trainer: Trainer<'_>,
    label: &str,
    dir: &Path,
    ids: Option<&IdMap>,
) -> Result<RunResult, Error> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cfg = trainer.config().clone();
    let root = trainer.world().is_root();
    let bar = match root {
        true => ProgressBar::new(trainer.config().epochs as u64),
        false => ProgressBar::hidden(),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:>16} {bar:16.cyan/blue} {pos:>3}/{len:3} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar.set_position(trainer.state().epoch as u64);
    let ckpt = dir.join("checkpoint.safetensors");
    let started = Instant::now();
    let first_epoch = trainer.state().epoch;
    // without a terminal the bar is hidden: print a line every 10 epochs instead
    let tty = std::io::stderr().is_terminal();
    while !trainer.done() {
        let log = trainer.run_epoch(|_, _| {})?;
        trainer.save_checkpoint(&ckpt)?;
        let st = trainer.state();
        let valid = log
            .valid
            .map_or(String::new(), |(r, _)| format!("R@20 {r:.4} "));
        // fits 80 columns with the bar: "label  bar  epoch/max  R@20 x best x@e t s"
        let msg = format!(
            "{valid}best {:.4}@{} {:.2}s",
            st.best_recall, st.best_epoch, log.train_seconds
        );
        if !tty && (st.epoch % 10 == 0 || st.epoch == 1) {
            say!("{label} epoch {:>4}: {msg}", st.epoch);
        }
        bar.set_message(msg);
        bar.set_position(st.epoch as u64);
    }
    let epochs_run = trainer.state().epoch - first_epoch;
    let done = format!(
        "done: best R@20 {:.4}@{} ({:.0}s)",
        trainer.state().best_recall,
        trainer.state().best_epoch,
        started.elapsed().as_secs_f64()
    );
    if !tty {
        say!("{label} {done}");
    }
    bar.finish_with_message(done);
    trainer.finish()?;
    let (trials, share) = (&trainer.state().cold_trials, trainer.state().taste_share);
    if !trials.is_empty() {
        // the scales at the chosen taste share (each share has its grid of scales)
        let tried: Vec<String> = (trials.iter().filter(|t| t.share == share))
            .map(|t| {
                format!(
                    "{}: {:.4} (warm {:.4}, cold {:.4})",
                    t.scale, t.recall, t.warm, t.cold
                )
            })
            .collect();
        // without new items in the validation split, the probe items stood in for them
        let on = match trainer.new_items_in_validation() {
            true => "the new items",
            false => "the probe items ranked as new",
        };
        // with new validation items the overall figure has a floor: the backbone alone's, less the tolerance
        let floor = match (
            trainer.new_items_in_validation(),
            cfg.content_overall_tolerance,
        ) {
            (false, _) => String::new(),
            (true, t) if t <= 0.0 => ", the overall figure not below the backbone alone's".into(),
            (true, t) => format!(
                ", the overall figure at most {} % below the backbone alone's",
                100.0 * t
            ),
        };
        say!(
            "{label}: cold-item scale {}{} chosen on validation Recall@20 of {on} (warm items may lose {} %{floor}); \
             tried {}",
            trainer.state().cold_scale,
            match share > 0.0 {
                true => format!(" with taste share {share}"),
                false => String::new(),
            },
            100.0 * cfg.content_warm_tolerance,
            tried.join(", ")
        );
    }
    let ego = &trainer.state().ego_trials;
    if !ego.is_empty() {
        let tried: Vec<String> = ego.iter().map(|(b, r)| format!("{b}: {r:.4}")).collect();
        say!(
            "{label}: users' ego share {} chosen on validation Recall@20 (each user's own ego term moved that \
             far towards the one its items predict); tried {}",
            trainer.state().ego_share,
            tried.join(", ")
        );
    }
    let valid = trainer.evaluate(Split::Valid)?;
    let test = trainer.evaluate(Split::Test)?;
    trainer.export_embeddings(dir)?;
    let mut rec = Recommender::from_trainer(&trainer)?;
    if let Some(ids) = ids {
        rec = rec.with_ids(ids.clone())?;
    }
    if root {
        rec.save(dir.join("recommender.safetensors"))?;
    }
    let content_trust: Vec<(String, f32)> = match trainer.model().content_on() {
        true => {
            let fwd = trainer.model().forward(
                trainer.params(),
                recgoat_core::attention::Mode::Eval,
                None,
            )?;
            let names = trainer.model().modalities().into_iter().map(|(n, _)| n);
            names.zip(fwd.content_trust().iter().copied()).collect()
        }
        false => Vec::new(),
    };
    let st = trainer.state();
    let capped = st.epoch >= cfg.epochs
        && (cfg.patience == 0 || st.epoch - st.best_epoch < cfg.patience * cfg.eval_every);
    let train_secs: f64 = st.history.iter().map(|h| h.train_seconds).sum();
    let p = trainer.profile();
    let train_stage_secs = p.total() - p.get(Stage::Evaluation);
    Ok(RunResult {
        label: label.to_string(),
        config: cfg,
        best_epoch: st.best_epoch,
        epochs_run,
        capped,
        seconds_per_epoch: train_secs / st.history.len().max(1) as f64,
        valid,
        test,
        curve: st
            .history
            .iter()
            .filter_map(|h| h.valid.map(|(r, _)| (h.epoch, r)))
            .collect(),
        profile: if train_stage_secs > 0.0 {
            p.breakdown()
        } else {
            Vec::new()
        },
        cold_scale: st.cold_scale,
        taste_share: st.taste_share,
        cold_trials: st.cold_trials.clone(),
        content_trust,
        ego_share: st.ego_share,
        ego_trials: st.ego_trials.clone(),
    })
}

fn fmt_ms(v: &[f64]) -> String {
    let (m, s) = mean_std(v);
    if v.len() > 1 {
        format!("{m:.4}±{s:.4}")
    } else {
        format!("{m:.4}")
    }
}

fn print_table(groups: &[(String, Vec<RunResult>)]) {
    let metric = |runs: &[RunResult], split: Split, which: &str, k: usize| -> String {
        let vals: Vec<f64> = runs
            .iter()
            .map(|r| {
                let m = if split == Split::Valid {
                    &r.valid
                } else {
                    &r.test
                };
                let series = if which == "R" { &m.recall } else { &m.ndcg };
                m.at(series, k).unwrap_or(f64::NAN)
            })
            .collect();
        fmt_ms(&vals)
    };
    say!();
    say!(
        "| model | seeds | best epoch | s/epoch | valid R@20 | valid N@20 | test R@10 | test R@20 | test R@50 | test N@10 | test N@20 | test N@50 |"
    );
    say!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, runs) in groups {
        let best: Vec<String> = runs.iter().map(|r| r.best_epoch.to_string()).collect();
        let spe: Vec<f64> = runs.iter().map(|r| r.seconds_per_epoch).collect();
        say!(
            "| {name} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} | {} | {} |",
            runs.len(),
            best.join(","),
            mean_std(&spe).0,
            metric(runs, Split::Valid, "R", 20),
            metric(runs, Split::Valid, "N", 20),
            metric(runs, Split::Test, "R", 10),
            metric(runs, Split::Test, "R", 20),
            metric(runs, Split::Test, "R", 50),
            metric(runs, Split::Test, "N", 10),
            metric(runs, Split::Test, "N", 20),
            metric(runs, Split::Test, "N", 50),
        );
    }
    say!("each run at its best validation epoch (early stopping on validation Recall@20)");
    for r in groups.iter().flat_map(|(_, rs)| rs) {
        if r.capped {
            say!(
                "note: {} ended at the epoch cap ({}) within its patience, still improving: the comparison \
                 needs a larger --epochs",
                r.label, r.config.epochs
            );
        }
    }
    for (name, runs) in groups {
        if let Some(r) = runs.first() {
            if !r.profile.is_empty() {
                let parts: Vec<String> = r
                    .profile
                    .iter()
                    .map(|(n, s, f)| format!("{n} {s:.1}s ({:.0}%)", 100.0 * f))
                    .collect();
                say!(
                    "time per stage, {name} (seed {}): {}",
                    r.config.seed,
                    parts.join(", ")
                );
            }
        }
    }
}

/// Warm and cold items apart (when the splits hold items without training interactions), beside the
/// raw-feature cosine baseline on the same split.
fn print_item_groups(groups: &[(String, Vec<RunResult>)], baseline: Option<&(Metrics, Metrics)>) {
    let has = |m: &Metrics| m.cold.is_some();
    if !groups
        .iter()
        .flat_map(|(_, r)| r)
        .any(|r| has(&r.test) || has(&r.valid))
    {
        return;
    }
    let part = |m: &Metrics, cold: bool| -> (f64, f64) {
        let g = if cold { &m.cold } else { &m.warm };
        g.as_ref()
            .map_or((f64::NAN, f64::NAN), |g| g.recall_ndcg(20))
    };
    let cell = |runs: &[&Metrics], cold: bool| -> String {
        let r: Vec<f64> = runs.iter().map(|m| part(m, cold).0).collect();
        let n: Vec<f64> = runs.iter().map(|m| part(m, cold).1).collect();
        format!("{} | {}", fmt_ms(&r), fmt_ms(&n))
    };
    say!();
    say!(
        "| model | valid warm R@20 | valid warm N@20 | valid cold R@20 | valid cold N@20 | test warm R@20 | test warm N@20 | test cold R@20 | test cold N@20 |"
    );
    say!("|---|---|---|---|---|---|---|---|---|");
    for (name, runs) in groups {
        let v: Vec<&Metrics> = runs.iter().map(|r| &r.valid).collect();
        let t: Vec<&Metrics> = runs.iter().map(|r| &r.test).collect();
        say!(
            "| {name} | {} | {} | {} | {} |",
            cell(&v, false),
            cell(&v, true),
            cell(&t, false),
            cell(&t, true)
        );
    }
    if let Some((v, t)) = baseline {
        say!(
            "| feature cosine (no training) | {} | {} | {} | {} |",
            cell(&[v], false),
            cell(&[v], true),
            cell(&[t], false),
            cell(&[t], true)
        );
    }
    say!("one all-item ranking per user; warm and cold columns score its warm and its cold held-out items");
}

/// The raw-feature cosine baseline's validation and test metrics, when the dataset has features and items
/// without training interactions.
fn feature_baseline(ds: &Dataset) -> Result<Option<(Metrics, Metrics)>, Error> {
    if ds.item_features.is_empty() || ds.cold_items().is_empty() {
        return Ok(None);
    }
    let x: Vec<_> = ds.item_features.iter().map(|(_, x)| x.view()).collect();
    let (users, items) = recgoat_core::eval::feature_cosine(ds.n_users, &ds.train, &x)?;
    let ev = |split| evaluate_split(ds, users.view(), items.view(), split, Par::rayon());
    Ok(Some((ev(Split::Valid)?, ev(Split::Test)?)))
}

/// The learning curves as an SVG (plotters): validation Recall@20 (the figure that selects the epoch) per
/// epoch, a colour per model and a line style per seed (solid, dashed, dotted), each run's best epoch
/// marked, round-number ticks, titled with the dataset.
fn curve_svg(groups: &[(String, Vec<RunResult>)], title: &str) -> Result<String, Error> {
    use plotters::element::DashedPathElement;
    use plotters::prelude::*;
    let fail = |e: &dyn std::fmt::Display| Error::Write {
        op: "train: curve.svg",
        path: "curve.svg".into(),
        reason: e.to_string(),
    };
    let runs = || groups.iter().flat_map(|(_, rs)| rs.iter());
    let max_e = runs()
        .flat_map(|r| r.curve.iter().map(|c| c.0))
        .max()
        .unwrap_or(1)
        .max(1);
    let ys = || runs().flat_map(|r| r.curve.iter().map(|c| c.1));
    let (lo, hi) = (
        ys().fold(f64::INFINITY, f64::min),
        ys().fold(0.0f64, f64::max),
    );
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
    ];
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (820, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(format!("validation Recall@20, {title}"), ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..max_e as f64, (lo - pad).max(0.0)..hi + pad)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .y_desc("validation Recall@20")
            .x_labels(8)
            .y_labels(8)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(|e| fail(&e))?;
        for (g, (name, rs)) in groups.iter().enumerate() {
            let color = palette[g % palette.len()];
            for (k, run) in rs.iter().enumerate() {
                let style = color.stroke_width(2);
                let pts: Vec<(f64, f64)> = run.curve.iter().map(|&(e, y)| (e as f64, y)).collect();
                let label = format!("{name}, seed {}", run.config.seed);
                // seeds as line styles: solid, dashed, dotted, then again
                let (dash, gap) = [(0, 0), (8, 5), (2, 4)][k % 3];
                let drawn = if dash == 0 {
                    chart.draw_series(LineSeries::new(pts, style))
                } else {
                    chart.draw_series(DashedLineSeries::new(pts, dash, gap, style))
                };
                drawn
                    .map_err(|e| fail(&e))?
                    .label(label)
                    .legend(move |(x, y)| {
                        DashedPathElement::new(
                            vec![(x, y), (x + 24, y)],
                            if dash == 0 { 24 } else { dash },
                            gap,
                            style,
                        )
                    });
                if let Some(&(e, y)) = run.curve.iter().find(|c| c.0 == run.best_epoch) {
                    chart
                        .draw_series(std::iter::once(Circle::new(
                            (e as f64, y),
                            4,
                            color.filled(),
                        )))
                        .map_err(|e| fail(&e))?;
                }
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .draw()
            .map_err(|e| fail(&e))?;
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// A split's metrics, with the warm and cold items' apart when the split holds both.
fn metrics_json(m: &Metrics) -> serde_json::Value {
    let mut v = serde_json::json!({"ks": m.ks, "recall": m.recall, "ndcg": m.ndcg, "precision": m.precision,
        "hit": m.hit, "users": m.users});
    for (key, part) in [("warm", &m.warm), ("cold", &m.cold)] {
        if let Some(p) = part {
            v[key] = metrics_json(p);
        }
    }
    v
}

fn run(world: &World) -> Result<(), Error> {
    let args = Args::parse();
    let backend = match args.backend {
        BackendArg::Cpu if args.threads == 1 => Backend::Cpu(Par::Seq),
        BackendArg::Cpu => Backend::Cpu(Par::Rayon(args.threads)),
        BackendArg::Gpu => {
            let ctx = recgoat_core::gpu::GpuContext::new()?;
            if world.is_root() {
                eprintln!("GPU backend: {}", ctx.adapter_name());
            }
            let host = if args.threads == 1 {
                Par::Seq
            } else {
                Par::Rayon(args.threads)
            };
            Backend::Gpu(recgoat_core::GpuBackend::new(
                std::sync::Arc::new(ctx),
                host,
            ))
        }
    };
    let is_file = args.data.is_file();
    let features: Vec<String> = match &args.features {
        Some(f) => f.clone(),
        None if is_file => Vec::new(),
        None => {
            let mut names: Vec<String> = std::fs::read_dir(&args.data)
                .map_err(io_err(&args.data))?
                .filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    if p.extension()? == "npy" {
                        Some(p.file_stem()?.to_string_lossy().into_owned())
                    } else {
                        None
                    }
                })
                .collect();
            names.retain(|n| !args.user_features.contains(n));
            names.sort();
            names
        }
    };
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let t = Instant::now();
    // a folder in LightGCN or MMRec format, or a CSV / TSV file of interactions with any ids
    let (ds, ids) = if is_file {
        let opts = ReadOptions {
            min_rating: args.min_rating,
        };
        let x = read_interactions_with(&args.data, &opts)?;
        let features = (refs.iter())
            .map(|n| {
                Ok((
                    n.to_string(),
                    read_features(args.data.with_file_name(format!("{n}.npy")))?,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let ds = Dataset::from_interactions(&args.data, &x, 0.1, features)?;
        (ds, Some(x.ids))
    } else {
        (Dataset::load_dir(&args.data, &refs)?, None)
    };
    let folder = if is_file {
        args.data.parent().unwrap_or(Path::new(".")).to_path_buf()
    } else {
        args.data.clone()
    };
    let mut ds = ds;
    if let Some(fraction) = args.cold_items {
        ds = ds.hold_out_items(fraction, args.split_seed)?;
    }
    for name in &args.user_features {
        ds = ds.read_user_features(folder.join(format!("{name}.npy")))?;
    }
    say!(
        "{}: {} users, {} items, {} / {} / {} interactions, features {:?} ({:.1}s to load)",
        args.data.display(),
        ds.n_users,
        ds.n_items,
        ds.train.len(),
        ds.valid.len(),
        ds.test.len(),
        ds.item_features
            .iter()
            .map(|(n, x)| format!("{n} {}", x.ncols()))
            .collect::<Vec<_>>(),
        t.elapsed().as_secs_f64()
    );
    for (name, zeros) in ds.zero_feature_rows().into_iter().filter(|z| z.1 > 0) {
        say!(
            "{zeros} items have an all-zero `{name}` row: read as items without that modality (it trains no \
             encoder on them and places none of them)"
        );
    }
    if ds.item_features.is_empty()
        && [&args.preset, &args.baseline].contains(&&"recgoat".to_string())
    {
        say!(
            "no item features: recgoat() trains its LightGCN backbone with the user-item contrastive term \
             alone (no modality or content term; items without training interactions get no vector)"
        );
    }
    let (cold_users, cold_items) = (ds.cold_users().len(), ds.cold_items().len());
    if cold_users + cold_items > 0 {
        say!(
            "{cold_users} users and {cold_items} items have no training interaction: the users are left out \
             of the metrics, the items stay in the ranking"
        );
    }
    if world.size() > 1 {
        say!(
            "{} processes train each model together: each step's batches are split over them (one batch \
             per process per step unless --set steps_per_epoch=N groups them)",
            world.size()
        );
    }
    let mut presets = vec![args.preset.clone()];
    if args.baseline != "none" && args.baseline != args.preset {
        presets.push(args.baseline.clone());
    }
    let first_seed = args.seed.unwrap_or(RecGoatConfig::recgoat().seed);
    let mut groups: Vec<(String, Vec<RunResult>)> = Vec::new();
    for (pi, preset) in presets.iter().enumerate() {
        let mut runs = Vec::new();
        for s in 0..args.seeds {
            let seed = first_seed + s;
            let label = format!("{preset}-s{seed}");
            let dir = args.out.join(&label);
            let t = Instant::now();
            let trainer = match (&args.resume, pi, s) {
                (Some(path), 0, 0) => {
                    let mut t = Trainer::resume(path, &ds, backend.clone(), None)?;
                    if let Some(e) = args.epochs {
                        t.set_epochs(e)?;
                    }
                    t
                }
                _ => Trainer::new(configure(preset, &args, seed)?, &ds, backend.clone())?,
            };
            let mut trainer = trainer;
            if let Some(note) = trainer.schedule_note() {
                say!("{label}: {note}");
            }
            // under mpirun the ranks split each step's batches (data parallel)
            trainer.distribute(world.clone())?;
            let setup = t.elapsed().as_secs_f64();
            if setup > 0.5 {
                say!("{label}: graphs and parameters built in {setup:.1}s");
            }
            runs.push(train_one(trainer, &label, &dir, ids.as_ref())?);
        }
        groups.push((preset.clone(), runs));
    }
    print_table(&groups);
    let baseline = feature_baseline(&ds)?;
    print_item_groups(&groups, baseline.as_ref());
    if !world.is_root() {
        return Ok(());
    }
    std::fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let title = args
        .data
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    write_atomic(
        args.out.join("curve.svg"),
        curve_svg(&groups, &title)?.as_bytes(),
    )?;
    let json: Vec<serde_json::Value> = groups
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .map(|r| {
            serde_json::json!({
                "label": r.label, "config": r.config, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "capped": r.capped,
                "seconds_per_epoch": r.seconds_per_epoch, "valid": metrics_json(&r.valid),
                "test": metrics_json(&r.test), "curve": r.curve, "cold_scale": r.cold_scale, "taste_share": r.taste_share,
                "cold_trials": r.cold_trials, "content_trust": r.content_trust,
                "ego_share": r.ego_share, "ego_trials": r.ego_trials,
                "profile": r.profile.iter().map(|(n, s, f)| serde_json::json!({"stage": n, "seconds": s, "share": f})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let labels: Vec<&str> = (groups.iter().flat_map(|(_, rs)| rs.iter()))
        .map(|r| r.label.as_str())
        .collect();
    let mut all = serde_json::json!({"runs": json});
    if let Some((v, t)) = &baseline {
        all["feature_cosine"] =
            serde_json::json!({"valid": metrics_json(v), "test": metrics_json(t)});
    }
    write_atomic(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&all)
            .expect("serialises")
            .as_bytes(),
    )?;
    say!(
        "\nwrote {0}/curve.svg, {0}/results.json and, per run, {0}/<run>/checkpoint.safetensors, \
         recommender.safetensors, users.npy, items.npy, embeddings.json (runs: {1})",
        args.out.display(),
        labels.join(", ")
    );
    Ok(())
}

fn main() {
    // under `mpirun -np P` (built with `--features mpi`) the P processes train together
    let world = World::single().exit_on_error(World::from_env());
    common::reports_from(&world);
    world.exit_on_error(run(&world));
}
