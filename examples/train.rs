//! Train the reference RecGOAT model end to end on real data and compare it with the LightGCN baseline.
//!
//! ```text
//! cargo run --release --example train                                   # paper() vs lightgcn() on data/lfm2k
//! cargo run --release --example train -- --seeds 3 --set item_graph_layers=1 --set gat_layers=1
//! cargo run --release --example train -- --preset official_code --seeds 3
//! cargo run --release --example train -- --data data/baby --preset lightgcn --baseline none --epochs 1000 --lr 0.001
//! cargo run --release --example train -- --resume out/train/paper-s2026/checkpoint.safetensors
//! ```
//! Each model trains until validation Recall@20 has not improved for 30 evaluations (under a cap of 1000
//! epochs, named in the output when it is what stopped a run) and is reported at its own best validation
//! epoch, mean +- std over the seeds. Writes under `--out` (default `out/train`): per run a folder with `checkpoint.safetensors` (saved after
//! every epoch, atomically), `users.npy` / `items.npy` (final embeddings), and for the whole call
//! `curve.svg` (validation Recall@20 per epoch) and `results.json` (every run's metrics and profile).

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use recgoat_core::data::{read_features, read_interactions, Dataset, IdMap};
use recgoat_core::eval::evaluate_split;
use recgoat_core::model::{
    write_atomic, Metrics, Modalities, RecGoatConfig, Split, Stage, Trainer,
};
use recgoat_core::recommend::Recommender;
use recgoat_core::{Backend, Error, Par};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    /// and optional <name>.npy item features; or a CSV / TSV file of `user,item[,timestamp]` lines with any
    /// ids (each user's last 10 % to test, the 10 % before to validation; the id mapping is saved with the
    /// recommender).
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
    /// released code's way; `paper()` uses the rows with distinct users and items).
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
}

