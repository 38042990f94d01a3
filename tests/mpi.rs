//! Data-parallel training over MPI (`--features mpi`, the system Open MPI or MPICH): each test starts
//! `mpirun` on this test binary, whose processes (marked by `RECGOAT_MPI_CHILD`) run the test's rank side;
//! the test checks their exit status and output. `RECGOAT_MPIRUN` names another launcher.

use recgoat_core::data::Dataset;
use recgoat_core::dist::World;
use recgoat_core::model::*;
use recgoat_core::{Backend, Error, Par};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::clustered_groups;

/// Set in the processes `mpirun` starts.
const CHILD: &str = "RECGOAT_MPI_CHILD";

fn child() -> bool {
    std::env::var_os(CHILD).is_some()
}

struct Job {
    ok: bool,
    out: String,
    seconds: f64,
}

/// Starts this binary's test `test` on `np` processes under mpirun, with `env`.
fn spawn(np: usize, test: &str, env: &[(&str, String)]) -> std::process::Child {
    let launcher = std::env::var("RECGOAT_MPIRUN").unwrap_or_else(|_| "mpirun".into());
    let version = Command::new(&launcher).arg("--version").output();
    let version = version.unwrap_or_else(|e| panic!("{launcher} --version: {e}"));
    let open_mpi = String::from_utf8_lossy(&version.stdout).contains("Open MPI");
    let mut cmd = Command::new(&launcher);
    if open_mpi {
        // two cores run four ranks; CI runs as root
        cmd.args(["--oversubscribe", "--allow-run-as-root"]);
    }
    cmd.args(["-np", &np.to_string()])
        .arg(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("RAYON_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap_or_else(|e| panic!("{launcher}: {e}"))
}

/// Waits for a job started at `start`, killing it after `limit` (a hang fails the test).
fn wait(mut proc: std::process::Child, start: Instant, limit: Duration) -> Job {
    while proc.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            proc.kill().ok();
            let out = proc.wait_with_output().unwrap();
            panic!(
                "mpirun still running after {limit:?} (a hang):\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = proc.wait_with_output().unwrap();
    Job {
        ok: out.status.success(),
        out: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// Runs this binary's test `test` on `np` processes under mpirun, with `env`, killed after `limit`.
fn mpirun(np: usize, test: &str, env: &[(&str, String)], limit: Duration) -> Job {
    let start = Instant::now();
    wait(spawn(np, test, env), start, limit)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("recgoat-mpi-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data() -> Dataset {
    clustered_groups(20)
}

/// Small settings: 23 batches of 16 in 4 steps per epoch.
fn config(base: RecGoatConfig) -> RecGoatConfig {
    RecGoatConfig {
        embedding_dim: 8,
        gat_heads: 2,
        knn_k: 4,
        batch_size: 16,
        steps_per_epoch: 4,
        epochs: 3,
        eval_every: 1,
        lr: 0.01,
        dropout: 0.1,
        ..base
    }
}

fn presets() -> Vec<(&'static str, RecGoatConfig)> {
    vec![
        ("lightgcn", config(RecGoatConfig::lightgcn())),
        ("recgoat", config(RecGoatConfig::recgoat())),
        ("paper", config(RecGoatConfig::paper())),
    ]
}

fn trained(cfg: RecGoatConfig, ds: &Dataset, world: World) -> Result<Trainer<'_>, Error> {
    let mut t = Trainer::new(cfg, ds, Backend::Cpu(Par::Seq))?;
    t.distribute(world)?;
    t.fit(|_, _| {})?;
    Ok(t)
}

/// The largest difference between two parameter sets, relative to the largest magnitude of each tensor.
fn max_rel_diff(a: &Params<f32>, b: &Params<f32>) -> f32 {
    let (a, b) = (a.tensors(), b.tensors());
    assert_eq!(a.len(), b.len());
    (a.iter().zip(&b))
        .map(|((_, x), (_, y))| {
            let scale = x.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let d = (x - y).iter().fold(0f32, |m, v| m.max(v.abs()));
            d / scale
        })
        .fold(0.0, f32::max)
}

/// A hash of every parameter's bits.
fn bits(p: &Params<f32>) -> String {
    let h = (p.tensors().iter())
        .flat_map(|(_, t)| t.iter().map(|v| u64::from(v.to_bits())).collect::<Vec<_>>())
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{h:016x}")
}

/// The rank side: each rank trains every preset alone and with the others, and compares.
fn rank_side_trains_as_one() {
    let world = World::from_env().unwrap();
    let ds = data();
    for (name, cfg) in presets() {
        let alone = trained(cfg.clone(), &ds, World::single()).unwrap();
        let together = trained(cfg, &ds, world.clone()).unwrap();
        let diff = max_rel_diff(alone.params(), together.params());
        assert!(
            diff < 1e-4,
            "{name}: parameters differ by {diff} (relative)"
        );
        let (la, lt) = (alone.state(), together.state());
        for (x, y) in la.history.iter().zip(&lt.history) {
            assert!(
                (x.loss - y.loss).abs() < 1e-5 * x.loss.abs().max(1.0),
                "{name} loss"
            );
            let (va, vt) = (x.valid.unwrap(), y.valid.unwrap());
            assert!((va.0 - vt.0).abs() < 1e-6, "{name} validation recall");
        }
        assert_eq!(la.best_epoch, lt.best_epoch, "{name}");
        // the evaluation splits the users and sums: the same metrics on every rank
        let (ma, mt) = (alone.evaluate(Split::Test), together.evaluate(Split::Test));
        let (ma, mt) = (ma.unwrap(), mt.unwrap());
        assert_eq!(ma.users, mt.users, "{name}: every user evaluated once");
        for (x, y) in ma.recall.iter().zip(&mt.recall) {
            assert!((x - y).abs() < 1e-6, "{name} test recall {x} vs {y}");
        }
        // the replicas are identical to the bit
        world
            .check_same("parameters", &bits(together.params()))
            .unwrap();
        if world.is_root() {
            println!(
                "{name}: {} ranks, relative difference {diff:.2e}",
                world.size()
            );
        }
    }
    if world.is_root() {
        println!("RANKS-TRAIN-AS-ONE");
    }
}

/// Same seed, same result for 1, 2 and 4 ranks, within f32 summation tolerance of one process.
#[test]
fn ranks_train_as_one_process() {
    if child() {
        return rank_side_trains_as_one();
    }
    for np in [2, 4] {
        let job = mpirun(
            np,
            "ranks_train_as_one_process",
            &[],
            Duration::from_secs(300),
        );
        assert!(job.ok, "mpirun -np {np} failed:\n{}", job.out);
        assert!(job.out.contains("RANKS-TRAIN-AS-ONE"), "{}", job.out);
        // rank 0 alone prints
        assert_eq!(
            job.out.matches("RANKS-TRAIN-AS-ONE").count(),
            1,
            "{}",
            job.out
        );
        for line in job
            .out
            .lines()
            .filter(|l| l.contains("relative difference"))
        {
            println!("{line}");
        }
    }
}

/// The rank side of the failure tests: `RECGOAT_MPI_FAIL` says how one rank fails.
fn rank_side_fails() {
    let world = World::from_env().unwrap();
    let how = std::env::var("RECGOAT_MPI_FAIL").unwrap();
    let mut ds = data();
    match how.as_str() {
        // a bad file on one node: rank 1 cannot read it, the others go on into training
        "file" => {
            let read = if world.rank() == 1 {
                Dataset::load_lightgcn_dir("/nonexistent/recgoat-data", &[])
            } else {
                Ok(data())
            };
            let ds = world.exit_on_error(read);
            let t = trained(config(RecGoatConfig::lightgcn()), &ds, world.clone());
            world.exit_on_error(t);
            println!("UNREACHABLE rank {}", world.rank());
        }
        // other data on one rank: every rank returns the error naming it
        "data" => {
            if world.rank() == 1 {
                ds.train.pop();
                ds = Dataset::new("other", ds.train, ds.valid, ds.test, ds.item_features).unwrap();
            }
            let err = trained(config(RecGoatConfig::lightgcn()), &ds, world.clone()).unwrap_err();
            println!("rank {} stopped: {err}", world.rank());
        }
        // divergence: every rank returns the non-finite loss
        "diverge" => {
            let cfg = RecGoatConfig {
                lr: 1e30,
                ..config(RecGoatConfig::recgoat())
            };
            let err = trained(cfg, &ds, world.clone()).unwrap_err();
            println!("rank {} stopped: {err}", world.rank());
        }
        other => panic!("unknown failure {other}"),
    }
}

#[test]
fn a_failing_rank_ends_the_job_with_its_message() {
    if child() {
        return rank_side_fails();
    }
    let limit = Duration::from_secs(120);
    let fail = |how: &str| {
        let env = [("RECGOAT_MPI_FAIL", how.to_string())];
        mpirun(
            2,
            "a_failing_rank_ends_the_job_with_its_message",
            &env,
            limit,
        )
    };
    let job = fail("file");
    assert!(!job.ok, "the job must fail:\n{}", job.out);
    assert!(
        job.out.contains("error (rank 1 of 2)") && job.out.contains("/nonexistent/recgoat-data"),
        "{}",
        job.out
    );
    assert!(!job.out.contains("UNREACHABLE"), "{}", job.out);
    println!("a bad file on rank 1 ended the job in {:.1} s", job.seconds);

    let job = fail("data");
    assert!(job.ok, "{}", job.out);
    for rank in 0..2 {
        let line = (job.out.lines())
            .find(|l| l.contains(&format!("rank {rank} stopped:")))
            .unwrap_or_else(|| panic!("rank {rank} said nothing:\n{}", job.out));
        assert!(
            line.contains("rank 1 of 2") && line.contains("its dataset differs from rank 0's"),
            "{line}"
        );
    }

    let job = fail("diverge");
    assert!(job.ok, "{}", job.out);
    for rank in 0..2 {
        let line = (job.out.lines())
            .find(|l| l.contains(&format!("rank {rank} stopped:")))
            .unwrap_or_else(|| panic!("rank {rank} said nothing:\n{}", job.out));
        assert!(line.contains("training diverged"), "{line}");
    }
}

/// The rank side of the resume test: 2 epochs on the ranks, a checkpoint (rank 0 writes it), 2 more;
/// rank 0 saves the final parameters beside it.
fn rank_side_checkpoints() {
    let world = World::from_env().unwrap();
    let dir = PathBuf::from(std::env::var("RECGOAT_MPI_DIR").unwrap());
    let ds = data();
    let cfg = RecGoatConfig {
        epochs: 2,
        ..config(RecGoatConfig::recgoat())
    };
    let mut t = trained(cfg, &ds, world.clone()).unwrap();
    t.save_checkpoint(dir.join("two.safetensors")).unwrap();
    t.set_epochs(4).unwrap();
    t.fit(|_, _| {}).unwrap();
    t.save_checkpoint(dir.join("four.safetensors")).unwrap();
    if world.is_root() {
        println!("CHECKPOINTS-WRITTEN");
    }
}

/// A checkpoint written by 2 ranks resumes on 1: the run goes on as it would have on the 2.
#[test]
fn a_two_rank_checkpoint_resumes_on_one() {
    if child() {
        return rank_side_checkpoints();
    }
    let dir = scratch("resume");
    let env = [("RECGOAT_MPI_DIR", dir.display().to_string())];
    let job = mpirun(
        2,
        "a_two_rank_checkpoint_resumes_on_one",
        &env,
        Duration::from_secs(300),
    );
    assert!(job.ok, "{}", job.out);
    assert_eq!(job.out.matches("CHECKPOINTS-WRITTEN").count(), 1);
    let ds = data();
    let backend = Backend::Cpu(Par::Seq);
    let mut t = Trainer::resume(dir.join("two.safetensors"), &ds, backend.clone(), None).unwrap();
    assert_eq!(t.state().epoch, 2);
    t.set_epochs(4).unwrap();
    t.fit(|_, _| {}).unwrap();
    let four = Trainer::resume(dir.join("four.safetensors"), &ds, backend, None).unwrap();
    let diff = max_rel_diff(t.params(), four.params());
    assert!(
        diff < 1e-4,
        "resumed on one rank: {diff} from the two ranks' run"
    );
    assert_eq!(t.state().best_epoch, four.state().best_epoch);
    std::fs::remove_dir_all(dir).ok();
}

/// The rank side of the kill test: each rank writes its process id, then they train for good, rank 0
/// writing a checkpoint after every epoch.
fn rank_side_trains_until_killed() {
    let world = World::from_env().unwrap();
    let dir = PathBuf::from(std::env::var("RECGOAT_MPI_DIR").unwrap());
    let pid = dir.join(format!("rank-{}.pid", world.rank()));
    std::fs::write(&pid, std::process::id().to_string()).unwrap();
    let ds = data();
    let cfg = RecGoatConfig {
        epochs: 1_000_000,
        patience: 0,
        ..config(RecGoatConfig::lightgcn())
    };
    let mut t = Trainer::new(cfg, &ds, Backend::Cpu(Par::Seq)).unwrap();
    t.distribute(world).unwrap();
    loop {
        t.run_epoch(|_, _| {}).unwrap();
        t.save_checkpoint(dir.join("latest.safetensors")).unwrap();
    }
}

/// A rank killed mid-run (the one that writes, while it writes a checkpoint after every epoch) ends the
/// job, and leaves the last checkpoint whole: it loads, verified, and training goes on from it.
#[test]
fn a_killed_rank_leaves_the_last_checkpoint_intact() {
    if child() {
        return rank_side_trains_until_killed();
    }
    for victim in [0, 1] {
        let dir = scratch(&format!("kill-{victim}"));
        let env = [("RECGOAT_MPI_DIR", dir.display().to_string())];
        let start = Instant::now();
        let job = spawn(2, "a_killed_rank_leaves_the_last_checkpoint_intact", &env);
        let ckpt = dir.join("latest.safetensors");
        let pid = dir.join(format!("rank-{victim}.pid"));
        // a few epochs in: the checkpoint has been rewritten many times
        while !(ckpt.exists() && pid.exists()) || start.elapsed() < Duration::from_secs(2) {
            assert!(start.elapsed() < Duration::from_secs(120), "no checkpoint");
            std::thread::sleep(Duration::from_millis(20));
        }
        let pid = std::fs::read_to_string(&pid).unwrap();
        let killed = Command::new("kill").args(["-9", pid.trim()]).status();
        assert!(killed.unwrap().success(), "kill -9 {pid}");
        let job = wait(job, start, Duration::from_secs(120));
        assert!(
            !job.ok,
            "the job must fail when rank {victim} is killed:\n{}",
            job.out
        );
        let ds = data();
        let mut t = Trainer::resume(&ckpt, &ds, Backend::Cpu(Par::Seq), None)
            .unwrap_or_else(|e| panic!("rank {victim} killed: the checkpoint does not load: {e}"));
        let epochs = t.state().epoch;
        assert!(epochs >= 1);
        t.set_epochs(epochs + 1).unwrap();
        t.run_epoch(|_, _| {}).unwrap();
        println!(
            "rank {victim} killed after {:.1} s: the checkpoint of epoch {epochs} loads and trains on",
            job.seconds
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
