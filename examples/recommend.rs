//! Serve a trained model: load the `recommender.safetensors` that the `train` example wrote (no training
//! data needed), print the top 10 unseen items for a few users and the nearest items to one of them, then
//! serve what arrived after training without retraining: a new user known only by an item history, and a
//! new item known only by its features (with Last.fm-2k's item descriptions). Timings are medians over
//! repeated calls.
//!
//! ```text
//! cargo run --release --example train                  # writes out/train/<run>/recommender.safetensors
//! cargo run --release --example recommend              # the recgoat run of seed 2026
//! cargo run --release --example recommend -- --model out/train/lightgcn-s2026/recommender.safetensors --users 0,7
//! cargo run --release --example recommend -- --history 10,52,300 --new-item 7
//! ```

use clap::Parser;
use recgoat_core::data::read_features;
use recgoat_core::recommend::Recommender;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    about = "Top-k recommendations from a saved recommender, for known users, new users and new items"
)]
struct Args {
    /// A recommender saved by `train` (or `Recommender::save`).
    #[arg(
        long,
        default_value = "out/train/recgoat-s2026/recommender.safetensors"
    )]
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
    /// A new user's item history (default: the first five training items of the first --users user).
    #[arg(long, value_delimiter = ',')]
    history: Option<Vec<usize>>,
    /// The item whose feature rows stand for a new item's (read from --features).
    #[arg(long, default_value_t = 0)]
    new_item: usize,
    /// Folder with the feature files `<modality>.npy` the model was trained with.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data/lfm2k"))]
    features: PathBuf,
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

/// The median of `reps` timings of `f`, in microseconds.
fn median_us<T>(reps: usize, mut f: impl FnMut() -> T) -> f64 {
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            std::hint::black_box(f());
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut rec = Recommender::load(&args.model).map_err(|e| {
        format!("{e}\n(run `cargo run --release --example train` first, or pass --model)")
    })?;
    let names = descriptions(&args.items)?;
    // a description, else the item's original id when the data had its own
    let original = |rec: &Recommender, i: usize| rec.ids().and_then(|m| m.items.get(i)).cloned();
    let name = |rec: &Recommender, i: usize| {
        (names.get(&i).cloned())
            .or_else(|| original(rec, i))
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
                name(&rec, *i)
            );
        }
    }
    if let Some(&first) = rec
        .recommend(&args.users[..1.min(args.users.len())], 1)?
        .first()
        .and_then(|t| t.first())
    {
        println!(
            "\nitems nearest to item {} ({}):",
            first.0,
            name(&rec, first.0)
        );
        for (i, sim) in rec.similar_items(first.0, 5)? {
            println!("     item {i:>5}  cosine {sim:>6.3}  {}", name(&rec, i));
        }
    }

    // a new user, known only by what it listened to: folded in, no gradient step
    if rec.can_fold_in() {
        let history = match &args.history {
            Some(h) => h.clone(),
            None => {
                let u = args.users.first().copied().unwrap_or(0);
                rec.seen_items(u)?.into_iter().take(5).collect()
            }
        };
        println!("\na new user who listened to {history:?}:");
        for &i in &history {
            println!("       item {i:>5}  {}", name(&rec, i));
        }
        println!("  is recommended:");
        for (rank, (i, score)) in rec
            .recommend_history(None, &history, args.k)?
            .iter()
            .enumerate()
        {
            println!(
                "{:>3}. item {i:>5}  score {score:>7.3}  {}",
                rank + 1,
                name(&rec, *i)
            );
        }
        let us = median_us(2000, || rec.recommend_history(None, &history, args.k));
        println!(
            "  (top {} for a new history of {} items: {us:.1} us, median of 2000)",
            args.k,
            history.len()
        );
    } else {
        println!("\nthis recommender cannot fold a user in (no fold-in tables): export it again from a trainer");
    }

    // a new item, known only by its features: here the feature rows of item --new-item, as if it had just
    // arrived with no interaction
    let Some(encoder) = rec.encoder().cloned() else {
        println!("\nthis recommender has no content encoder: train a model with the content term (the recgoat preset)");
        return Ok(());
    };
    let rows = (encoder.modalities().iter())
        .map(|(m, _)| {
            let x = read_features(args.features.join(format!("{m}.npy")))?;
            if args.new_item >= x.nrows() {
                return Err(format!(
                    "--new-item {} out of range ({} rows in {m}.npy)",
                    args.new_item,
                    x.nrows()
                )
                .into());
            }
            Ok((
                m.clone(),
                x.row(args.new_item)
                    .insert_axis(ndarray::Axis(0))
                    .to_owned(),
            ))
        })
        .collect::<Result<Vec<_>, Box<dyn std::error::Error>>>()?;
    let views: Vec<(&str, ndarray::ArrayView2<'_, f32>)> =
        rows.iter().map(|(m, x)| (m.as_str(), x.view())).collect();
    let us = median_us(2000, || rec.embed_items(&views));
    let trust: Vec<String> = (encoder.modalities().iter().zip(encoder.trust()))
        .map(|((m, _), t)| format!("{m} {t:.2}"))
        .collect();
    let ids = rec.ids().map(|m| vec![format!("new-{}", m.items.len())]);
    let new = rec.add_items(&views, ids)?.start;
    println!(
        "\na new item with the features of item {} ({}) is item {new} (trusts: {}; embedded in {us:.1} us, \
         median of 2000)",
        args.new_item,
        name(&rec, args.new_item),
        trust.join(", ")
    );
    // where it lands in each user's ranking of the unseen items: new items are placed with the caution
    // their uncertainty calls for (docs/COLD-START.md)
    let mut ranks: Vec<(usize, usize)> = (0..n_users)
        .map(|u| {
            let users = rec.user_vectors();
            let items = rec.item_vectors();
            let mine = users.row(u).dot(&items.row(new));
            let seen = rec.seen_items(u).unwrap_or_default();
            let above = (0..new)
                .filter(|i| seen.binary_search(i).is_err())
                .filter(|&i| users.row(u).dot(&items.row(i)) > mine)
                .count();
            (above + 1, u)
        })
        .collect();
    ranks.sort_unstable();
    let within = |k: usize| ranks.iter().filter(|r| r.0 <= k).count();
    let best: Vec<String> = ranks
        .iter()
        .take(5)
        .map(|(r, u)| format!("user {u} (rank {r})"))
        .collect();
    println!(
        "  it is in the top {} of {} users and the top 50 of {} (of {n_users}); it ranks highest for {}",
        args.k,
        within(args.k),
        within(50),
        best.join(", ")
    );
    let nearest: Vec<String> = (rec.similar_items(new, 5)?.iter())
        .map(|&(i, s)| format!("{i} ({s:.2})"))
        .collect();
    println!("  its nearest items by cosine: {}", nearest.join(", "));
    Ok(())
}
