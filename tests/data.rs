//! Data loaders: the bundled real datasets load with their documented counts; malformed inputs give errors
//! that name the file, the line and the problem.

mod common;

use ndarray::Array2;
use recgoat_core::data::*;
use recgoat_core::Error;
use std::path::PathBuf;

fn bundled(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(name)
}

/// A fresh temporary folder for one test.
fn scratch(test: &str) -> common::Scratch {
    common::Scratch::new("recgoat-data", test)
}

#[test]
fn lastfm_2k_loads_with_its_documented_counts() {
    let ds = Dataset::load_lightgcn_dir(
        bundled("lfm2k"),
        &["text_feat", "audio_vggish_feat", "audio_whisper_feat"],
    )
    .unwrap();
    assert_eq!((ds.n_users, ds.n_items), (1858, 1425));
    assert_eq!(
        (ds.train.len(), ds.valid.len(), ds.test.len()),
        (44_327, 4_799, 7_219)
    );
    let dims: Vec<(usize, usize)> = ds.item_features.iter().map(|(_, f)| f.dim()).collect();
    assert_eq!(dims, vec![(1425, 384), (1425, 128), (1425, 512)]);
}

#[test]
fn amazon_baby_loads_with_its_documented_counts() {
    let ds = Dataset::load_lightgcn_dir(bundled("baby"), &[]).unwrap();
    assert_eq!((ds.n_users, ds.n_items), (19_445, 7_050));
    assert_eq!(
        (ds.train.len(), ds.valid.len(), ds.test.len()),
        (118_551, 20_559, 21_682)
    );
}

