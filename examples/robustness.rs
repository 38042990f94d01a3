//! The robustness suite: the multimodal model against its ID-only backbone on data where the item features
//! help, barely help, or carry nothing, and on splits where a fifth of the items are new.
//!
//! ```text
//! cargo run --release --example robustness                        # every entry, 3 seeds each
//! cargo run --release --example robustness -- --entries lfm-cold-text,lfm-noise --seeds 1
//! cargo run --release --example robustness -- --set content_warm_tolerance=0.05  # a change to the model
//! ```
//! Each entry trains `--preset` (default `recgoat`) and `--baseline` (default `lightgcn`) with early stopping
//! on validation Recall@20 (patience 30 evaluations, epoch cap 1000), each model at its own best validation
//! epoch, and reports test metrics as mean +- std over the seeds. The entries:
//!
//! | entry | data | item features |
//! |---|---|---|
//! | `lfm-all` | Last.fm-2k | text, VGGish audio, Whisper audio |
//! | `lfm-text` | Last.fm-2k | text |
//! | `lfm-vggish` | Last.fm-2k | VGGish audio |
//! | `lfm-whisper` | Last.fm-2k | Whisper audio |
//! | `lfm-noise` | Last.fm-2k | every matrix replaced by standard Gaussian noise of its shape |
//! | `baby-noise` | Amazon Baby (interactions only) | two 128-wide standard Gaussian noise matrices |
//! | `baby-none` | Amazon Baby (interactions only) | none: `recgoat()` is its backbone with the user-item term |
//! | `lfm-cold-all` | Last.fm-2k, 20 % of the items held out (`Dataset::hold_out_items`, seed 7) | all three |
//! | `lfm-cold-text` | the same split | text |
//! | `lfm-cold-noise` | the same split | noise, as `lfm-noise` |
//! | `lfm-new-all` | Last.fm-2k, 2 % of the items held out (seed 7): 7.3 % of the test interactions fall on new items, as in a live catalogue | all three |
//! | `lfm-new-text` | the same split | text |
//! | `lfm-new-wide` | the same split | one 4,096-wide matrix: the text features through a fixed Gaussian projection (seed 11) and a ReLU, wider than the closed-form encoders fit as they are (as image CNN features are) |
//! | `lfm-new-audio` | the same split | the two audio matrices without the text: content from signals, as image and audio features are |
//! | `lfm-newtest-all` | the same split, the new items' validation interactions moved to test: validation holds no new item (the probe items stand in for them) | all three |
//! | `lfm-newtest-text` | the same | text |
//! | `lfm-thin-all` | Last.fm-2k, a quarter of each user's training interactions kept (`Dataset::thin_train`, seed 7): the tail items left without any are new items with few held-out interactions each | all three |
//! | `lfm-thin-text` | the same split | text |
//! | `lfm-thin-audio` | the same split | the two audio matrices |
//!
//! Targets (checked and marked in the tables):
//! - warm entries: the multimodal model's test Recall and NDCG at 10 and 20 at least the baseline's mean
//!   minus one std; on `lfm-text`, Recall@20 and NDCG@20 at least 6 % above the baseline's mean;
//! - cold entries with real features: the cold items' test Recall@20 at least 1.3 times the raw-feature
//!   cosine baseline's ([`recgoat_core::eval::feature_cosine`]) on the same split, and the warm items' test
//!   Recall@20 and NDCG@20 at least those of the same model with the cold items left out of the lists (its
//!   backbone alone) minus one std; with noise features, the warm items' figures must not fall below that;
//!   on the `lfm-thin` entries (a catalogue's tail of new items, judged as new items in the wild are) the
//!   cold items at least 1.3 times the cosine and the overall Recall@20 at least the baseline's minus one std.
//!
//! For the cold entries a frontier table shows what the cold-item scale (and taste share) would give on
//! test if it were chosen on validation with other warm tolerances than the model's
//! (`content_warm_tolerance`). Writes the tables to `--out/robustness.md` and every run to
//! `--out/robustness.json`.

use clap::Parser;
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use recgoat_core::data::Dataset;
use recgoat_core::eval::{evaluate_split, feature_cosine, Metrics};
use recgoat_core::model::{
    choose_cold_scale, write_atomic, ColdTrial, RecGoatConfig, Split, Trainer,
};
use recgoat_core::{Backend, Error, Par};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

