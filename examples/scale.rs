//! How an epoch's time grows with the data: synthetic scale-ups of a bundled dataset
//! ([`recgoat_core::data::scale_up`]: every user and item copied `factor` times with its degrees, the pairs
//! rewired at random) trained with the exact schedule (one optimiser step per batch, each over the whole
//! graphs) and with `steps_per_epoch` grouped steps.
//!
//! ```text
//! cargo run --release --example scale                              # Last.fm-2k at 1x, 4x, 16x
//! cargo run --release --example scale -- --factors 1,2,4 --epochs 3 --steps 16
//! ```
//! Prints one row per scale-up and schedule (median seconds per epoch over `--epochs` epochs, the model's
//! build time with its kNN graphs) and the log-log slope of epoch time against interactions per schedule,
//! over all sizes and between consecutive ones: 2 is quadratic, 1 linear. Writes the table to `--out/scale.md` and the runs to `--out/scale.json`.
//!
//! Under `mpirun -np P` (built with `--features mpi`) the P processes train each run together, data
//! parallel, and the table gives the exchanges' time and the bytes each step's all-reduce moves:
//! `mpirun -np 2 target/release/examples/scale --threads 1 --factors 4 --exact-up-to 0`.

use clap::Parser;
use recgoat_core::data::{scale_up, Dataset};
use recgoat_core::dist::World;
use recgoat_core::model::{write_atomic, RecGoatConfig, Stage, Trainer};
use recgoat_core::{Backend, Par};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

mod common;
use common::note;

#[derive(Parser, Debug)]
#[command(about = "Epoch time against data size, exact and grouped schedules")]
struct Args {
    /// Dataset folder (LightGCN text splits and `.npy` features).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k"))]
    data: PathBuf,
    /// Feature matrices to load (file stems; "" for none, as for an interactions-only dataset).
    #[arg(long, value_delimiter = ',', default_values_t = ["text_feat", "audio_vggish_feat", "audio_whisper_feat"].map(String::from))]
    features: Vec<String>,
    /// Scale factors.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16])]
    factors: Vec<usize>,
    /// The model's preset.
    #[arg(long, default_value = "recgoat", value_parser = ["recgoat", "paper", "official_code", "lightgcn"])]
    preset: String,
    /// Optimiser steps per epoch of the grouped schedule.
    #[arg(long, default_value_t = 8)]
    steps: usize,
    /// Epochs timed per run (the median is reported).
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// The largest factor the exact schedule runs at (it grows quadratically).
    #[arg(long, default_value_t = 16)]
    exact_up_to: usize,
    /// A field of the configuration, `FIELD=VALUE` (repeatable).
    #[arg(long = "set", value_name = "FIELD=VALUE")]
    sets: Vec<String>,
    /// Seed of the scale-ups.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// CPU threads (0: all).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Output folder.
    #[arg(long, default_value = "out/scale")]
    out: PathBuf,
}

/// One timed run.
struct Run {
    factor: usize,
    users: usize,
    items: usize,
    interactions: usize,
    schedule: String,
    build_s: f64,
    epoch_s: Vec<f64>,
    /// Seconds per epoch in the stages whose work follows the graphs (propagation, branches, fusion,
    /// optimiser) and in those that follow the batches (losses, sampling).
    graph_s: f64,
    batch_s: f64,
    /// Seconds per epoch in data-parallel training's exchanges, and the bytes of each step's all-reduce.
    exchange_s: f64,
    bytes: usize,
}