#[test]
fn malformed_split_lines_name_the_file_and_line() {
    let dir = scratch("split");
    std::fs::write(dir.join("train.txt"), "0 1 2\n1 2\n2 x3 1\n").unwrap();
    let e = read_lightgcn_split(dir.join("train.txt")).unwrap_err();
    assert!(
        matches!(&e, Error::Data { line: 3, .. })
            && e.to_string().contains("`x3`")
            && e.to_string().contains("train.txt:3"),
        "{e}"
    );
    let e = read_lightgcn_split(dir.join("missing.txt")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn inconsistent_datasets_are_refused() {
    let make = |train: &str, test: &str| {
        let dir = scratch(&format!("ds{}", train.len() * 31 + test.len()));
        std::fs::write(dir.join("train.txt"), train).unwrap();
        std::fs::write(dir.join("test.txt"), test).unwrap();
        Dataset::load_lightgcn_dir(&dir, &[])
            .unwrap_err()
            .to_string()
    };
    assert!(make("0 0 3\n1 1\n", "0 1\n").contains("item 2 has no interaction"));
    assert!(make("0 0\n2 1\n", "0 1\n").contains("user 1 has no interaction"));
    assert!(make("\n", "").contains("training split is empty"));
}

/// A user or item with held-out interactions only loads (a cold user or item), is counted, and cold users
/// are left out of the ranking metrics.
#[test]
fn users_and_items_without_training_interactions_load_and_are_counted() {
    let dir = scratch("cold");
    std::fs::write(dir.join("train.txt"), "0 0 1\n1 1 2\n").unwrap();
    std::fs::write(dir.join("test.txt"), "0 2\n2 0\n1 3\n").unwrap();
    let ds = Dataset::load_lightgcn_dir(&dir, &[]).unwrap();
    assert_eq!((ds.n_users, ds.n_items), (3, 4));
    assert_eq!((ds.cold_users(), ds.cold_items()), (vec![2], vec![3]));
    use recgoat_core::model::{RecGoatConfig, Split, Trainer};
    let cfg = RecGoatConfig {
        embedding_dim: 8,
        epochs: 1,
        ..RecGoatConfig::lightgcn()
    };
    let t = Trainer::new(cfg, &ds, recgoat_core::Backend::Cpu(recgoat_core::Par::Seq)).unwrap();
    // users 0 and 1 are evaluated, user 2 (cold) is not
    assert_eq!(t.evaluate(Split::Test).unwrap().users, 2);
}

/// Every layout numpy writes for a 2-D float matrix (C and Fortran order, little- and big-endian, float32 and
/// float64) reads back the same matrix; the files were written by numpy itself (`tests/fixtures/npy/make.py`).
#[test]
fn npy_files_in_every_numpy_layout_read_the_same_matrix() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/npy");
    let m = ndarray::array![[1.5f32, -2.25], [3.0, 0.125], [1e-3, 7.0]];
    for order in ["c", "f"] {
        for endian in ["le", "be"] {
            for dtype in ["f4", "f8"] {
                let name = format!("{order}_{endian}_{dtype}.npy");
                let x = read_features(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(x, m, "{name}");
            }
        }
    }
    // np.save(x.T) of a C-order x: the transpose, written in Fortran order
    assert_eq!(read_features(dir.join("transposed_f4.npy")).unwrap(), m.t());
    // other dtypes are refused with the dtype named
    let mut bytes = std::fs::read(dir.join("c_le_f4.npy")).unwrap();
    let at = bytes.windows(5).position(|w| w == b"'<f4'").unwrap();
    bytes[at..at + 5].copy_from_slice(b"'<i4'");
    let dir = scratch("npy-dtype");
    let tmp = dir.join("int.npy");
    std::fs::write(&tmp, &bytes).unwrap();
    let e = read_features(&tmp).unwrap_err().to_string();
    assert!(
        e.contains("int.npy")
            && e.contains("'<i4'")
            && e.contains("convert with x.astype(np.float32)"),
        "{e}"
    );
}

#[test]
fn features_must_match_the_items_and_be_finite() {
    let dir = scratch("feat");
    std::fs::write(dir.join("train.txt"), "0 0 1\n1 1 2\n").unwrap();
    std::fs::write(dir.join("test.txt"), "").unwrap();
    ndarray_npy::write_npy(dir.join("short.npy"), &Array2::<f32>::zeros((2, 4))).unwrap();
    let e = Dataset::load_lightgcn_dir(&dir, &["short"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("2 rows for 3 items"), "{e}");
    let mut bad = Array2::<f32>::ones((3, 4));
    bad[[1, 2]] = f32::NAN;
    ndarray_npy::write_npy(dir.join("nan.npy"), &bad).unwrap();
    let e = Dataset::load_lightgcn_dir(&dir, &["nan"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("row 1") && e.contains("NaN"), "{e}");
    // float64 files are accepted and converted
    ndarray_npy::write_npy(dir.join("f64.npy"), &Array2::<f64>::from_elem((3, 2), 0.25)).unwrap();
    let ds = Dataset::load_lightgcn_dir(&dir, &["f64"]).unwrap();
    assert_eq!(
        ds.item_features[0].1,
        Array2::<f32>::from_elem((3, 2), 0.25)
    );
    assert!(matches!(
        read_features(dir.join("nope.npy")).unwrap_err(),
        Error::Io { .. }
    ));
}

#[test]
fn mmrec_inter_files() {
    let dir = scratch("inter");
    let good = "userID\titemID\trating\ttimestamp\tx_label\n0\t1\t5\t100\t0\n1\t0\t4\t101\t1\n0\t0\t3\t102\t2\n";
    std::fs::write(dir.join("a.inter"), good).unwrap();
    let (train, valid, test) = read_mmrec_inter(dir.join("a.inter")).unwrap();
    assert_eq!(
        (train, valid, test),
        (vec![(0, 1)], vec![(1, 0)], vec![(0, 0)])
    );
    std::fs::write(
        dir.join("b.inter"),
        "userID\titemID\tx_label\n0\t1\t0\n0\t2\t7\n",
    )
    .unwrap();
    let e = read_mmrec_inter(dir.join("b.inter")).unwrap_err();
    assert!(
        matches!(&e, Error::Data { line: 3, .. }) && e.to_string().contains("x_label 7"),
        "{e}"
    );
    std::fs::write(dir.join("c.inter"), "user\titemID\tx_label\n0\t1\t0\n").unwrap();
    assert!(read_mmrec_inter(dir.join("c.inter"))
        .unwrap_err()
        .to_string()
        .contains("no `userID` column"));
    std::fs::write(dir.join("d.inter"), "userID\titemID\tx_label\n0\t1\n").unwrap();
    assert!(read_mmrec_inter(dir.join("d.inter"))
        .unwrap_err()
        .to_string()
        .contains("2 fields"));
}

#[test]
fn an_mmrec_folder_loads_as_a_dataset_and_errors_name_the_inter_line() {
    let dir = scratch("mmrec-dir");
    let text = "userID\titemID\tx_label\n0\t0\t0\n0\t1\t0\n1\t1\t0\n1\t2\t0\n0\t2\t2\n1\t0\t1\n";
    std::fs::write(dir.join("toy.inter"), text).unwrap();
    ndarray_npy::write_npy(dir.join("f.npy"), &Array2::<f32>::ones((3, 2))).unwrap();
    let ds = Dataset::load_dir(&dir, &["f"]).unwrap();
    assert_eq!((ds.n_users, ds.n_items, ds.train.len()), (2, 3, 4));
    assert_eq!(
        (ds.valid.len(), ds.test.len(), ds.item_features.len()),
        (1, 1, 1)
    );
    // user 7 on line 8 leaves users 2 to 6 without interactions
    std::fs::write(dir.join("toy.inter"), format!("{text}7\t0\t2\n")).unwrap();
    let e = Dataset::load_dir(&dir, &[]).unwrap_err().to_string();
    assert!(
        e.contains("toy.inter:8") && e.contains("user 2 has no interaction"),
        "{e}"
    );
    std::fs::write(dir.join("other.inter"), text).unwrap();
    assert!(Dataset::load_dir(&dir, &[])
        .unwrap_err()
        .to_string()
        .contains("2 .inter files"));
}

#[test]
fn a_csv_of_any_ids_becomes_a_dataset_split_by_time() {
    let dir = scratch("csv");
    let mut text = String::from("user_id,item_id,timestamp\n");
    // 4 users x 10 interactions over 12 items, timestamps in reverse file order for user a
    for (k, u) in ["a", "b", "c", "d"].iter().enumerate() {
        for j in 0..10 {
            let ts = if *u == "a" { 100 - j } else { j };
            text.push_str(&format!("{u},item-{},{ts}\n", (k * 3 + j) % 12));
        }
    }
    std::fs::write(dir.join("x.csv"), &text).unwrap();
    let x = read_interactions(dir.join("x.csv")).unwrap();
    assert_eq!(
        (x.ids.users.len(), x.ids.items.len(), x.pairs.len()),
        (4, 12, 40)
    );
    let ds = Dataset::from_interactions("x.csv", &x, 0.1, vec![]).unwrap();
    assert_eq!((ds.train.len(), ds.valid.len(), ds.test.len()), (32, 4, 4));
    // user a's latest interaction is its first line (item-0), so it is the held-out test item
    let a = x.ids.user("a").unwrap();
    let item0 = x.ids.item("item-0").unwrap();
    assert!(ds.test.contains(&(a, item0)));
    std::fs::write(dir.join("y.tsv"), "u1\ti1\t5\nu2\n").unwrap();
    let e = read_interactions(dir.join("y.tsv")).unwrap_err();
    assert!(matches!(e, Error::Data { line: 2, .. }), "{e}");
    assert!(Dataset::from_interactions("x", &x, 0.7, vec![]).is_err());
}

#[test]
fn user_features_become_the_user_branch_profiles() {
    use recgoat_core::model::{RecGoat, RecGoatConfig};
    let dir = scratch("user-feat");
    std::fs::write(dir.join("train.txt"), "0 0 1\n1 1 2\n2 2 0\n").unwrap();
    std::fs::write(dir.join("test.txt"), "0 2\n").unwrap();
    ndarray_npy::write_npy(dir.join("items.npy"), &Array2::<f32>::eye(3)).unwrap();
    let ds = Dataset::load_lightgcn_dir(&dir, &["items"]).unwrap();
    let profile = ndarray::array![
        [1.0f32, 0.0, 0.5, 0.2, 0.0],
        [0.0, 1.0, 0.1, 0.0, 0.3],
        [0.5, 0.5, 0.0, 1.0, 0.0]
    ];
    assert!(ds
        .clone()
        .with_user_features("bad", Array2::zeros((2, 5)))
        .is_err());
    let ds = ds.with_user_features("profile", profile).unwrap();
    let cfg = RecGoatConfig {
        embedding_dim: 4,
        gat_heads: 2,
        knn_k: 1,
        user_user: true,
        ..RecGoatConfig::paper()
    };
    let model =
        RecGoat::<f64>::new(cfg, &ds, recgoat_core::Backend::Cpu(recgoat_core::Par::Seq)).unwrap();
    // the user branch projects the 5-wide user features, not the 3-wide item profiles
    let p = model.init_params();
    assert_eq!(p.user_branch.unwrap().proj.w.nrows(), 5);
}

/// Sorted degrees of `ids` (users: `p.0`, items: `p.1`) over `pairs`, ids that appear only.
fn degrees(pairs: &[Pair], item: bool) -> Vec<usize> {
    let mut count = std::collections::HashMap::new();
    for p in pairs {
        *count.entry(if item { p.1 } else { p.0 }).or_insert(0usize) += 1;
    }
    let mut d: Vec<usize> = count.into_values().collect();
    d.sort_unstable();
    d
}

/// The scale-up keeps the user and item degree distributions of every split (each original's degrees
/// `factor` times, less the few repeated draws it drops), rewires the pairs, keeps splits apart per user,
/// gives every item copy its original's features plus a little noise, and is deterministic per seed.
#[test]
fn scale_up_keeps_the_degree_distributions() {
    let base = Dataset::load_lightgcn_dir(bundled("lfm2k"), &["text_feat"]).unwrap();
    let f = 4;
    let big = scale_up(&base, f, 1).unwrap();
    assert!(big.n_users <= f * base.n_users && big.n_users >= f * base.n_users - 8);
    assert!(big.n_items <= f * base.n_items && big.n_items >= f * base.n_items - 8);
    for (what, a, b) in [
        ("train", &base.train, &big.train),
        ("valid", &base.valid, &big.valid),
        ("test", &base.test, &big.test),
    ] {
        // drops: at most 0.5 % of the draws
        let want = f * a.len();
        assert!(
            b.len() <= want && b.len() * 1000 >= want * 995,
            "{what}: {} of {want}",
            b.len()
        );
        for item in [false, true] {
            let (da, db) = (degrees(a, item), degrees(b, item));
            // the quantiles of the degree distribution agree (drops lower a few degrees by one)
            for q in [0.1, 0.5, 0.9, 0.99] {
                let (x, y) = (
                    da[(q * da.len() as f64) as usize],
                    db[(q * db.len() as f64) as usize],
                );
                assert!(
                    x.abs_diff(y) <= 1 + x / 50,
                    "{what} item={item} q{q}: {x} vs {y}"
                );
            }
            let (ma, mb) = (da[da.len() - 1], db[db.len() - 1]);
            assert!(
                mb <= ma && mb + 1 + ma / 50 >= ma,
                "{what} item={item} max {ma} vs {mb}"
            );
        }
    }
    // new pairs, not copies: few of the first copy's training pairs are the original's
    let orig: std::collections::HashSet<Pair> = base.train.iter().copied().collect();
    let same = big.train.iter().filter(|p| orig.contains(p)).count();
    assert!(same * 20 < base.train.len(), "{same} pairs copied");
    // no user has a pair in two splits
    let train: std::collections::HashSet<Pair> = big.train.iter().copied().collect();
    assert!(big
        .valid
        .iter()
        .chain(&big.test)
        .all(|p| !train.contains(p)));
    // features: one row per item, near some original row's scale
    let (name, x) = &big.item_features[0];
    assert_eq!(name, "text_feat");
    assert_eq!(x.dim(), (big.n_items, base.item_features[0].1.ncols()));
    let norms = |m: &Array2<f32>| {
        m.rows().into_iter().map(|r| r.dot(&r).sqrt()).sum::<f32>() / m.nrows() as f32
    };
    let (nb, ns) = (norms(&base.item_features[0].1), norms(x));
    assert!((ns / nb - 1.0).abs() < 0.2, "mean row norm {nb} -> {ns}");
    assert_eq!(
        scale_up(&base, f, 1).unwrap().train,
        big.train,
        "deterministic"
    );
    assert_ne!(scale_up(&base, f, 2).unwrap().train, big.train, "seeded");
}

#[test]
fn scale_up_refuses_bad_factors() {
    let base = Dataset::new("toy", vec![(0, 0), (1, 1)], vec![], vec![], vec![]).unwrap();
    let err = scale_up(&base, 0, 1).unwrap_err().to_string();
    assert!(err.contains("factor") && err.contains(">= 1"), "{err}");
    // ids past the limit are refused before anything is allocated
    let err = scale_up(&base, usize::MAX / 2, 1).unwrap_err().to_string();
    assert!(err.contains("would exceed"), "{err}");
}

#[test]
fn clustered_features_are_deterministic_and_clustered() {
    let x = clustered_features(600, 8, 100, 0.1, 3).unwrap();
    assert_eq!(x.dim(), (600, 8));
    assert_eq!(x, clustered_features(600, 8, 100, 0.1, 3).unwrap());
    assert_ne!(x, clustered_features(600, 8, 100, 0.1, 4).unwrap());
    // 6 clusters, row i in cluster i mod 6: rows of one cluster lie close, rows of two apart
    let d = |a: usize, b: usize| (&x.row(a) - &x.row(b)).mapv(|v| v * v).sum().sqrt();
    let same: f32 = (0..100).map(|i| d(i, i + 6)).sum::<f32>() / 100.0;
    let other: f32 = (0..100).map(|i| d(i, i + 1)).sum::<f32>() / 100.0;
    assert!(same < 0.6 && other > 2.0, "same {same}, other {other}");
    // noise 0: every row is its centre
    let c = clustered_features(30, 4, 10, 0.0, 1).unwrap();
    assert_eq!(c.row(0), c.row(3));
    assert_ne!(c.row(0), c.row(1));
}

#[test]
fn clustered_features_refuse_bad_sizes() {
    for (n, dim, per, noise) in [
        (0, 4, 10, 1.0),
        (10, 0, 10, 1.0),
        (10, 4, 0, 1.0),
        (10, 4, 10, -1.0),
        (10, 4, 10, f32::NAN),
    ] {
        assert!(
            matches!(
                clustered_features(n, dim, per, noise, 0),
                Err(Error::Param { .. })
            ),
            "{n} {dim} {per} {noise}"
        );
    }
    let err = clustered_features(1 << 20, 1 << 12, 100, 1.0, 0).unwrap_err();
    assert!(err.to_string().contains("at most"), "{err}");
}

/// Writes `text` to a fresh file `name` and reads it with `min_rating`.
fn read_csv(
    test: &str,
    name: &str,
    text: &[u8],
    min_rating: Option<f64>,
) -> Result<Interactions, Error> {
    let dir = scratch(test);
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    read_interactions_with(&path, &ReadOptions { min_rating })
}

/// The line and message of a data error.
fn data_error(e: Error) -> (usize, String) {
    match e {
        Error::Data { line, reason, .. } => (line, reason),
        e => panic!("expected a data error, got {e}"),
    }
}

/// MovieLens' `userId,movieId,rating,timestamp`: the rating column needs a threshold (refused without one,
/// with a message that says how to choose), and the timestamp column orders the split, not the ratings.
#[test]
fn a_movielens_ratings_file_is_read_by_its_column_names() {
    let mut text = String::from("userId,movieId,rating,timestamp\n");
    // user 1 rates ten movies at rising times with falling ratings; movie 99 gets 2.0 (dropped at 4)
    for j in 0..10 {
        text.push_str(&format!("1,{j},{},{}\n", 5.0 - 0.1 * j as f64, 1000 + j));
    }
    text.push_str("1,99,2.0,5000\n");
    let (line, why) = data_error(read_csv("ml", "ratings.csv", text.as_bytes(), None).unwrap_err());
    assert_eq!(line, 1);
    assert!(
        why.contains("rating column") && why.contains("min_rating"),
        "{why}"
    );
    let x = read_csv("ml", "ratings.csv", text.as_bytes(), Some(4.0)).unwrap();
    assert_eq!(x.pairs.len(), 10, "movie 99 is rated below 4");
    assert_eq!(x.ids.item("99"), None);
    assert_eq!(
        x.timestamps.as_deref().unwrap()[9],
        1009.0,
        "the timestamp column, not the rating"
    );
    let ds = Dataset::from_interactions("ratings.csv", &x, 0.1, vec![]).unwrap();
    // the latest interaction (movie 9, the lowest rating kept) is the test item
    assert_eq!(ds.test, vec![(0, x.ids.item("9").unwrap())]);
    let all = read_csv(
        "ml",
        "ratings.csv",
        text.as_bytes(),
        Some(f64::NEG_INFINITY),
    )
    .unwrap();
    assert_eq!(all.pairs.len(), 11);
}

/// Columns: an unknown header column, a repeated one or a missing user column is an error that names it;
/// without a header a fourth field needs one; every line has the header's number of fields.
#[test]
fn interaction_columns_must_be_known() {
    let (line, why) =
        data_error(read_csv("cols", "a.csv", b"user,item,genre\nu,i,rock\n", None).unwrap_err());
    assert_eq!(line, 1);
    assert!(
        why.contains("`genre`") && why.contains("remove it"),
        "{why}"
    );
    let (_, why) =
        data_error(read_csv("cols", "b.csv", b"user,item,user_id\nu,i,v\n", None).unwrap_err());
    assert!(why.contains("twice"), "{why}");
    let (_, why) =
        data_error(read_csv("cols", "c.csv", b"item,timestamp\ni,1\n", None).unwrap_err());
    assert!(why.contains("no user column"), "{why}");
    // a header whose first name is unknown is still a header, and says which column to rename
    let (line, why) =
        data_error(read_csv("cols", "g.csv", b"id,movieId,timestamp\n1,2,3\n", None).unwrap_err());
    assert_eq!(line, 1);
    assert!(why.contains("column `id`"), "{why}");
    let (line, why) = data_error(read_csv("cols", "d.csv", b"u,i,1,5\n", None).unwrap_err());
    assert_eq!(line, 1);
    assert!(why.contains("no header"), "{why}");
    let (line, why) = data_error(
        read_csv(
            "cols",
            "e.csv",
            b"user_id:token\titem_id:token\nu\ti\nv\ti\t3\n",
            None,
        )
        .unwrap_err(),
    );
    assert_eq!(line, 3);
    assert!(why.contains("3 fields where the file has 2"), "{why}");
    // MMRec's typed header names and any column order
    let x = read_csv(
        "cols",
        "f.tsv",
        b"item_id:token\tuser_id:token\ttimestamp:float\ni\tu\t7\n",
        None,
    )
    .unwrap();
    assert_eq!(
        (x.ids.users[0].as_str(), x.ids.items[0].as_str()),
        ("u", "i")
    );
    assert_eq!(x.timestamps, Some(vec![7.0]));
}

/// Timestamps and ratings must be finite numbers: NaN, inf and 1e400 (which overflows) are refused with the
/// file's line.
#[test]
fn non_finite_timestamps_and_ratings_are_refused() {
    for bad in ["NaN", "inf", "-inf", "1e400", "soon"] {
        let text = format!("a,x,1\nb,y,{bad}\n");
        let (line, why) = data_error(read_csv("ts", "t.csv", text.as_bytes(), None).unwrap_err());
        assert_eq!(line, 2, "{bad}");
        assert!(
            why.contains("timestamp") && why.contains("finite"),
            "{bad}: {why}"
        );
    }
    let text = b"user,item,rating\na,x,NaN\n";
    let (line, why) = data_error(read_csv("ts", "r.csv", text, Some(4.0)).unwrap_err());
    assert_eq!(line, 2);
    assert!(why.contains("rating"), "{why}");
}

/// A byte-order mark does not turn the header into a user; a quoted field keeps its comma; text that is not
/// UTF-8 is reported with its line; an empty id names which one.
#[test]
fn spreadsheet_csv_files_are_read_right() {
    let x = read_csv(
        "bom",
        "b.csv",
        b"\xEF\xBB\xBFuser,item\nu1,i1\nu2,\"Crosby, Stills & Nash\"\n",
        None,
    )
    .unwrap();
    assert_eq!(x.ids.users, vec!["u1", "u2"]);
    assert_eq!(x.ids.items[1], "Crosby, Stills & Nash");
    let (line, why) =
        data_error(read_csv("bom", "u.csv", b"u1,i1\nu2,i\xFF2\n", None).unwrap_err());
    assert_eq!(line, 2);
    assert!(why.contains("UTF-8"), "{why}");
    let (line, why) = data_error(read_csv("bom", "e.csv", b"u1,i1\nu2,\n", None).unwrap_err());
    assert_eq!(line, 2);
    assert!(why.contains("item id is empty"), "{why}");
    let (_, why) = data_error(read_csv("bom", "h.csv", b"user,item\n", None).unwrap_err());
    assert!(why.contains("no interactions"), "{why}");
}

/// The same pair at two times is kept once, at its earliest time: never both trained on and held out.
#[test]
fn a_repeated_pair_is_kept_once_at_its_earliest_time() {
    let mut text = String::from("user,item,timestamp\n");
    for j in 0..9 {
        text.push_str(&format!("u,i{j},{j}\n"));
    }
    text.push_str("u,i0,100\n"); // i0 again, latest
    let x = read_csv("dup", "d.csv", text.as_bytes(), None).unwrap();
    assert_eq!(x.pairs.len(), 10);
    let ds = Dataset::from_interactions("d.csv", &x, 0.2, vec![]).unwrap();
    let i0 = x.ids.item("i0").unwrap();
    assert_eq!(ds.train.len() + ds.valid.len() + ds.test.len(), 9);
    assert!(ds.train.contains(&(0, i0)));
    assert!(!ds.test.contains(&(0, i0)) && !ds.valid.contains(&(0, i0)));
    assert_eq!(ds.test, vec![(0, x.ids.item("i8").unwrap())]);
}

/// `Interactions` built by hand: ids beyond the id lists, a timestamp count other than the pair count and
/// a non-finite timestamp are errors, not panics.
#[test]
fn hand_built_interactions_are_checked() {
    let ids = IdMap {
        users: vec!["a".into()],
        items: vec!["x".into(), "y".into()],
    };
    let x = Interactions {
        pairs: vec![(0, 0), (0, 2)],
        timestamps: None,
        ids: ids.clone(),
    };
    let e = Dataset::from_interactions("x", &x, 0.1, vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("pair 1") && e.contains("beyond"), "{e}");
    let x = Interactions {
        pairs: vec![(0, 0), (0, 1)],
        timestamps: Some(vec![1.0]),
        ids: ids.clone(),
    };
    let e = Dataset::from_interactions("x", &x, 0.1, vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("1 timestamps for 2 pairs"), "{e}");
    let x = Interactions {
        pairs: vec![(0, 0), (0, 1)],
        timestamps: Some(vec![1.0, f64::NAN]),
        ids,
    };
    let e = Dataset::from_interactions("x", &x, 0.1, vec![])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not finite"), "{e}");
}

/// User features read from a file: errors name the file with its extension, not `name:0`.
#[test]
fn user_feature_errors_name_the_file() {
    let dir = scratch("uf");
    std::fs::write(dir.join("train.txt"), "0 0 1\n1 1 2\n").unwrap();
    std::fs::write(dir.join("test.txt"), "").unwrap();
    let ds = Dataset::load_lightgcn_dir(&dir, &[]).unwrap();
    ndarray_npy::write_npy(dir.join("uf.npy"), &Array2::<f32>::zeros((3, 4))).unwrap();
    let e = ds
        .clone()
        .read_user_features(dir.join("uf.npy"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("uf.npy: user features `uf` have 3 rows for 2 users"),
        "{e}"
    );
    assert!(!e.contains(":0"), "{e}");
    ndarray_npy::write_npy(dir.join("ok.npy"), &Array2::<f32>::ones((2, 4))).unwrap();
    let ds = ds.read_user_features(dir.join("ok.npy")).unwrap();
    assert_eq!(ds.user_features[0].0, "ok");
}

/// An original id that names two users or two items is refused: it could no longer be looked up.
#[test]
fn id_maps_with_a_repeated_id_are_refused() {
    let ids = IdMap {
        users: vec!["a".into(), "b".into()],
        items: vec!["x".into(), "y".into(), "x".into()],
    };
    assert_eq!(ids.duplicate(), Some(("item", "x")));
    let rec = recgoat_core::recommend::Recommender::new(
        Array2::<f32>::ones((2, 2)),
        Array2::<f32>::ones((3, 2)),
        vec![vec![], vec![]],
    )
    .unwrap();
    let e = rec.clone().with_ids(ids).unwrap_err().to_string();
    assert!(e.contains("\"x\"") && e.contains("names two items"), "{e}");
    let ok = IdMap {
        users: vec!["a".into(), "b".into()],
        items: vec!["x".into(), "y".into(), "z".into()],
    };
    assert_eq!(ok.duplicate(), None);
    assert!(rec.with_ids(ok).is_ok());
}
