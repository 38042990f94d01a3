//! The `&Backend`-taking solvers on [`Backend::Gpu`]: f32 problems go to the GPU path ([`crate::gpu::sinkhorn`],
//! [`crate::gpu::sinkhorn_batch`], [`crate::gpu::sinkhorn_divergence`]); other float types are an
//! [`Error::Param`], as for the model on a GPU backend.

use super::{BatchProblem, DivergenceOutput, Geometry, SinkhornConfig, SinkhornOutput};
use crate::backend::GpuBackend;
use crate::error::{Error, Result};
use crate::gpu::f32_twin::{same, same_owned, to_f32};
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView1};

/// The configuration as `SinkhornConfig<f32>` when `F` is f32 (checked at run time).
fn f32_config<'a, F: Real>(
    op: &'static str,
    cfg: &'a SinkhornConfig<F>,
) -> Result<&'a SinkhornConfig<f32>> {
    same(cfg).ok_or_else(|| {
        Error::param(
            op,
            "float type",
            F::NAME,
            "the GPU backend solves f32 problems: use f32, or Backend::Cpu",
        )
    })
}

/// An f32 result as the caller's float type (which the call checked is f32).
fn back<T: 'static, U: 'static>(x: T) -> U {
    same_owned(x).expect("the float type was checked to be f32")
}

/// The f32 data of a geometry (a copy; the types were checked to be equal), to view as a [`Geometry`].
enum Data {
    Dense(Array2<f32>),
    Cloud {
        x: Array2<f32>,
        y: Array2<f32>,
        materialized: bool,
    },
}

impl Data {
    fn of<F: Real>(geom: &Geometry<'_, F>) -> Data {
        match geom {
            Geometry::Dense(c) => Data::Dense(to_f32(c.view())),
            Geometry::SqEuclidean(pc) => Data::Cloud {
                x: to_f32(pc.x),
                y: to_f32(pc.y),
                materialized: geom.is_materialized(),
            },
        }
    }

    fn geometry(&self) -> Result<Geometry<'_, f32>> {
        match self {
            Data::Dense(c) => Geometry::dense(c.view()),
            Data::Cloud {
                x,
                y,
                materialized: true,
            } => Geometry::sq_euclidean_materialized(x.view(), y.view()),
            Data::Cloud { x, y, .. } => Geometry::sq_euclidean(x.view(), y.view()),
        }
    }
}

pub(super) fn sinkhorn<F: Real>(
    gpu: &GpuBackend,
    geom: &Geometry<'_, F>,
    a: ArrayView1<'_, F>,
    b: ArrayView1<'_, F>,
    cfg: &SinkhornConfig<F>,
) -> Result<SinkhornOutput<F>> {
    let cfg = f32_config("sinkhorn", cfg)?;
    let data = Data::of(geom);
    let (a, b) = (to_f32(a), to_f32(b));
    let out = crate::gpu::sinkhorn(gpu.context(), &data.geometry()?, a.view(), b.view(), cfg)?;
    Ok(back(out))
}

pub(super) fn sinkhorn_batch<F: Real>(
    gpu: &GpuBackend,
    problems: &[BatchProblem<'_, F>],
    cfg: &SinkhornConfig<F>,
) -> Vec<Result<SinkhornOutput<F>>> {
    let cfg = match f32_config("sinkhorn_batch", cfg) {
        Ok(c) => c,
        Err(e) => return problems.iter().map(|_| Err(e.clone())).collect(),
    };
    let data: Vec<(Data, Array1<f32>, Array1<f32>)> = problems
        .iter()
        .map(|p| (Data::of(&p.geom), to_f32(p.a), to_f32(p.b)))
        .collect();
    let mut geoms = Vec::with_capacity(data.len());
    for (d, _, _) in &data {
        match d.geometry() {
            Ok(g) => geoms.push(g),
            // the caller's geometry was valid, so is its copy
            Err(e) => return problems.iter().map(|_| Err(e.clone())).collect(),
        }
    }
    let batch: Vec<BatchProblem<'_, f32>> = geoms
        .into_iter()
        .zip(&data)
        .map(|(geom, (_, a, b))| BatchProblem {
            geom,
            a: a.view(),
            b: b.view(),
        })
        .collect();
    crate::gpu::sinkhorn_batch(gpu.context(), &batch, cfg)
        .into_iter()
        .map(|r| r.map(back))
        .collect()
}

pub(super) fn sinkhorn_divergence<F: Real>(
    gpu: &GpuBackend,
    (x, y): (ndarray::ArrayView2<'_, F>, ndarray::ArrayView2<'_, F>),
    (a, b): (ArrayView1<'_, F>, ArrayView1<'_, F>),
    cfg: &SinkhornConfig<F>,
) -> Result<DivergenceOutput<F>> {
    let cfg = f32_config("sinkhorn_divergence", cfg)?;
    let (x, y, a, b) = (to_f32(x), to_f32(y), to_f32(a), to_f32(b));
    let out = crate::gpu::sinkhorn_divergence(
        gpu.context(),
        x.view(),
        y.view(),
        a.view(),
        b.view(),
        cfg,
    )?;
    Ok(back(out))
}