/// The stages whose work is per batch; the others run once per step over the whole graphs.
const BATCH_STAGES: [&str; 3] = ["contrastive", "bpr+reg", "sampling"];

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// Least-squares slope of `ln y` against `ln x`.
fn log_log_slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (xs, ys): (Vec<f64>, Vec<f64>) = points.iter().map(|&(x, y)| (x.ln(), y.ln())).unzip();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    common::rayon_threads(args.threads)?;
    let world = World::from_env()?;
    common::reports_from(&world);
    if args.epochs == 0 || args.factors.is_empty() || args.factors.contains(&0) {
        return Err("--epochs and every --factors value must be >= 1".into());
    }
    let features: Vec<&str> = (args.features.iter())
        .map(String::as_str)
        .filter(|f| !f.is_empty())
        .collect();
    let base = Dataset::load_lightgcn_dir(&args.data, &features)?;
    let mut cfg = RecGoatConfig::preset(&args.preset)?;
    for s in &args.sets {
        cfg.set(s)?;
    }
    // no evaluation and no stopping inside the timed epochs
    (cfg.epochs, cfg.eval_every, cfg.patience) = (1 << 30, 1 << 30, 0);
    let schedules = [
        ("exact".to_string(), 0),
        (format!("{} steps", args.steps), args.steps),
    ];
    let mut runs = Vec::new();
    for &factor in &args.factors {
        let t = Instant::now();
        let ds = scale_up(&base, factor, args.seed)?;
        note!(
            "x{factor}: {} users, {} items, {} train interactions (generated in {:.1} s)",
            ds.n_users,
            ds.n_items,
            ds.train.len(),
            t.elapsed().as_secs_f64()
        );
        for (name, steps) in &schedules {
            if *steps == 0 && factor > args.exact_up_to {
                continue;
            }
            // the schedule as named, whatever the size
            let c = RecGoatConfig {
                steps_per_epoch: *steps,
                auto_schedule_from: 0,
                ..cfg.clone()
            };
            let t = Instant::now();
            let mut trainer = Trainer::new(c, &ds, Backend::Cpu(Par::default()))?;
            trainer.distribute(world.clone())?;
            let build_s = t.elapsed().as_secs_f64();
            let mut epoch_s = Vec::new();
            for e in 0..args.epochs {
                let log = trainer.run_epoch(|_, _| {})?;
                note!(
                    "  {name:>9}: epoch {} of {}: {:.2} s, loss {:.4}",
                    e + 1,
                    args.epochs,
                    log.train_seconds,
                    log.loss
                );
                epoch_s.push(log.train_seconds);
            }
            let breakdown = trainer.profile().breakdown();
            let stages: Vec<String> = (breakdown.iter())
                .map(|(name, secs, _)| format!("{name} {secs:.2} s"))
                .collect();
            note!("  {name:>9}: stages over the run: {}", stages.join(", "));
            let per_epoch = |batch: bool| {
                (breakdown.iter())
                    .filter(|(n, _, _)| BATCH_STAGES.contains(n) == batch)
                    .filter(|(n, _, _)| !["evaluation", "exchange"].contains(n))
                    .map(|(_, secs, _)| secs)
                    .sum::<f64>()
                    / args.epochs as f64
            };
            let (graph_s, batch_s) = (per_epoch(false), per_epoch(true));
            let exchange_s = trainer.profile().get(Stage::Exchange) / args.epochs as f64;
            // one all-reduce per step: every parameter's gradient and a failure flag, as f32
            let bytes = if world.size() > 1 {
                4 * (trainer.params().len() + 1)
            } else {
                0
            };
            runs.push(Run {
                factor,
                users: ds.n_users,
                items: ds.n_items,
                interactions: ds.train.len(),
                schedule: name.clone(),
                build_s,
                epoch_s,
                graph_s,
                batch_s,
                exchange_s,
                bytes,
            });
        }
    }

    let mut md = String::new();
    writeln!(
        md,
        "`{}` on {} scale-ups (seed {}), {} timed epochs per run, median; {} process(es) of {} rayon \
         threads.\n",
        args.preset,
        args.data.display(),
        args.seed,
        args.epochs,
        world.size(),
        rayon::current_num_threads()
    )?;
    writeln!(
        md,
        "| factor | users | items | train interactions | schedule | model build (s) | epoch (s, median) | graph stages (s/epoch) | batch stages (s/epoch) | exchange (s/epoch) | MB per step's all-reduce |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &runs {
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} | {:.2} |",
            r.factor,
            r.users,
            r.items,
            r.interactions,
            r.schedule,
            r.build_s,
            median(&r.epoch_s),
            r.graph_s,
            r.batch_s,
            r.exchange_s,
            r.bytes as f64 / 1e6
        )?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "Log-log slopes against interactions (1: linear, 2: quadratic):\n"
    )?;
    writeln!(
        md,
        "| schedule | epoch | graph stages | batch stages | sizes | epoch, between consecutive sizes |"
    )?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for (name, _) in &schedules {
        let of = |f: &dyn Fn(&Run) -> f64| {
            let points: Vec<(f64, f64)> = (runs.iter().filter(|r| &r.schedule == name))
                .map(|r| (r.interactions as f64, f(r)))
                .collect();
            log_log_slope(&points).map_or("-".into(), |s| format!("{s:.2}"))
        };
        let mine: Vec<&Run> = runs.iter().filter(|r| &r.schedule == name).collect();
        // the slope from each size to the next: where the cost's constant settles
        let steps: Vec<String> = (mine.windows(2))
            .filter_map(|w| {
                let points = [w[0], w[1]].map(|r| (r.interactions as f64, median(&r.epoch_s)));
                log_log_slope(&points).map(|s| format!("{}x-{}x {s:.2}", w[0].factor, w[1].factor))
            })
            .collect();
        writeln!(
            md,
            "| {name} | **{}** | {} | {} | {} | {} |",
            of(&|r| median(&r.epoch_s)),
            of(&|r| r.graph_s),
            of(&|r| r.batch_s),
            mine.len(),
            if steps.is_empty() {
                "-".into()
            } else {
                steps.join(", ")
            }
        )?;
    }
    if !world.is_root() {
        return Ok(());
    }
    println!("\n{md}");
    let json: Vec<serde_json::Value> = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "factor": r.factor, "users": r.users, "items": r.items, "interactions": r.interactions,
                "schedule": r.schedule, "build_seconds": r.build_s, "epoch_seconds": r.epoch_s,
                "graph_stage_seconds_per_epoch": r.graph_s, "batch_stage_seconds_per_epoch": r.batch_s,
                "exchange_seconds_per_epoch": r.exchange_s, "allreduce_bytes_per_step": r.bytes,
                "processes": world.size(),
            })
        })
        .collect();
    std::fs::create_dir_all(&args.out)?;
    write_atomic(args.out.join("scale.md"), md.as_bytes())?;
    write_atomic(
        args.out.join("scale.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    note!("wrote {}", args.out.join("scale.md").display());
    Ok(())
}
