//! How well a trained model serves users it never saw, without retraining: a seeded share of the users with
//! test interactions is held out of training (their training interactions removed); after training, each is
//! folded in from those interactions as its history (`Recommender::fold_in`, no gradient step) and ranks
//! every item, its history and validation items left out. Their test Recall@20 / NDCG@20 are printed beside
//! the same users in a model trained with them and beside item popularity, mean ± std over the seeds.
//!
//! ```text
//! cargo run --release --example new_users                        # Last.fm-2k, 10 % of the users, 3 seeds
//! cargo run --release --example new_users -- --presets lightgcn --seeds 1
//! ```

mod common;

use clap::Parser;
use ndarray::{Array2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use recgoat_core::data::{Dataset, Pair};
use recgoat_core::eval::evaluate;
use recgoat_core::model::{RecGoatConfig, Trainer};
use recgoat_core::recommend::Recommender;
use recgoat_core::{Backend, Error, Par};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Recall and NDCG of users held out of training, folded in from their histories")]
struct Args {
    /// A folder with LightGCN split files (or an MMRec .inter file) and optional <name>.npy item features.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k"))]
    data: PathBuf,
    /// Feature files to load (names without .npy; "" for none).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "text_feat,audio_vggish_feat,audio_whisper_feat"
    )]
    features: Vec<String>,
    /// Model presets to measure.
    #[arg(long, value_delimiter = ',', default_value = "recgoat,lightgcn")]
    presets: Vec<String>,
    /// Share of the users with test interactions held out of training.
    #[arg(long, default_value_t = 0.1)]
    fraction: f64,
    /// Seed of the held-out users.
    #[arg(long, default_value_t = 11)]
    split_seed: u64,
    /// Seeds per model (seed, seed + 1, ...).
    #[arg(long, default_value_t = 3)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

/// A trained recommender (learning rate 5e-3, early stopping with patience 30, as the `train` example).
fn trained(ds: &Dataset, preset: &str, seed: u64) -> Result<Recommender, Error> {
    let mut cfg = RecGoatConfig::preset(preset)?;
    (cfg.lr, cfg.patience, cfg.epochs, cfg.seed) = (5e-3, 30, 1000, seed);
    let mut t = Trainer::new(cfg, ds, Backend::Cpu(Par::rayon()))?;
    t.fit(|_, _| {})?;
    t.finish()?;
    Recommender::from_trainer(&t)
}

/// Mean ± std of `v` as a table cell (the value alone for one seed).
fn cell(v: &[f64]) -> String {
    match common::mean_std(v) {
        (m, _) if v.len() == 1 => format!("{m:.4}"),
        (m, s) => format!("{m:.4} ± {s:.4}"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let names: Vec<&str> = (args.features.iter())
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .collect();
    let ds = Dataset::load_dir(&args.data, &names)?;
    if !(args.fraction > 0.0 && args.fraction < 1.0) {
        return Err(format!("--fraction {} must be in (0, 1)", args.fraction).into());
    }
    // the held-out users, their histories (training items) and their held-out items, by row
    let mut users: Vec<usize> = ds.test.iter().map(|p| p.0).collect();
    users.sort_unstable();
    users.dedup();
    users.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(args.split_seed));
    users.truncate(((users.len() as f64) * args.fraction).round().max(1.0) as usize);
    users.sort_unstable();
    let row: HashMap<usize, usize> = users.iter().enumerate().map(|(r, &u)| (u, r)).collect();
    let by_row = |pairs: &[Pair]| -> Vec<Pair> {
        (pairs.iter())
            .filter_map(|&(u, i)| row.get(&u).map(|&r| (r, i)))
            .collect()
    };
    let (history, valid, test) = (by_row(&ds.train), by_row(&ds.valid), by_row(&ds.test));
    let mut histories = vec![Vec::new(); users.len()];
    for &(r, i) in &history {
        histories[r].push(i);
    }
    let mut without = ds.clone();
    without.train.retain(|p| !row.contains_key(&p.0));
    println!(
        "{}: {} of {} users held out ({} training, {} test interactions); {} seeds",
        args.data.display(),
        users.len(),
        ds.n_users,
        history.len(),
        test.len(),
        args.seeds
    );
    let score = |u: &Array2<f32>, items: &Array2<f32>| -> Result<(f64, f64), Error> {
        let m = evaluate(
            u.view(),
            items.view(),
            &test,
            &[&history, &valid],
            &[20],
            Par::rayon(),
        )?;
        Ok((m.recall[0], m.ndcg[0]))
    };
    // popularity over the training split the models see
    let mut pop = Array2::<f32>::zeros((ds.n_items, 1));
    for &(_, i) in &without.train {
        pop[[i, 0]] += 1.0;
    }
    let popular = score(&Array2::ones((users.len(), 1)), &pop)?;
    println!("\n| model | new users R@20 | new users N@20 | trained with them R@20 | trained with them N@20 |");
    println!("|---|---|---|---|---|");
    for preset in &args.presets {
        let mut cols = vec![Vec::new(); 4];
        for seed in args.seed..args.seed + args.seeds {
            let rec = trained(&without, preset, seed)?;
            let mut z = Array2::<f32>::zeros((users.len(), rec.item_vectors().ncols()));
            for (r, h) in histories.iter().enumerate() {
                z.row_mut(r).assign(&rec.fold_in(None, h)?);
            }
            let (r, n) = score(&z, &rec.item_vectors().to_owned())?;
            let full = trained(&ds, preset, seed)?;
            let known = full.user_vectors().select(Axis(0), &users);
            let (rk, nk) = score(&known, &full.item_vectors().to_owned())?;
            eprintln!("{preset} seed {seed}: new users {r:.4} / {n:.4}, trained with them {rk:.4} / {nk:.4}");
            for (c, v) in cols.iter_mut().zip([r, n, rk, nk]) {
                c.push(v);
            }
        }
        let cells: Vec<String> = cols.iter().map(|c| cell(c)).collect();
        println!("| {preset} | {} |", cells.join(" | "));
    }
    println!("| popularity | {:.4} | {:.4} | | |", popular.0, popular.1);
    Ok(())
}
