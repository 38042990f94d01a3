//! The robustness suite: the multimodal model against its ID-only backbone on data where the item features
//! help, barely help, or carry nothing.
//!
//! ```text
//! cargo run --release --example robustness                        # every entry, 3 seeds each
//! cargo run --release --example robustness -- --entries lfm-all,lfm-noise --seeds 1
//! cargo run --release --example robustness -- --set cl_weight=0.1  # a change to the multimodal model
//! ```
//! Each entry trains `--preset` (default `paper`) and `--baseline` (default `lightgcn`) with early stopping on
//! validation Recall@20 (patience 30 evaluations, epoch cap 1000), each model at its own best validation
//! epoch, and reports test Recall@20 and NDCG@20 as mean +- std over the seeds. The entries:
//!
//! | entry | data | item features |
//! |---|---|---|
//! | `lfm-all` | Last.fm-2k | text, VGGish audio, Whisper audio |
//! | `lfm-text` | Last.fm-2k | text |
//! | `lfm-vggish` | Last.fm-2k | VGGish audio |
//! | `lfm-whisper` | Last.fm-2k | Whisper audio |
//! | `lfm-noise` | Last.fm-2k | every matrix replaced by standard Gaussian noise of its shape |
//! | `baby-noise` | Amazon Baby (interactions only) | two 128-wide standard Gaussian noise matrices |
//!
//! Targets (checked and marked in the table): on every entry the multimodal model's test Recall@20 and
//! NDCG@20 are at least the baseline's mean minus one std; on `lfm-all` and `lfm-text` at least 3 % above the
//! baseline's mean. Writes the table to `--out/robustness.md` and every run to `--out/robustness.json`.

use clap::Parser;
use ndarray::Array2;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use recgoat_core::data::Dataset;
use recgoat_core::model::{write_atomic, RecGoatConfig, Split, Trainer};
use recgoat_core::{Backend, Error, Par};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

mod common;

const ENTRIES: [&str; 6] = [
    "lfm-all",
    "lfm-text",
    "lfm-vggish",
    "lfm-whisper",
    "lfm-noise",
    "baby-noise",
];

#[derive(Parser, Debug)]
#[command(
    about = "paper() vs lightgcn() on data where features help, barely help or carry nothing"
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
    Ok(match entry {
        "lfm-all" => Dataset::load_dir(&lfm, &all)?,
        "lfm-text" => Dataset::load_dir(&lfm, &["text_feat"])?,
        "lfm-vggish" => Dataset::load_dir(&lfm, &["audio_vggish_feat"])?,
        "lfm-whisper" => Dataset::load_dir(&lfm, &["audio_whisper_feat"])?,
        "lfm-noise" => {
            let mut ds = Dataset::load_dir(&lfm, &all)?;
            for (k, (_, x)) in ds.item_features.iter_mut().enumerate() {
                *x = noise(x.dim(), 100 + k as u64);
            }
            ds
        }
        "baby-noise" => {
            let mut ds = Dataset::load_dir(root.join("baby"), &[])?;
            let n = ds.n_items;
            ds.item_features = vec![
                ("noise_a".into(), noise((n, 128), 200)),
                ("noise_b".into(), noise((n, 128), 201)),
            ];
            ds
        }
        other => unreachable!("clap admits only the listed entries, not {other}"),
    })
}

struct Run {
    entry: String,
    model: String,
    seed: u64,
    best_epoch: usize,
    capped: bool,
    seconds: f64,
    valid_r20: f64,
    r20: f64,
    n20: f64,
}

