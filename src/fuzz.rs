//! Seeded mutation fuzzing of the crate's loaders, on stable Rust: the split-file loader
//! ([`crate::data::Dataset::load_lightgcn_dir`]), the MMRec `.inter` reader (with the dataset built from
//! it), the `.npy` feature reader, the checkpoint loader ([`crate::model::Trainer::resume`]) and the
//! recommender loader ([`crate::recommend::Recommender::load`], with its content encoder and fold-in tables).
//!
//! Each run starts from valid files made here, applies a few mutations per input (byte flips, truncations,
//! insertions, and edits that keep the framing valid: a number in a text line replaced by a hostile one, the
//! shape or dtype in an `.npy` header, a number in a checkpoint's JSON header with the header length and the
//! checksum made consistent again) and calls the loader. Every outcome must be `Ok` or an [`crate::Error`]:
//! a panic is recorded with the input that caused it. Mutation `i` of seed `s` depends on `(s, i)` alone, so
//! any finding can be replayed.
//!
//! Over-large allocations abort a process, which no unwinding can catch: run a target under a memory cap
//! in its own process (the `fuzz` example does, with `ulimit -v`), so that an abort shows as that process
//! failing.

use crate::data::Dataset;
use crate::error::Result;
use crate::model::{RecGoatConfig, Trainer};
use crate::{Backend, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};

/// A loader to fuzz.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `train.txt` of a LightGCN folder, loaded and validated as a dataset.
    Split,
    /// An MMRec `.inter` file, read and built into a dataset.
    Inter,
    /// An `.npy` feature matrix.
    Npy,
    /// A training checkpoint, resumed on the dataset it was made for.
    Checkpoint,
    /// A saved recommender with its content encoder and fold-in tables; an accepted one then embeds a new
    /// item and folds a user in.
    Recommender,
    /// A CSV / TSV interaction file with any ids ([`crate::data::read_interactions_with`], ratings of at
    /// least 3 kept), split into a dataset.
    Csv,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 6] = [
        Target::Split,
        Target::Inter,
        Target::Npy,
        Target::Checkpoint,
        Target::Recommender,
        Target::Csv,
    ];

    /// The target's name (`split`, `inter`, `npy`, `checkpoint`, `recommender`, `csv`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Split => "split",
            Target::Inter => "inter",
            Target::Npy => "npy",
            Target::Checkpoint => "checkpoint",
            Target::Recommender => "recommender",
            Target::Csv => "csv",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// What a run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Mutated inputs tried.
    pub runs: u64,
    /// Inputs the loader refused with an error.
    pub errors: u64,
    /// Inputs the loader accepted.
    pub accepted: u64,
    /// Panics: the mutation's index and the panic message (its input is saved as `panic-<index>.bin`).
    pub panics: Vec<(u64, String)>,
}

/// The small dataset the corpus is made from: 12 users, 10 items, one 6-d item modality.
fn dataset() -> Dataset {
    let mut rng = crate::testing::rng(5);
    let feats = crate::testing::randn::<f64, _, _>(&mut rng, (10, 6)).mapv(|v| v as f32);
    let mut train = Vec::new();
    for u in 0..12 {
        for k in 0..3 {
            train.push((u, (u * 3 + k * 4) % 10));
        }
    }
    let test = (0..12).map(|u| (u, (u * 3 + 1) % 10)).collect();
    Dataset::new("fuzz", train, vec![], test, vec![("f".into(), feats)])
        .expect("the fuzz corpus dataset is valid")
}

fn split_text(pairs: &[(usize, usize)]) -> String {
    let mut lines: Vec<String> = Vec::new();
    for (u, i) in pairs {
        match lines.get_mut(*u) {
            Some(l) => l.push_str(&format!(" {i}")),
            None => lines.push(format!("{u} {i}")),
        }
    }
    lines.join("\n") + "\n"
}

/// A valid input of `target` and what the loader needs beside it.
struct Corpus {
    files: Vec<Vec<u8>>,
    data: Dataset,
    dir: PathBuf,
}

