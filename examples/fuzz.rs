//! Mutation fuzzing of the loaders ([`recgoat_core::fuzz`]): each target runs in its own process under a
//! memory cap (`ulimit -v`), so an over-large allocation shows as that process aborting, not as this one.
//!
//! ```text
//! cargo run --release --example fuzz                                  # 1,000,000 mutations per loader
//! cargo run --release --example fuzz -- --iterations 2000 --targets split,npy
//! ```
//! Prints per loader the mutations tried, refused with an error, accepted, panics, and the process's peak
//! resident memory; exits non-zero on any panic or abort. Inputs that panicked are saved under `--out`.

use clap::Parser;
use recgoat_core::fuzz::{run, Target};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Seeded mutation fuzzing of recgoat-core's loaders, each under a memory cap")]
struct Args {
    /// Mutations per loader.
    #[arg(long, default_value_t = 1_000_000)]
    iterations: u64,
    /// Seed (mutation i of seed s depends on (s, i) alone).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// Loaders to fuzz: split, inter, npy, checkpoint, recommender, csv.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "split,inter,npy,checkpoint,recommender,csv"
    )]
    targets: Vec<String>,
    /// Address-space cap of each loader's process, in MiB.
    #[arg(long, default_value_t = 2048)]
    mem_mib: u64,
    /// Working folder (corpus, inputs that panicked).
    #[arg(long, default_value = "out/fuzz")]
    out: PathBuf,
    /// Run one loader in this process (what the capped child processes do).
    #[arg(long)]
    child: Option<String>,
}

/// This process's peak resident memory in KiB (Linux), if known.
fn peak_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn child(args: &Args, name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let target = Target::from_name(name).ok_or_else(|| format!("unknown target `{name}`"))?;
    let dir = args.out.join(name);
    let report = run(target, args.seed, args.iterations, &dir)?;
    for (i, msg) in report.panics.iter().take(5) {
        eprintln!(
            "panic at mutation {i}: {msg} (input: {})",
            dir.join(format!("panic-{i}.bin")).display()
        );
    }
    println!(
        "REPORT {} {} {} {} {}",
        report.runs,
        report.errors,
        report.accepted,
        report.panics.len(),
        peak_kib().unwrap_or(0)
    );
    if !report.panics.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(name) = &args.child {
        return child(&args, name);
    }
    let exe = std::env::current_exe()?;
    println!(
        "{:<11} {:>10} {:>10} {:>9} {:>7} {:>7} {:>10} {:>8}",
        "loader", "mutations", "errors", "accepted", "panics", "aborts", "peak MiB", "seconds"
    );
    let mut failed = false;
    for name in &args.targets {
        let started = Instant::now();
        // the cap applies to the child alone: `ulimit -v` in a shell that then becomes the child
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -v {} && exec \"$0\" \"$@\"",
                args.mem_mib * 1024
            ))
            .arg(&exe)
            .args([
                "--child",
                name,
                "--iterations",
                &args.iterations.to_string(),
            ])
            .args(["--seed", &args.seed.to_string(), "--out"])
            .arg(&args.out)
            .output()?;
        let secs = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = stdout.lines().find_map(|l| l.strip_prefix("REPORT "));
        let fields: Vec<u64> = report
            .map(|r| {
                r.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let aborted = fields.len() != 5;
        if aborted || fields[3] > 0 {
            failed = true;
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        if aborted {
            println!(
                "{name:<11} process ended without a report ({}): an abort or a crash",
                out.status
            );
            continue;
        }
        println!(
            "{:<11} {:>10} {:>10} {:>9} {:>7} {:>7} {:>10.1} {:>8.1}",
            name,
            fields[0],
            fields[1],
            fields[2],
            fields[3],
            0,
            fields[4] as f64 / 1024.0,
            secs
        );
    }
    if failed {
        return Err("a loader panicked or aborted".into());
    }
    Ok(())
}
