//! Solve entropic OT between two `.npy` point clouds, or for a `.npy` cost matrix, and print the result as JSON.
//!
//! ```text
//! cargo run --release --example sinkhorn -- --demo 2000                     # two random 2000 x 64 clouds
//! cargo run --release --example sinkhorn -- --x a.npy --y b.npy --eps-rel 0.01
//! cargo run --release --example sinkhorn -- --cost c.npy --eps 0.5 --domain scaling
//! ```
//! Arrays may be float32 or float64 (solved in that type). Weights default to uniform.

use clap::{Parser, ValueEnum};
use ndarray::{Array1, Array2};
use ndarray_npy::{read_npy, ReadNpyError};
use recgoat_core::transport::*;
use recgoat_core::{Backend, Par, Real};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Scale {
    Mean,
    Median,
    Max,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Dom {
    Log,
    Scaling,
}

#[derive(Parser, Debug)]
#[command(about = "Entropic optimal transport between .npy inputs; prints JSON")]
struct Args {
    /// Source points (n x d .npy).
    #[arg(long, requires = "y", conflicts_with_all = ["cost", "demo"])]
    x: Option<PathBuf>,
    /// Target points (m x d .npy).
    #[arg(long, requires = "x")]
    y: Option<PathBuf>,
    /// A cost matrix (n x m .npy) instead of point clouds.
    #[arg(long, conflicts_with = "demo")]
    cost: Option<PathBuf>,
    /// No inputs: two random N x 64 standard normal clouds.
    #[arg(long, value_name = "N")]
    demo: Option<usize>,
    /// Source weights (n .npy); default uniform.
    #[arg(long)]
    a: Option<PathBuf>,
    /// Target weights (m .npy); default uniform.
    #[arg(long)]
    b: Option<PathBuf>,
    /// Absolute eps (overrides --eps-rel).
    #[arg(long)]
    eps: Option<f64>,
    /// eps relative to a statistic of the cost.
    #[arg(long, default_value_t = 0.01)]
    eps_rel: f64,
    /// Statistic for --eps-rel.
    #[arg(long, value_enum, default_value_t = Scale::Mean)]
    eps_scale: Scale,
    /// Iteration domain.
    #[arg(long, value_enum, default_value_t = Dom::Log)]
    domain: Dom,
    /// Marginal error tolerance (L1).
    #[arg(long, default_value_t = 1e-5)]
    tol: f64,
    /// Iteration cap.
    #[arg(long, default_value_t = 2000)]
    max_iter: usize,
    /// eps scaling from max(C) down to the target with this decay per stage.
    #[arg(long)]
    schedule_decay: Option<f64>,
    /// Point clouds: recompute the cost per row block instead of materialising it (large n, m).
    #[arg(long)]
    online: bool,
    /// Run on one thread.
    #[arg(long)]
    sequential: bool,
}

enum Input<F> {
    Clouds(Array2<F>, Array2<F>),
    Cost(Array2<F>),
}

/// Why a run failed: the file holds another element type (retry in it), or anything else.
enum Failure {
    WrongType,
    Other(String),
}

impl From<String> for Failure {
    fn from(s: String) -> Self {
        Failure::Other(s)
    }
}

fn npy_err(p: &Path, e: ReadNpyError) -> Failure {
    match e {
        ReadNpyError::WrongDescriptor(_) => Failure::WrongType,
        e => Failure::Other(format!("{}: {e}", p.display())),
    }
}

type Loaded<F> = (Input<F>, Option<Array1<F>>, Option<Array1<F>>);

fn load<F: Real + ndarray_npy::ReadableElement>(args: &Args) -> Result<Loaded<F>, Failure> {
    let read2 = |p: &Path| read_npy::<_, Array2<F>>(p).map_err(|e| npy_err(p, e));
    let read1 = |p: &Option<PathBuf>| -> Result<Option<Array1<F>>, Failure> {
        p.as_ref()
            .map(|p| read_npy::<_, Array1<F>>(p).map_err(|e| npy_err(p, e)))
            .transpose()
    };
    let input = match (&args.x, &args.y, &args.cost, args.demo) {
        (Some(x), Some(y), _, _) => Input::Clouds(read2(x)?, read2(y)?),
        (_, _, Some(c), _) => Input::Cost(read2(c)?),
        (_, _, _, Some(n)) => {
            let mut r = recgoat_core::testing::rng(2000);
            Input::Clouds(
                recgoat_core::testing::randn(&mut r, (n, 64)),
                recgoat_core::testing::randn(&mut r, (n, 64)),
            )
        }
        _ => {
            return Err(Failure::Other(
                "give --x and --y, --cost, or --demo N (see --help)".into(),
            ))
        }
    };
    Ok((input, read1(&args.a)?, read1(&args.b)?))
}

fn run<F: Real + ndarray_npy::ReadableElement>(args: &Args) -> Result<String, Failure> {
    let (input, a, b) = load::<F>(args)?;
    let dense_cost;
    let geom = match &input {
        Input::Cost(c) => Geometry::dense(c.view()),
        Input::Clouds(x, y) if args.online => Geometry::sq_euclidean(x.view(), y.view()),
        Input::Clouds(x, y) => {
            dense_cost =
                sq_euclidean_cost(x.view(), y.view()).map_err(|e| Failure::Other(e.to_string()))?;
            Geometry::dense(dense_cost.view())
        }
    }
    .map_err(|e| Failure::Other(e.to_string()))?;
    let uniform = |k: usize| Array1::from_elem(k, F::one() / F::from_usize(k).expect("fits"));
    let a = a.unwrap_or_else(|| uniform(geom.n()));
    let b = b.unwrap_or_else(|| uniform(geom.m()));
    let scale = match args.eps_scale {
        Scale::Mean => EpsScale::Mean,
        Scale::Median => EpsScale::Median,
        Scale::Max => EpsScale::Max,
    };
    let eps = args
        .eps
        .map_or(Epsilon::relative(scale, F::c(args.eps_rel)), |e| {
            Epsilon::Absolute(F::c(e))
        });
    let mut cfg = SinkhornConfig::new(eps)
        .with_tol(F::c(args.tol), ErrorNorm::L1)
        .with_iters(args.max_iter, 10)
        .with_domain(match args.domain {
            Dom::Log => Domain::Log,
            Dom::Scaling => Domain::Scaling,
        });
    if let Some(decay) = args.schedule_decay {
        cfg = cfg.with_schedule(EpsSchedule::Geometric {
            start: Epsilon::relative(EpsScale::Max, F::one()),
            decay: F::c(decay),
            stage_iters: 100,
        });
    }
    let be = Backend::Cpu(if args.sequential {
        Par::Seq
    } else {
        Par::rayon()
    });
    let t0 = Instant::now();
    let out = sinkhorn(&geom, a.view(), b.view(), &cfg, &be)
        .map_err(|e| Failure::Other(e.to_string()))?;
    let wall = t0.elapsed().as_secs_f64();
    Ok(format!(
        "{{\n  \"dtype\": \"{}\",\n  \"n\": {},\n  \"m\": {},\n  \"online\": {},\n  \"backend\": \"{}\",\n  \"eps\": {:e},\n  \"iterations\": {},\n  \"total_iterations\": {},\n  \"converged\": {},\n  \"termination\": \"{:?}\",\n  \"marginal_error_l1\": {:e},\n  \"transport_cost\": {:e},\n  \"regularised_value\": {:e},\n  \"wall_time_s\": {:.6}\n}}",
        F::NAME,
        geom.n(),
        geom.m(),
        matches!(geom, Geometry::SqEuclidean(_)),
        be.name(),
        out.eps,
        out.iterations,
        out.total_iterations,
        out.converged,
        out.termination,
        out.marginal_error,
        out.transport_cost,
        out.value,
        wall
    ))
}

fn main() {
    let args = Args::parse();
    // solve in the file's element type: try f32, fall back to f64 when the header says otherwise
    let result = match run::<f32>(&args) {
        Err(Failure::WrongType) => run::<f64>(&args),
        other => other,
    };
    match result {
        Ok(json) => println!("{json}"),
        Err(Failure::WrongType) => {
            eprintln!("error: the .npy inputs must all be float32 or all float64");
            std::process::exit(1);
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