mod common;

const ENTRIES: [&str; 19] = [
    "lfm-all",
    "lfm-text",
    "lfm-vggish",
    "lfm-whisper",
    "lfm-noise",
    "baby-noise",
    "baby-none",
    "lfm-cold-all",
    "lfm-cold-text",
    "lfm-cold-noise",
    "lfm-new-all",
    "lfm-new-text",
    "lfm-new-wide",
    "lfm-new-audio",
    "lfm-newtest-all",
    "lfm-newtest-text",
    "lfm-thin-all",
    "lfm-thin-text",
    "lfm-thin-audio",
];

/// The warm tolerances of the frontier table.
const TOLERANCES: [f64; 4] = [0.01, 0.03, 0.1, 1.0];

/// The seed of the cold entries' split.
const SPLIT_SEED: u64 = 7;

/// The share of the items the `lfm-new` entries hold out.
const NEW_SHARE: f64 = 0.02;

/// The share of each user's training interactions the `lfm-thin` entries keep.
const THIN_KEEP: f64 = 0.25;

#[derive(Parser, Debug)]
#[command(
    about = "recgoat() vs lightgcn() on data where features help, barely help or carry nothing, and on new items"
)]
struct Args {
    /// Entries to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = ENTRIES.map(String::from), value_parser = ENTRIES)]
    entries: Vec<String>,
    /// The multimodal model's preset.
    #[arg(long, default_value = "recgoat", value_parser = ["recgoat", "paper", "official_code"])]
    preset: String,
    /// The baseline's preset ("none": the multimodal model alone, for a quick look at its validation scores).
    #[arg(long, default_value = "lightgcn", value_parser = ["lightgcn", "recgoat", "paper", "official_code", "none"])]
    baseline: String,
    /// Seeds per model: seed, seed + 1, ...
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Learning rate of both models.
    #[arg(long, default_value_t = 0.005)]
    lr: f64,
    /// Epoch cap.
    #[arg(long, default_value_t = 1000)]
    epochs: usize,
    /// Early-stopping patience in evaluations.
    #[arg(long, default_value_t = 30)]
    patience: usize,
    /// A field of the multimodal model's configuration, `FIELD=VALUE` (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    /// Folder holding `lfm2k` and `baby`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data"))]
    data: PathBuf,
    /// CPU threads (0: all).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Output folder.
    #[arg(long, default_value = "out/robustness")]
    out: PathBuf,
}

/// Standard Gaussian noise of `shape`, seeded by the entry.
fn noise(shape: (usize, usize), seed: u64) -> Array2<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn(shape, || StandardNormal.sample(&mut rng))
}