impl Corpus {
    fn new(target: Target, dir: &Path) -> Result<Corpus> {
        let data = dataset();
        let io = |e: std::io::Error| crate::Error::Write {
            op: "fuzz corpus",
            path: dir.display().to_string(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let files = match target {
            Target::Split => {
                std::fs::write(dir.join("test.txt"), split_text(&data.test)).map_err(io)?;
                vec![split_text(&data.train).into_bytes()]
            }
            Target::Inter => {
                let mut text = String::from("userID\titemID\trating\tx_label\n");
                for (label, split) in [&data.train, &data.test].into_iter().enumerate() {
                    for (u, i) in split {
                        text.push_str(&format!("{u}\t{i}\t5\t{}\n", 2 * label));
                    }
                }
                vec![text.into_bytes()]
            }
            Target::Npy => {
                let mut f32s = Vec::new();
                ndarray_npy::WriteNpyExt::write_npy(&data.item_features[0].1, &mut f32s)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let mut f64s = Vec::new();
                let wide = data.item_features[0].1.mapv(f64::from);
                ndarray_npy::WriteNpyExt::write_npy(&wide, &mut f64s)
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                vec![f32s, f64s]
            }
            Target::Checkpoint => {
                let mut files = Vec::new();
                for base in [RecGoatConfig::recgoat(), RecGoatConfig::lightgcn()] {
                    let t = one_epoch(base, &data)?;
                    let path = dir.join("corpus.safetensors");
                    t.save_checkpoint(&path)?;
                    files.push(std::fs::read(&path).map_err(io)?);
                }
                files
            }
            Target::Csv => {
                // a spreadsheet's ratings file (byte-order mark, named columns, a quoted id) and a plain
                // headerless TSV
                let mut rated = String::from("\u{feff}userId,movieId,rating,timestamp\n");
                let mut plain = String::new();
                for (k, (u, i)) in data.train.iter().chain(&data.test).enumerate() {
                    let item = if k % 7 == 0 {
                        format!("\"item, {i}\"")
                    } else {
                        format!("m{i}")
                    };
                    rated.push_str(&format!("user{u},{item},{},{}\n", 1 + k % 5, 1000 + k));
                    plain.push_str(&format!("{u}\t{i}\t{k}\n"));
                }
                vec![rated.into_bytes(), plain.into_bytes()]
            }
            Target::Recommender => {
                let t = one_epoch(RecGoatConfig::recgoat(), &data)?;
                let path = dir.join("corpus.safetensors");
                crate::recommend::Recommender::from_trainer(&t)?.save(&path)?;
                vec![std::fs::read(&path).map_err(io)?]
            }
        };
        Ok(Corpus {
            files,
            data,
            dir: dir.to_path_buf(),
        })
    }

    /// Runs the loader on `bytes`: `Ok(true)` accepted, `Ok(false)` refused with an error.
    fn load(&self, target: Target, bytes: &[u8]) -> std::io::Result<bool> {
        let name = match target {
            Target::Split => "train.txt",
            Target::Inter => "input.inter",
            Target::Npy => "input.npy",
            Target::Checkpoint | Target::Recommender => "input.safetensors",
            Target::Csv => "input.csv",
        };
        let path = self.dir.join(name);
        std::fs::write(&path, bytes)?;
        let ok = match target {
            Target::Split => Dataset::load_lightgcn_dir(&self.dir, &[]).is_ok(),
            Target::Inter => crate::data::read_mmrec_inter(&path)
                .and_then(|(tr, va, te)| Dataset::new(&path, tr, va, te, vec![]))
                .is_ok(),
            Target::Npy => crate::data::read_features(&path).is_ok(),
            Target::Checkpoint => {
                Trainer::resume(&path, &self.data, Backend::Cpu(Par::Seq), None).is_ok()
            }
            Target::Recommender => match crate::recommend::Recommender::load(&path) {
                Ok(rec) => {
                    // what an accepted file serves must not panic either
                    if let Some(enc) = rec.encoder() {
                        let rows: Vec<ndarray::Array2<f32>> = (enc.modalities().iter())
                            .map(|(_, w)| ndarray::Array2::from_elem((1, *w), 0.5))
                            .collect();
                        let feats: Vec<(&str, ndarray::ArrayView2<'_, f32>)> =
                            (enc.modalities().iter())
                                .zip(&rows)
                                .map(|((n, _), x)| (n.as_str(), x.view()))
                                .collect();
                        let _ = rec.embed_items(&feats);
                    }
                    let _ = rec.recommend_history(None, &[0], 3);
                    let _ = rec.recommend(&[0], 3);
                    true
                }
                Err(_) => false,
            },
            Target::Csv => {
                let opts = crate::data::ReadOptions {
                    min_rating: Some(3.0),
                };
                crate::data::read_interactions_with(&path, &opts)
                    .and_then(|x| Dataset::from_interactions(&path, &x, 0.1, vec![]))
                    .is_ok()
            }
        };
        Ok(ok)
    }
}

/// Numbers a hostile file would claim.
const HOSTILE: [&str; 12] = [
    "0",
    "-1",
    "1",
    "4294967295",
    "4294967296",
    "1000000000000",
    "1099511627776",
    "9223372036854775808",
    "18446744073709551615",
    "99999999999999999999999",
    "1e309",
    "NaN",
];

/// Replaces one run of ASCII digits in `bytes[from..to]` by a hostile number; `false` when there is none.
fn replace_number(bytes: &mut Vec<u8>, (from, to): (usize, usize), rng: &mut ChaCha8Rng) -> bool {
    let runs: Vec<(usize, usize)> = {
        let mut v = Vec::new();
        let mut k = from;
        while k < to {
            if bytes[k].is_ascii_digit() {
                let s = k;
                while k < to && bytes[k].is_ascii_digit() {
                    k += 1;
                }
                v.push((s, k));
            } else {
                k += 1;
            }
        }
        v
    };
    if runs.is_empty() {
        return false;
    }
    let (s, e) = runs[rng.gen_range(0..runs.len())];
    let new = HOSTILE[rng.gen_range(0..HOSTILE.len())].as_bytes();
    bytes.splice(s..e, new.iter().copied());
    true
}

/// The JSON header of a safetensors file: `(start, end)` of its bytes, when the length prefix is sane.
fn safetensors_header(bytes: &[u8]) -> Option<(usize, usize)> {
    let len = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
    let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
    (end <= bytes.len()).then_some((8, end))
}

/// Re-frames a safetensors file whose header now ends at `new_end`, and (`resign`) stores the checksum its
/// new contents have, as a crafted file would.
fn reframe(bytes: &mut Vec<u8>, new_end: usize, resign: bool) {
    let len = (new_end - 8) as u64;
    bytes[..8].copy_from_slice(&len.to_le_bytes());
    if resign {
        if let Some(fixed) = crate::io::resign(bytes) {
            *bytes = fixed;
        }
    }
}

fn mutate(target: Target, input: &[u8], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..rng.gen_range(1..=3) {
        let n = b.len();
        match rng.gen_range(0..6) {
            // a flipped byte
            0 if n > 0 => {
                let k = rng.gen_range(0..n);
                b[k] ^= 1 << rng.gen_range(0..8);
            }
            // truncated
            1 if n > 0 => b.truncate(rng.gen_range(0..n)),
            // random bytes inserted
            2 => {
                let k = rng.gen_range(0..=n);
                let extra: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                b.splice(k..k, extra);
            }
            // a line or a block duplicated
            3 if n > 1 => {
                let s = rng.gen_range(0..n);
                let e = (s + rng.gen_range(1..64)).min(n);
                let chunk = b[s..e].to_vec();
                b.splice(s..s, chunk);
            }
            // a number in the framing replaced by a hostile one, the framing kept valid
            _ => match target {
                Target::Split | Target::Inter | Target::Csv => {
                    replace_number(&mut b, (0, n), rng);
                }
                Target::Npy => {
                    // the header dict: descr, fortran order and shape
                    let end = b.iter().position(|&c| c == b'\n').unwrap_or(n.min(128));
                    if rng.gen_bool(0.2) {
                        let descr = ["'<f8'", "'<i4'", "'>f4'", "'|u1'", "'<f2'"];
                        if let Some(at) = find(&b[..end], b"'<f4'").or(find(&b[..end], b"'<f8'")) {
                            let d = descr[rng.gen_range(0..descr.len())].as_bytes();
                            b.splice(at..at + 5, d.iter().copied());
                        }
                    } else {
                        replace_number(&mut b, (8, end), rng);
                    }
                }
                Target::Checkpoint | Target::Recommender => {
                    if let Some((s, e)) = safetensors_header(&b) {
                        let before = b.len() as isize;
                        if replace_number(&mut b, (s, e), rng) {
                            let end = (e as isize + b.len() as isize - before) as usize;
                            reframe(&mut b, end, rng.gen_bool(0.7));
                        }
                    }
                }
            },
        }
    }
    b
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Runs `iterations` mutations of `target`'s corpus from `seed`, in `dir` (created; inputs that panicked
/// are saved there).
///
/// # Errors
/// When the corpus cannot be made (a file cannot be written).
pub fn run(target: Target, seed: u64, iterations: u64, dir: &Path) -> Result<Report> {
    let corpus = Corpus::new(target, dir)?;
    let mut report = Report::default();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for i in 0..iterations {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let input = &corpus.files[rng.gen_range(0..corpus.files.len())];
        let bytes = mutate(target, input, &mut rng);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| corpus.load(target, &bytes)));
        report.runs += 1;
        match outcome {
            Ok(Ok(true)) => report.accepted += 1,
            Ok(Ok(false)) => report.errors += 1,
            Ok(Err(e)) => {
                std::panic::set_hook(previous);
                return Err(crate::Error::Write {
                    op: "fuzz",
                    path: dir.display().to_string(),
                    reason: e.to_string(),
                });
            }
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let _ = std::fs::write(dir.join(format!("panic-{i}.bin")), &bytes);
                report.panics.push((i, msg));
            }
        }
    }
    std::panic::set_hook(previous);
    Ok(report)
}

/// `base` at the sizes of the fuzz corpus' dataset, trained for one epoch: the source of the model files.
fn one_epoch(base: RecGoatConfig, data: &Dataset) -> Result<Trainer<'_>> {
    let cfg = crate::testing::tiny_config(base);
    let mut t = Trainer::new(cfg, data, Backend::Cpu(Par::Seq))?;
    t.run_epoch(|_, _| {})?;
    Ok(t)
}
