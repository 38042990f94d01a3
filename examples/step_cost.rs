//! Counts the host-side cost of GPU training: compute dispatches, buffer creations, storage buffers reused
//! from the context's pool and bind groups created per step of the device-resident `Trainer`, and queue
//! submissions per epoch, for each preset, on a small synthetic
//! dataset (the counts depend on the configuration, not on the data's size, below the device's dispatch
//! limits). Commands are gathered and submitted together, at a read of the device or when 256 command
//! buffers are waiting, so submissions are counted over the epoch rather than per step.
//!
//! ```text
//! cargo run --release --features gpu --example step_cost
//! ```
//! Runs on whatever adapter `GpuContext::new` picks (a software adapter is fine: nothing is timed).

use recgoat_core::data::Dataset;
use recgoat_core::gpu::{GpuContext, GpuCounters};
use recgoat_core::model::{RecGoatConfig, Trainer};
use recgoat_core::{Backend, GpuBackend, Par};
use std::sync::Arc;

/// 60 users, 40 items, two item modalities (16-d and 8-d), 5 to 8 interactions per user.
fn synthetic() -> Dataset {
    let mut rng = recgoat_core::testing::rng(7);
    let f1 = recgoat_core::testing::randn::<f64, _, _>(&mut rng, (40, 16)).mapv(|v| v as f32);
    let f2 = recgoat_core::testing::randn::<f64, _, _>(&mut rng, (40, 8)).mapv(|v| v as f32);
    let mut train = Vec::new();
    let mut test = Vec::new();
    for u in 0..60 {
        for k in 0..(5 + u % 4) {
            train.push((u, (u * 7 + k * 5) % 40));
        }
        test.push((u, (u * 7 + 3) % 40));
    }
    Dataset::new(
        "synthetic",
        train,
        vec![],
        test,
        vec![("a".into(), f1), ("b".into(), f2)],
    )
    .expect("a valid synthetic dataset")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ctx = Arc::new(GpuContext::new()?);
    println!("adapter: {}", ctx.adapter_name());
    let ds = synthetic();
    println!(
        "{:<14} {:>5} {:>16} {:>14} {:>14} {:>18} {:>18}",
        "preset",
        "steps",
        "dispatches/step",
        "buffers/step",
        "reused/step",
        "bind groups/step",
        "submissions/epoch"
    );
    let presets = [
        ("recgoat", RecGoatConfig::recgoat()),
        ("official_code", RecGoatConfig::official_code()),
        ("lightgcn", RecGoatConfig::lightgcn()),
    ];
    for (name, base) in presets {
        let cfg = RecGoatConfig {
            embedding_dim: 32,
            knn_k: 5,
            batch_size: 64,
            epochs: 1,
            ..base
        };
        let be = Backend::Gpu(GpuBackend::new(ctx.clone(), Par::Seq));
        let mut trainer = Trainer::new(cfg, &ds, be)?;
        // the counters after each step: the difference of two readings is one step's cost
        let mut readings: Vec<GpuCounters> = vec![ctx.counters()];
        trainer.run_epoch(|_, _| readings.push(ctx.counters()))?;
        let steps: Vec<GpuCounters> = readings.windows(2).map(|w| w[1] - w[0]).collect();
        let epoch = readings[readings.len() - 1] - readings[0];
        // the first step also uploads the parameters; the rest record the same dispatches, and about the
        // same buffers (a uniform buffer is made for parameters not seen before, such as a batch's count of
        // distinct rows)
        let later = &steps[1..];
        let range = |f: fn(&GpuCounters) -> u64| {
            let (lo, hi) = (later.iter().map(f).min(), later.iter().map(f).max());
            match (lo, hi) {
                (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
                (Some(lo), Some(hi)) => format!("{lo}-{hi}"),
                _ => "-".into(),
            }
        };
        println!(
            "{:<14} {:>5} {:>16} {:>14} {:>14} {:>18} {:>18}",
            name,
            steps.len(),
            range(|c| c.dispatches),
            range(|c| c.buffers),
            range(|c| c.buffers_reused),
            range(|c| c.bind_groups),
            epoch.submissions,
        );
    }
    Ok(())
}