fn dataset(entry: &str, root: &std::path::Path) -> Result<Dataset, Error> {
    let lfm = root.join("lfm2k");
    let all = ["text_feat", "audio_vggish_feat", "audio_whisper_feat"];
    let audio = ["audio_vggish_feat", "audio_whisper_feat"];
    let noised = |mut ds: Dataset| {
        for (k, (_, x)) in ds.item_features.iter_mut().enumerate() {
            *x = noise(x.dim(), 100 + k as u64);
        }
        ds
    };
    Ok(match entry {
        "lfm-all" => Dataset::load_dir(&lfm, &all)?,
        "lfm-text" => Dataset::load_dir(&lfm, &["text_feat"])?,
        "lfm-vggish" => Dataset::load_dir(&lfm, &["audio_vggish_feat"])?,
        "lfm-whisper" => Dataset::load_dir(&lfm, &["audio_whisper_feat"])?,
        "lfm-noise" => noised(Dataset::load_dir(&lfm, &all)?),
        "baby-noise" => {
            let mut ds = Dataset::load_dir(root.join("baby"), &[])?;
            let n = ds.n_items;
            ds.item_features = vec![
                ("noise_a".into(), noise((n, 128), 200)),
                ("noise_b".into(), noise((n, 128), 201)),
            ];
            ds
        }
        "baby-none" => Dataset::load_dir(root.join("baby"), &[])?,
        "lfm-cold-all" => Dataset::load_dir(&lfm, &all)?.hold_out_items(0.2, SPLIT_SEED)?,
        "lfm-cold-text" => {
            Dataset::load_dir(&lfm, &["text_feat"])?.hold_out_items(0.2, SPLIT_SEED)?
        }
        "lfm-cold-noise" => {
            noised(Dataset::load_dir(&lfm, &all)?).hold_out_items(0.2, SPLIT_SEED)?
        }
        "lfm-new-all" => Dataset::load_dir(&lfm, &all)?.hold_out_items(NEW_SHARE, SPLIT_SEED)?,
        "lfm-new-text" => {
            Dataset::load_dir(&lfm, &["text_feat"])?.hold_out_items(NEW_SHARE, SPLIT_SEED)?
        }
        "lfm-new-wide" => {
            let mut ds =
                Dataset::load_dir(&lfm, &["text_feat"])?.hold_out_items(NEW_SHARE, SPLIT_SEED)?;
            let text = &ds.item_features[0].1;
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
            let up = Array2::<f32>::from_shape_simple_fn((text.ncols(), 4096), || {
                StandardNormal.sample(&mut rng)
            });
            ds.item_features = vec![("text_wide".into(), text.dot(&up).mapv(|v| v.max(0.0)))];
            ds
        }
        "lfm-new-audio" => {
            Dataset::load_dir(&lfm, &audio)?.hold_out_items(NEW_SHARE, SPLIT_SEED)?
        }
        "lfm-newtest-all" => {
            in_test(Dataset::load_dir(&lfm, &all)?.hold_out_items(NEW_SHARE, SPLIT_SEED)?)
        }
        "lfm-newtest-text" => {
            in_test(Dataset::load_dir(&lfm, &["text_feat"])?.hold_out_items(NEW_SHARE, SPLIT_SEED)?)
        }
        "lfm-thin-all" => Dataset::load_dir(&lfm, &all)?.thin_train(THIN_KEEP, SPLIT_SEED)?,
        "lfm-thin-text" => {
            Dataset::load_dir(&lfm, &["text_feat"])?.thin_train(THIN_KEEP, SPLIT_SEED)?
        }
        "lfm-thin-audio" => Dataset::load_dir(&lfm, &audio)?.thin_train(THIN_KEEP, SPLIT_SEED)?,
        other => unreachable!("clap admits only the listed entries, not {other}"),
    })
}

/// The new items' validation interactions moved to test: a validation split without new items.
fn in_test(mut ds: Dataset) -> Dataset {
    let cold = ds.cold_items();
    let (new, kept): (Vec<_>, Vec<_>) = ds.valid.iter().partition(|p| cold.contains(&p.1));
    ds.valid = kept;
    ds.test.extend(new);
    ds
}

fn cold_entry(entry: &str) -> bool {
    entry.starts_with("lfm-cold") || entry.starts_with("lfm-new") || entry.starts_with("lfm-thin")
}

/// Recall@k and NDCG@k of a part of the metrics (NaN when the part is absent).
fn at(m: Option<&Metrics>, k: usize) -> (f64, f64) {
    m.map_or((f64::NAN, f64::NAN), |m| m.recall_ndcg(k))
}

struct Run {
    entry: String,
    model: String,
    seed: u64,
    best_epoch: usize,
    capped: bool,
    seconds: f64,
    seconds_per_epoch: f64,
    valid_r20: f64,
    test: Metrics,
    cold_scale: f64,
    /// The taste term's share chosen with it.
    taste_share: f64,
    /// The users' ego share chosen on validation ([`recgoat_core::model::TrainState::ego_share`]).
    ego_share: f64,
    /// The test metrics with the cold items left out of the lists (scale 0): the backbone alone.
    backbone: Option<Metrics>,
    /// Per tolerance of [`TOLERANCES`]: the scale and taste share validation would choose and the test
    /// metrics there.
    frontier: Vec<(f64, (f64, f64), Metrics)>,
    /// The scales tried on validation at the best epoch (overall, warm and cold Recall@20 each).
    valid_trials: Vec<ColdTrial>,
}