/// Each preset's main defaults, for `--help`.
fn presets_help() -> String {
    let mut out = String::from("Preset defaults (before the options above override them):\n");
    for name in ["recgoat", "paper", "official_code", "lightgcn"] {
        let Ok(c) = RecGoatConfig::preset(name) else {
            continue;
        };
        out += &format!(
            "  {name:<14} dim {}, LightGCN layers {}, GAT layers {} x {} heads, kNN k {}, OAT {}, fusion {:?}{}, \
             CL weight {} (tau {}), dropout {}, reg {}, weight decay {}, batch {}\n",
            c.embedding_dim, c.lightgcn_layers, c.gat_layers, c.gat_heads, c.knn_k,
            if c.oat { "on" } else { "off" }, c.fusion,
            if c.fusion_normalize { " normalised" } else { "" },
            c.cl_weight, c.cl_temperature, c.dropout, c.reg_weight, c.weight_decay, c.batch_size
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
    let bar = ProgressBar::new(trainer.config().epochs as u64);
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
            println!("{label} epoch {:>4}: {msg}", st.epoch);
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
        println!("{label} {done}");
    }
    bar.finish_with_message(done);
    trainer.finish()?;
    let trials = &trainer.state().cold_trials;
    if !trials.is_empty() {
        let tried: Vec<String> = (trials.iter())
            .map(|t| {
                format!(
                    "{}: {:.4} (warm {:.4}, cold {:.4})",
                    t.scale, t.recall, t.warm, t.cold
                )
            })
            .collect();
        println!(
            "{label}: cold-item scale {} chosen on validation Recall@20 (warm items may lose {} %); tried {}",
            trainer.state().cold_scale,
            100.0 * cfg.content_warm_tolerance,
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
    rec.save(dir.join("recommender.safetensors"))?;
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
    })
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
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
    println!();
    println!(
        "| model | seeds | best epoch | s/epoch | valid R@20 | valid N@20 | test R@10 | test R@20 | test R@50 | test N@10 | test N@20 | test N@50 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (name, runs) in groups {
        let best: Vec<String> = runs.iter().map(|r| r.best_epoch.to_string()).collect();
        let spe: Vec<f64> = runs.iter().map(|r| r.seconds_per_epoch).collect();
        println!(
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
    println!("each run at its best validation epoch (early stopping on validation Recall@20)");
    for r in groups.iter().flat_map(|(_, rs)| rs) {
        if r.capped {
            println!(
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
                println!(
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
fn print_item_groups(groups: &[(String, Vec<RunResult>)], ds: &Dataset) -> Result<(), Error> {
    let has = |m: &Metrics| m.cold.is_some();
    if !groups
        .iter()
        .flat_map(|(_, r)| r)
        .any(|r| has(&r.test) || has(&r.valid))
    {
        return Ok(());
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
    println!();
    println!(
        "| model | valid warm R@20 | valid warm N@20 | valid cold R@20 | valid cold N@20 | test warm R@20 | test warm N@20 | test cold R@20 | test cold N@20 |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (name, runs) in groups {
        let v: Vec<&Metrics> = runs.iter().map(|r| &r.valid).collect();
        let t: Vec<&Metrics> = runs.iter().map(|r| &r.test).collect();
        println!(
            "| {name} | {} | {} | {} | {} |",
            cell(&v, false),
            cell(&v, true),
            cell(&t, false),
            cell(&t, true)
        );
    }
    if !ds.item_features.is_empty() {
        let x: Vec<_> = ds.item_features.iter().map(|(_, x)| x.view()).collect();
        let (users, items) = recgoat_core::eval::feature_cosine(ds.n_users, &ds.train, &x)?;
        let ev = |split| evaluate_split(ds, users.view(), items.view(), split, Par::rayon());
        let (v, t) = (ev(Split::Valid)?, ev(Split::Test)?);
        println!(
            "| feature cosine (no training) | {} | {} | {} | {} |",
            cell(&[&v], false),
            cell(&[&v], true),
            cell(&[&t], false),
            cell(&[&t], true)
        );
    }
    println!("one all-item ranking per user; warm and cold columns score its warm and its cold held-out items");
    Ok(())
}

/// A line chart of validation Recall@20 per epoch, one polyline per run, as a standalone SVG.
/// Validation Recall@20 per epoch for every run, the y axis fitted to the values, each run's best epoch
/// marked, titled with the dataset.
fn curve_svg(groups: &[(String, Vec<RunResult>)], title: &str) -> String {
    let (w, h, l, r, t, b) = (760.0, 440.0, 70.0, 180.0, 50.0, 50.0);
    let runs: Vec<&RunResult> = groups.iter().flat_map(|(_, rs)| rs.iter()).collect();
    let max_e = runs
        .iter()
        .flat_map(|r| r.curve.iter().map(|c| c.0))
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let ys = || runs.iter().flat_map(|r| r.curve.iter().map(|c| c.1));
    let (lo, hi) = (
        ys().fold(f64::INFINITY, f64::min),
        ys().fold(0.0f64, f64::max),
    );
    let lo = if lo.is_finite() { lo } else { 0.0 };
    let pad = ((hi - lo) * 0.08).max(1e-3);
    let (min_y, max_y) = ((lo - pad).max(0.0), hi + pad);
    let px = |e: f64| l + (w - l - r) * e / max_e;
    let py = |y: f64| h - b - (h - t - b) * (y - min_y) / (max_y - min_y);
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b",
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    s += &format!(
        "<line x1=\"{l}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{0}\" stroke=\"black\"/>\n",
        h - b,
        w - r
    );
    s += &format!(
        "<text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">validation Recall@20, {}</text>\n",
        (l + w - r) / 2.0,
        title.replace('&', "&amp;").replace('<', "&lt;")
    );
    for k in 0..=5 {
        let y = min_y + (max_y - min_y) * k as f64 / 5.0;
        s += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y:.3}</text><line x1=\"{l}\" y1=\"{1}\" x2=\"{2}\" y2=\"{1}\" stroke=\"#ddd\"/>\n",
            l - 6.0,
            py(y),
            w - r
        );
        // whole epochs on the x axis
        let e = (max_e / 5.0).ceil() * k as f64;
        if e <= max_e {
            s += &format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{e:.0}</text>\n",
                px(e),
                h - b + 18.0
            );
        }
    }
    s += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">epoch</text><text x=\"16\" y=\"{}\" transform=\"rotate(-90 16 {})\" text-anchor=\"middle\">validation Recall@20</text>\n",
        (l + w - r) / 2.0,
        h - 10.0,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for (k, run) in runs.iter().enumerate() {
        let c = colors[k % colors.len()];
        let pts: Vec<String> = run
            .curve
            .iter()
            .map(|&(e, y)| format!("{:.1},{:.1}", px(e as f64), py(y)))
            .collect();
        s += &format!(
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            pts.join(" ")
        );
        // the best validation epoch, the one the run reports
        if let Some(&(e, y)) = run.curve.iter().find(|c| c.0 == run.best_epoch) {
            s += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"4\" fill=\"{c}\"><title>{} best epoch {e}: {y:.4}</title></circle>\n",
                px(e as f64),
                py(y),
                run.label
            );
        }
        let ly = t + 18.0 * k as f64;
        s += &format!(
            "<line x1=\"{0}\" y1=\"{ly}\" x2=\"{1}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"2\"/><text x=\"{2}\" y=\"{3}\">{4}</text>\n",
            w - r + 10.0,
            w - r + 30.0,
            w - r + 36.0,
            ly + 4.0,
            run.label
        );
    }
    s + "</svg>\n"
}

fn metrics_json(m: &Metrics) -> serde_json::Value {
    serde_json::json!({"ks": m.ks, "recall": m.recall, "ndcg": m.ndcg, "precision": m.precision, "hit": m.hit, "users": m.users})
}

fn run() -> Result<(), Error> {
    let args = Args::parse();
    let backend = match args.backend {
        BackendArg::Cpu if args.threads == 1 => Backend::Cpu(Par::Seq),
        BackendArg::Cpu => Backend::Cpu(Par::Rayon(args.threads)),
        BackendArg::Gpu => {
            let ctx = recgoat_core::gpu::GpuContext::new()?;
            eprintln!("GPU backend: {}", ctx.adapter_name());
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
    // a folder in LightGCN or MMRec format, or a CSV / TSV file of `user,item[,timestamp]` with any ids
    let (ds, ids) = if is_file {
        let x = read_interactions(&args.data)?;
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
        ds = ds.with_user_features(name, read_features(folder.join(format!("{name}.npy")))?)?;
    }
    println!(
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
    let (cold_users, cold_items) = (ds.cold_users().len(), ds.cold_items().len());
    if cold_users + cold_items > 0 {
        println!(
            "{cold_users} users and {cold_items} items have no training interaction: the users are left out \
             of the metrics, the items stay in the ranking"
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
            let setup = t.elapsed().as_secs_f64();
            if setup > 0.5 {
                println!("{label}: graphs and parameters built in {setup:.1}s");
            }
            runs.push(train_one(trainer, &label, &dir, ids.as_ref())?);
        }
        groups.push((preset.clone(), runs));
    }
    print_table(&groups);
    print_item_groups(&groups, &ds)?;
    std::fs::create_dir_all(&args.out).map_err(io_err(&args.out))?;
    let title = args
        .data
        .file_name()
        .map_or(String::new(), |n| n.to_string_lossy().into_owned());
    write_atomic(
        args.out.join("curve.svg"),
        curve_svg(&groups, &title).as_bytes(),
    )?;
    let json: Vec<serde_json::Value> = groups
        .iter()
        .flat_map(|(_, rs)| rs.iter())
        .map(|r| {
            serde_json::json!({
                "label": r.label, "config": r.config, "best_epoch": r.best_epoch, "epochs_run": r.epochs_run, "capped": r.capped,
                "seconds_per_epoch": r.seconds_per_epoch, "valid": metrics_json(&r.valid),
                "test": metrics_json(&r.test), "curve": r.curve,
                "profile": r.profile.iter().map(|(n, s, f)| serde_json::json!({"stage": n, "seconds": s, "share": f})).collect::<Vec<_>>(),
            })
        })
        .collect();
    let labels: Vec<&str> = (groups.iter().flat_map(|(_, rs)| rs.iter()))
        .map(|r| r.label.as_str())
        .collect();
    write_atomic(
        args.out.join("results.json"),
        serde_json::to_string_pretty(&json)
            .expect("serialises")
            .as_bytes(),
    )?;
    println!(
        "\nwrote {0}/curve.svg, {0}/results.json and, per run, {0}/<run>/checkpoint.safetensors, \
         recommender.safetensors, users.npy, items.npy, embeddings.json (runs: {1})",
        args.out.display(),
        labels.join(", ")
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
