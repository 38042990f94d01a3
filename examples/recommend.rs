//! Serve a trained model: load the `recommender.safetensors` that the `train` example wrote (no training
//! data needed), print the top 10 unseen items for a few users and the nearest items to one of them, with
//! Last.fm-2k's item descriptions.
//!
//! ```text
//! cargo run --release --example train                  # writes out/train/<run>/recommender.safetensors
//! cargo run --release --example recommend              # the paper run of seed 2026
//! cargo run --release --example recommend -- --model out/train/lightgcn-s2026/recommender.safetensors --users 0,7
//! ```

use clap::Parser;
use recgoat_core::recommend::Recommender;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Top-k recommendations from a saved recommender")]
struct Args {
    /// A recommender saved by `train` (or `Recommender::save`).
    #[arg(long, default_value = "out/train/paper-s2026/recommender.safetensors")]
    model: PathBuf,
    /// Users to recommend for.
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    users: Vec<usize>,
    /// Items per user.
    #[arg(long, default_value_t = 10)]
    k: usize,
    /// Item descriptions: a TSV with a header and `itemID` first ("none" to print ids only).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k/item_text.tsv"))]
    items: String,
}

/// Item id -> a short description (the artist id and the first few tags of Last.fm-2k's text).
fn descriptions(path: &str) -> Result<HashMap<usize, String>, Box<dyn std::error::Error>> {
    if path == "none" {
        return Ok(HashMap::new());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = HashMap::new();
    for line in text.lines().skip(1) {
        let mut f = line.split('\t');
        let (Some(id), Some(artist), tags) = (f.next(), f.next(), f.next().unwrap_or("")) else {
            continue;
        };
        let Ok(id) = id.parse::<usize>() else {
            continue;
        };
        let tags: Vec<&str> = tags.split(',').take(4).collect();
        out.insert(id, format!("artist {artist}: {}", tags.join(", ")));
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let rec = Recommender::load(&args.model).map_err(|e| {
        format!("{e}\n(run `cargo run --release --example train` first, or pass --model)")
    })?;
    let names = descriptions(&args.items)?;
    // a description, else the item's original id when the data had its own ids
    let original = |i: usize| rec.ids().and_then(|m| m.items.get(i)).cloned();
    let name = |i: usize| {
        names
            .get(&i)
            .cloned()
            .or_else(|| original(i))
            .unwrap_or_default()
    };
    let user_name = |u: usize| {
        rec.ids()
            .and_then(|m| m.users.get(u))
            .map(|s| format!(" ({s})"))
    };
    let (n_users, n_items) = rec.shape();
    println!("{}: {n_users} users, {n_items} items", args.model.display());
    for (u, top) in args.users.iter().zip(rec.recommend(&args.users, args.k)?) {
        println!(
            "\nuser {u}{}: top {} unseen items",
            user_name(*u).unwrap_or_default(),
            args.k
        );
        for (rank, (i, score)) in top.iter().enumerate() {
            println!(
                "{:>3}. item {i:>5}  score {score:>7.3}  {}",
                rank + 1,
                name(*i)
            );
        }
    }
    if let Some(&first) = rec
        .recommend(&args.users[..1.min(args.users.len())], 1)?
        .first()
        .and_then(|t| t.first())
    {
        println!("\nitems nearest to item {} ({}):", first.0, name(first.0));
        for (i, sim) in rec.similar_items(first.0, 5)? {
            println!("     item {i:>5}  cosine {sim:>6.3}  {}", name(i));
        }
    }
    Ok(())
}