fn train(entry: &str, ds: &Dataset, cfg: RecGoatConfig, backend: &Backend) -> Result<Run, Error> {
    let started = Instant::now();
    let (model, seed) = (cfg.name.clone(), cfg.seed);
    let mut t = Trainer::new(cfg, ds, backend.clone())?;
    if let Some(note) = t.schedule_note() {
        eprintln!("{entry} {model} seed {seed}: {note}");
    }
    t.fit(|_, _| {})?;
    t.finish()?;
    let (st, c) = (t.state(), t.config());
    let capped = st.epoch >= c.epochs && st.epoch - st.best_epoch < c.patience * c.eval_every;
    let test = t.evaluate(Split::Test)?;
    let par = Par::default();
    let (mut backbone, mut frontier) = (None, Vec::new());
    if test.cold.is_some() && t.model().content_on() {
        // the backbone alone (scale 0), and the frontier: the scale re-chosen as the trainer does with new
        // items in validation, at other tolerances (none without them: the probe items chose the scale)
        let trials = &st.cold_trials;
        let chosen: Vec<(f64, f64)> = if t.new_items_in_validation() && !trials.is_empty() {
            let overall = Some(c.content_overall_tolerance);
            (TOLERANCES.iter())
                .map(|&tol| {
                    let k = choose_cold_scale(trials, tol, overall);
                    (trials[k].scale, trials[k].share)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut all = Vec::new();
        for &placing in std::iter::once(&(0.0, 0.0)).chain(&chosen) {
            let (users, items) = t.model().embeddings_placing(t.params(), placing)?;
            all.push(evaluate_split(
                ds,
                users.view(),
                items.view(),
                Split::Test,
                par,
            )?);
        }
        backbone = Some(all.remove(0));
        frontier = (TOLERANCES.iter().zip(chosen).zip(all))
            .map(|((&tol, s), m)| (tol, s, m))
            .collect();
    }
    let epochs = st.history.len().max(1) as f64;
    let run = Run {
        entry: entry.into(),
        model,
        seed,
        best_epoch: st.best_epoch,
        capped,
        seconds: started.elapsed().as_secs_f64(),
        seconds_per_epoch: st.history.iter().map(|h| h.train_seconds).sum::<f64>() / epochs,
        valid_r20: st.best_recall,
        cold_scale: st.cold_scale,
        taste_share: st.taste_share,
        ego_share: st.ego_share,
        backbone,
        frontier,
        valid_trials: st.cold_trials.clone(),
        test,
    };
    let (r, n) = run.test.recall_ndcg(20);
    let cold = at(run.test.cold.as_deref(), 20).0;
    println!(
        "{:<14} {:<9} seed {}: best epoch {:>4}{}, valid R@20 {:.4}, test R@20 {r:.4} N@20 {n:.4}{}, \
         ego share {} ({:.2} s/epoch, {:.0}s)",
        run.entry,
        run.model,
        run.seed,
        run.best_epoch,
        if capped { " (epoch cap)" } else { "" },
        run.valid_r20,
        if cold.is_nan() {
            String::new()
        } else {
            format!(
                ", cold R@20 {cold:.4} at scale {} (taste share {})",
                run.cold_scale, run.taste_share
            )
        },
        run.ego_share,
        run.seconds_per_epoch,
        run.seconds
    );
    Ok(run)
}

fn cell((m, s): (f64, f64)) -> String {
    format!("{m:.4} ± {s:.4}")
}

/// The runs of an entry and a model.
fn of<'a>(runs: &'a [Run], entry: &str, model: &str) -> Vec<&'a Run> {
    (runs.iter())
        .filter(|r| r.entry == entry && r.model == model)
        .collect()
}

fn stat(rs: &[&Run], f: impl Fn(&Run) -> f64) -> (f64, f64) {
    common::mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
}

fn epochs(rs: &[&Run]) -> String {
    (rs.iter()
        .map(|r| format!("{}{}", r.best_epoch, if r.capped { "*" } else { "" })))
    .collect::<Vec<_>>()
    .join(",")
}

/// The warm entries: each model's test Recall and NDCG at 10 and 20, the change, the targets.
fn warm_table(runs: &[Run], entries: &[&str], main: &str, base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| entry | metric | {main} | {base} | change | best epochs ({main} / {base}) | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for &e in entries.iter().filter(|e| !cold_entry(e)) {
        let (a, b) = (of(runs, e, main), of(runs, e, base));
        if a.is_empty() || b.is_empty() {
            continue;
        }
        for (name, k, recall) in [
            ("R@10", 10, true),
            ("R@20", 20, true),
            ("N@10", 10, false),
            ("N@20", 20, false),
        ] {
            let f = |r: &Run| {
                let (x, y) = r.test.recall_ndcg(k);
                if recall {
                    x
                } else {
                    y
                }
            };
            let ((ma, sa), (mb, sb)) = (stat(&a, f), stat(&b, f));
            let strong = e == "lfm-text" && k == 20;
            let ok = ma >= mb - sb && (!strong || ma >= 1.06 * mb);
            let target = if strong { ">= +6 %" } else { ">= mean - std" };
            let _ = writeln!(
                out,
                "| {e} | {name} | {} | {} | {:+.1} % | {} / {} | {} {target} |",
                cell((ma, sa)),
                cell((mb, sb)),
                100.0 * (ma / mb - 1.0),
                epochs(&a),
                epochs(&b),
                if ok { "met" } else { "missed" }
            );
        }
    }
    out
}

/// The cold entries: warm items (at the chosen scale, the backbone alone, the baseline), cold items against
/// the raw-feature cosine baseline, the targets.
fn cold_table(runs: &[Run], cosine: &[(String, Metrics)], main: &str, base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| entry | {main} warm R@20 | warm N@20 | backbone alone warm R@20 | warm N@20 | {base} warm R@20 | \
         {main} cold R@20 | cold N@20 | cosine cold R@20 | ratio | scales (/ taste shares) | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (e, cos) in cosine {
        let (a, b) = (of(runs, e, main), of(runs, e, base));
        if a.is_empty() {
            continue;
        }
        let warm = |r: &Run| at(r.test.warm.as_deref(), 20);
        let alone = |r: &Run| at(r.backbone.as_ref().and_then(|m| m.warm.as_deref()), 20);
        let cold = |r: &Run| at(r.test.cold.as_deref(), 20);
        let (wr, wn) = (stat(&a, |r| warm(r).0), stat(&a, |r| warm(r).1));
        let (br, bn) = (stat(&a, |r| alone(r).0), stat(&a, |r| alone(r).1));
        let (cr, cn) = (stat(&a, |r| cold(r).0), stat(&a, |r| cold(r).1));
        let base_warm = stat(&b, |r| warm(r).0);
        let cos_cold = at(cos.cold.as_deref(), 20).0;
        let (noise, thin) = (e.ends_with("noise"), e.starts_with("lfm-thin"));
        let warm_ok = wr.0 >= br.0 - br.1 && wn.0 >= bn.0 - bn.1;
        // a catalogue's tail of new items: judged as new items in the wild are, on the overall figure
        let overall = |rs: &[&Run]| stat(rs, |r| r.test.recall_ndcg(20).0);
        let (o, ob) = (overall(&a), overall(&b));
        let ok = match (noise, thin) {
            (true, _) => warm_ok,
            (false, true) => cr.0 >= 1.3 * cos_cold && (b.is_empty() || o.0 >= ob.0 - ob.1),
            (false, false) => warm_ok && cr.0 >= 1.3 * cos_cold,
        };
        let target = match (noise, thin) {
            (true, _) => "warm >= backbone - std",
            (false, true) => "cold >= 1.3 x cosine, overall R@20 >= baseline - std",
            (false, false) => "cold >= 1.3 x cosine, warm >= backbone - std",
        };
        let scales: Vec<String> = a
            .iter()
            .map(|r| placing(r.cold_scale, r.taste_share))
            .collect();
        let _ =
            writeln!(
            out,
            "| {e} | {} | {} | {} | {} | {} | {} | {} | {cos_cold:.4} | {:.2} | {} | {} {target} |",
            cell(wr),
            cell(wn),
            cell(br),
            cell(bn),
            if b.is_empty() { "-".into() } else { cell(base_warm) },
            cell(cr),
            cell(cn),
            cr.0 / cos_cold,
            scales.join(","),
            if ok { "met" } else { "missed" }
        );
    }
    out
}

/// A scale, with the taste share after a slash where there is one (`2/0.5`).
fn placing(scale: f64, share: f64) -> String {
    match share > 0.0 {
        true => format!("{scale}/{share}"),
        false => scale.to_string(),
    }
}

/// What other warm tolerances would give on the cold entries' test split: the warm and cold items' Recall@20
/// and the overall one (every held-out item), beside the backbone alone (scale 0) and the baseline.
fn frontier_table(runs: &[Run], cosine: &[(String, Metrics)], main: &str, base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| entry | warm tolerance | scales (/ taste shares) chosen on validation | test warm R@20 | test cold R@20 | cold / cosine \
         | test overall R@20 |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let overall = |m: &Metrics| m.recall_ndcg(20).0;
    let mut rows = 0;
    for (e, cos) in cosine {
        let a = of(runs, e, main);
        if a.is_empty() || a.iter().any(|r| r.frontier.len() != TOLERANCES.len()) {
            continue;
        }
        rows += 1;
        let cos_cold = at(cos.cold.as_deref(), 20).0;
        let b = of(runs, e, base);
        if !b.is_empty() {
            let w = stat(&b, |r| at(r.test.warm.as_deref(), 20).0);
            let _ = writeln!(
                out,
                "| {e} | {base} | | {} | | | {} |",
                cell(w),
                cell(stat(&b, |r| overall(&r.test)))
            );
        }
        if a.iter().all(|r| r.backbone.is_some()) {
            let bb = |r: &Run| r.backbone.as_ref().map_or(f64::NAN, overall);
            let w = stat(&a, |r| {
                at(r.backbone.as_ref().and_then(|m| m.warm.as_deref()), 20).0
            });
            let _ = writeln!(
                out,
                "| {e} | backbone alone | 0 | {} | | | {} |",
                cell(w),
                cell(stat(&a, bb))
            );
        }
        for (k, tol) in TOLERANCES.iter().enumerate() {
            let scales: Vec<String> = (a.iter())
                .map(|r| placing(r.frontier[k].1 .0, r.frontier[k].1 .1))
                .collect();
            let w = stat(&a, |r| at(r.frontier[k].2.warm.as_deref(), 20).0);
            let c = stat(&a, |r| at(r.frontier[k].2.cold.as_deref(), 20).0);
            let _ = writeln!(
                out,
                "| {e} | {:.0} % | {} | {} | {} | {:.2} | {} |",
                100.0 * tol,
                scales.join(","),
                cell(w),
                cell(c),
                c.0 / cos_cold,
                cell(stat(&a, |r| overall(&r.frontier[k].2)))
            );
        }
    }
    // entries whose validation held no new item have no frontier
    if rows == 0 {
        out.clear();
    }
    out
}

/// Seconds per epoch of each model on each entry (training only, mean over every epoch of every seed).
fn cost_table(runs: &[Run], entries: &[&str], main: &str, base: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| entry | {main} s/epoch | {base} s/epoch | ratio |");
    let _ = writeln!(out, "|---|---|---|---|");
    for &e in entries {
        let (a, b) = (of(runs, e, main), of(runs, e, base));
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let (sa, sb) = (
            stat(&a, |r| r.seconds_per_epoch).0,
            stat(&b, |r| r.seconds_per_epoch).0,
        );
        let _ = writeln!(out, "| {e} | {sa:.3} | {sb:.3} | {:.2} |", sa / sb);
    }
    out
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    let mut v =
        serde_json::json!({"ks": m.ks, "recall": m.recall, "ndcg": m.ndcg, "users": m.users});
    for (key, part) in [("warm", &m.warm), ("cold", &m.cold)] {
        if let Some(p) = part {
            v[key] = metrics_json(p);
        }
    }
    v
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    common::rayon_threads(args.threads)?;
    let backend = Backend::Cpu(Par::default());
    let configure = |preset: &str, seed: u64, main: bool| -> Result<RecGoatConfig, Error> {
        let mut c = RecGoatConfig::preset(preset)?;
        (c.seed, c.lr, c.epochs, c.patience) = (seed, args.lr, args.epochs, args.patience);
        if main {
            for s in &args.sets {
                c.set(s)?;
            }
        }
        c.validate()?;
        Ok(c)
    };
    // every configuration is checked before the first run, and on a dataset without features when an entry
    // has none (the presets built on a modality refuse it)
    let main_cfg = configure(&args.preset, args.seed, true)?;
    if args.entries.iter().any(|e| e == "baby-none") {
        let pairs = vec![(0, 0), (0, 1), (1, 1), (1, 2)];
        let featureless = Dataset::new("baby-none", pairs, vec![(0, 2)], vec![(1, 0)], Vec::new())?;
        Trainer::new(main_cfg, &featureless, Backend::Cpu(Par::Seq))?;
    }
    let mut runs = Vec::new();
    let mut cosine = Vec::new();
    let started = Instant::now();
    for entry in &args.entries {
        let ds = dataset(entry, &args.data)?;
        if cold_entry(entry) {
            let x: Vec<_> = ds.item_features.iter().map(|(_, x)| x.view()).collect();
            let (users, items) = feature_cosine(ds.n_users, &ds.train, &x)?;
            let m = evaluate_split(&ds, users.view(), items.view(), Split::Test, Par::default())?;
            println!(
                "{entry:<14} feature cosine: test R@20 {:.4}, warm {:.4}, cold {:.4}",
                m.recall_ndcg(20).0,
                at(m.warm.as_deref(), 20).0,
                at(m.cold.as_deref(), 20).0
            );
            cosine.push((entry.clone(), m));
        }
        for s in 0..args.seeds {
            let seed = args.seed + s;
            for (preset, main) in [(&args.preset, true), (&args.baseline, false)] {
                if preset != "none" {
                    runs.push(train(entry, &ds, configure(preset, seed, main)?, &backend)?);
                }
            }
        }
    }
    let entries: Vec<&str> = args.entries.iter().map(String::as_str).collect();
    let (main, base) = (args.preset.as_str(), args.baseline.as_str());
    let sets = if args.sets.is_empty() {
        String::new()
    } else {
        format!(" --set {}", args.sets.join(" --set "))
    };
    let header = format!(
        "{} seeds from {}, lr {}, patience {}, epoch cap {}{sets}; test metrics at each run's best \
         validation epoch (* : stopped by the epoch cap); {:.0} s in all\n\n",
        args.seeds,
        args.seed,
        args.lr,
        args.patience,
        args.epochs,
        started.elapsed().as_secs_f64()
    );
    let mut md = header;
    if base != "none" {
        md += &warm_table(&runs, &entries, main, base);
        md += "\n";
    }
    if !cosine.is_empty() {
        md += &cold_table(&runs, &cosine, main, base);
        md += "\n";
        md += &frontier_table(&runs, &cosine, main, base);
        md += "\n";
    }
    if base != "none" {
        md += &cost_table(&runs, &entries, main, base);
    }
    println!("\n{md}");
    std::fs::create_dir_all(&args.out)?;
    write_atomic(args.out.join("robustness.md"), md.as_bytes())?;
    let json: Vec<_> = (runs.iter())
        .map(|r| {
            serde_json::json!({"entry": r.entry, "model": r.model, "seed": r.seed, "best_epoch": r.best_epoch,
                "capped": r.capped, "seconds": r.seconds, "seconds_per_epoch": r.seconds_per_epoch,
                "valid_recall20": r.valid_r20, "cold_scale": r.cold_scale, "taste_share": r.taste_share, "ego_share": r.ego_share, "test": metrics_json(&r.test),
                "backbone_alone": r.backbone.as_ref().map(metrics_json), "valid_trials": r.valid_trials,
                "frontier": r.frontier.iter().map(|(t, (s, a), m)| serde_json::json!({"tolerance": t,
                    "scale": s, "taste_share": a, "test": metrics_json(m)})).collect::<Vec<_>>()})
        })
        .collect();
    let cos: Vec<_> = (cosine.iter())
        .map(|(e, m)| serde_json::json!({"entry": e, "test": metrics_json(m)}))
        .collect();
    let text =
        serde_json::to_string_pretty(&serde_json::json!({"runs": json, "feature_cosine": cos}))?;
    write_atomic(args.out.join("robustness.json"), text.as_bytes())?;
    println!(
        "wrote {}/robustness.md and robustness.json",
        args.out.display()
    );
    Ok(())
}