fn train(entry: &str, ds: &Dataset, cfg: RecGoatConfig, backend: &Backend) -> Result<Run, Error> {
    let started = Instant::now();
    let (model, seed) = (cfg.name.clone(), cfg.seed);
    let mut t = Trainer::new(cfg, ds, backend.clone())?;
    t.fit(|_, _| {})?;
    t.finish()?;
    let (st, c) = (t.state(), t.config());
    let capped = st.epoch >= c.epochs && st.epoch - st.best_epoch < c.patience * c.eval_every;
    let test = t.evaluate(Split::Test)?;
    let at = |s: &[f64]| test.at(s, 20).unwrap_or(f64::NAN);
    let run = Run {
        entry: entry.into(),
        model,
        seed,
        best_epoch: st.best_epoch,
        capped,
        seconds: started.elapsed().as_secs_f64(),
        valid_r20: st.best_recall,
        r20: at(&test.recall),
        n20: at(&test.ndcg),
    };
    println!(
        "{:<12} {:<14} seed {}: best epoch {:>4}{}, valid R@20 {:.4}, test R@20 {:.4} N@20 {:.4} ({:.0}s)",
        run.entry,
        run.model,
        run.seed,
        run.best_epoch,
        if capped { " (epoch cap)" } else { "" },
        run.valid_r20,
        run.r20,
        run.n20,
        run.seconds
    );
    Ok(run)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

/// The table of every entry: each model's test metrics, the change, and whether the targets hold.
fn table(runs: &[Run], preset: &str, baseline: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| entry | {preset} R@20 | {baseline} R@20 | change | {preset} N@20 | {baseline} N@20 | change | best epochs ({preset} / {baseline}) | target |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|");
    let mut entries: Vec<&str> = runs.iter().map(|r| r.entry.as_str()).collect();
    entries.dedup();
    for e in entries {
        let of = |m: &str| -> Vec<&Run> {
            runs.iter()
                .filter(|r| r.entry == e && r.model == m)
                .collect()
        };
        let (a, b) = (of(preset), of(baseline));
        let stat = |rs: &[&Run], f: fn(&Run) -> f64| {
            mean_std(&rs.iter().map(|r| f(r)).collect::<Vec<_>>())
        };
        let epochs = |rs: &[&Run]| {
            (rs.iter()
                .map(|r| format!("{}{}", r.best_epoch, if r.capped { "*" } else { "" })))
            .collect::<Vec<_>>()
            .join(",")
        };
        let strong = e == "lfm-all" || e == "lfm-text";
        let mut cells = Vec::new();
        let mut ok = true;
        for f in [(|r: &Run| r.r20) as fn(&Run) -> f64, |r: &Run| r.n20] {
            let ((ma, sa), (mb, sb)) = (stat(&a, f), stat(&b, f));
            ok &= ma >= mb - sb && (!strong || ma >= 1.03 * mb);
            cells.push(format!(
                "{ma:.4} ± {sa:.4} | {mb:.4} ± {sb:.4} | {:+.1} %",
                100.0 * (ma / mb - 1.0)
            ));
        }
        let target = if strong { ">= +3 %" } else { ">= mean - std" };
        let _ = writeln!(
            out,
            "| {e} | {} | {} | {} / {} | {} {target} |",
            cells[0],
            cells[1],
            epochs(&a),
            epochs(&b),
            if ok { "met" } else { "missed" }
        );
    }
    out
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
    // every configuration is checked before the first run
    configure(&args.preset, args.seed, true)?;
    let mut runs = Vec::new();
    let started = Instant::now();
    for entry in &args.entries {
        let ds = dataset(entry, &args.data)?;
        for s in 0..args.seeds {
            let seed = args.seed + s;
            for (preset, main) in [(&args.preset, true), (&args.baseline, false)] {
                if preset != "none" {
                    runs.push(train(entry, &ds, configure(preset, seed, main)?, &backend)?);
                }
            }
        }
    }
    if args.baseline == "none" {
        return Ok(());
    }
    let md = table(&runs, &args.preset, &args.baseline);
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
    println!("\n{header}{md}");
    std::fs::create_dir_all(&args.out)?;
    write_atomic(
        args.out.join("robustness.md"),
        format!("{header}{md}").as_bytes(),
    )?;
    let json: Vec<_> = (runs.iter())
        .map(|r| {
            serde_json::json!({"entry": r.entry, "model": r.model, "seed": r.seed, "best_epoch": r.best_epoch,
                "capped": r.capped, "seconds": r.seconds, "valid_recall20": r.valid_r20,
                "test_recall20": r.r20, "test_ndcg20": r.n20})
        })
        .collect();
    let text = serde_json::to_string_pretty(&json)?;
    write_atomic(args.out.join("robustness.json"), text.as_bytes())?;
    println!(
        "wrote {}/robustness.md and robustness.json",
        args.out.display()
    );
    Ok(())
}
