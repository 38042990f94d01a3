//! The GPU path: WGSL compute shaders (`shaders/*.wgsl`, baseline WGSL: f32, no subgroups, no float
//! atomics) run through wgpu on Vulkan, Metal or DX12, with the same numbers as the CPU path.
//!
//! A [`GpuContext`] acquires the adapter once (`RECGOAT_GPU_BACKEND` / `RECGOAT_GPU_ADAPTER` override the
//! choice) and caches compiled pipelines. Data lives on the device as [`GpuMatrix`] and [`GpuGraph`] (a CSR
//! graph with its transpose, so backward passes gather and need no atomics); ops chain on device-resident
//! data, with explicit upload / download, and host-in / host-out convenience calls beside them. Inputs
//! larger than one dispatch are chunked; sizes beyond a storage binding are a clear [`crate::Error::Gpu`]
//! naming the limit.
//!
//! Ops on the GPU today: SpMM and LightGCN propagation (forward and backward), GEMM, row L2 normalisation
//! and LayerNorm (forward and backward), InfoNCE (loss and gradients, every option of the CPU path), the
//! log-domain Sinkhorn solve (dense or online squared Euclidean cost, eps schedule, unbalanced marginals),
//! the exact cosine kNN graph (similarity blocks by GEMM, top-k selection on the device), RecGOAT's OAT map
//! with its gradients (the `I x d` work on the device, the `d x d` plan and its gradient on the host) and
//! graph attention (GATConv and GATv2, forward and backward, dropout included), BPR and the Adam step
//! ([`adam_step`]). The softmax fusion of views has a GPU call too, a batch of small Sinkhorn problems is
//! solved in one dispatch ([`sinkhorn_batch`]), and the gradients of a large plan and the debiased
//! divergence run here too ([`point_cloud_gradients`], [`sinkhorn_divergence`]). With [`crate::Backend::Gpu`] the model's
//! `Trainer` runs a device-resident training step built from these.
//!
//! Without the `gpu` cargo feature this module still exists: [`GpuContext::new`] returns
//! [`crate::Error::GpuUnavailable`].
//!
//! # Example
//! ```no_run
//! # #[cfg(feature = "gpu")] {
//! use ndarray::Array2;
//! use recgoat_core::graph::CsrGraph;
//! use recgoat_core::gpu::{self, GpuContext};
//!
//! let ctx = GpuContext::new()?;
//! let g = CsrGraph::<f32>::new(2, 2, vec![0, 1, 2], vec![1, 0], Some(vec![0.5, 2.0]))?;
//! let x = Array2::from_shape_vec((2, 3), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
//! let y = gpu::spmm(&ctx, &g, x.view())?;
//! assert_eq!(y.row(0).to_vec(), vec![2.0, 2.5, 3.0]);
//! # }
//! # Ok::<(), recgoat_core::Error>(())
//! ```

#[cfg(feature = "gpu")]
mod adaptive;
#[cfg(feature = "gpu")]
mod attention;
#[cfg(feature = "gpu")]
pub(crate) mod bpr;
#[cfg(feature = "gpu")]
mod context;
#[cfg(feature = "gpu")]
mod contrastive;
#[cfg(feature = "gpu")]
mod divergence;
#[cfg(feature = "gpu")]
pub(crate) mod elementwise;
#[cfg(feature = "gpu")]
pub(crate) mod f32_twin;
#[cfg(feature = "gpu")]
pub(crate) mod fusion;
#[cfg(feature = "gpu")]
pub(crate) mod gemm;
#[cfg(feature = "gpu")]
mod knn;
#[cfg(feature = "gpu")]
mod matrix;
#[cfg(feature = "gpu")]
pub(crate) mod norm;
#[cfg(feature = "gpu")]
pub(crate) mod optim;
#[cfg(feature = "gpu")]
mod pool;
#[cfg(feature = "gpu")]
mod profile;
#[cfg(feature = "gpu")]
pub(crate) mod propagation;
#[cfg(feature = "gpu")]
mod transport;

#[cfg(feature = "gpu")]
pub(crate) use adaptive::judge as judge_adaptive_status;
#[cfg(feature = "gpu")]
pub use adaptive::{
    adaptive_transport_backward, adaptive_transport_backward_with, adaptive_transport_forward,
    adaptive_transport_forward_with, GpuAdaptiveCache, GpuAdaptiveGrads,
};
#[cfg(feature = "gpu")]
pub use attention::{
    gat_backward, gat_backward_with, gat_forward, gat_forward_with, GpuAttentionGraph, GpuGatCache,
    GpuGatGrads, GpuGatParams, GAT_MAX_HEADS,
};
#[cfg(feature = "gpu")]
pub use context::{GpuContext, GpuCounters, GpuOptions, SHADERS};
#[cfg(feature = "gpu")]
pub use contrastive::{info_nce, info_nce_on_device, GpuInfoNceOutput};
#[cfg(feature = "gpu")]
pub(crate) use contrastive::{info_nce_deferred, PendingInfoNce};
#[cfg(feature = "gpu")]
pub use divergence::{point_cloud_gradients, sinkhorn_divergence};
#[cfg(feature = "gpu")]
pub use fusion::{softmax_fusion, softmax_fusion_backward};
#[cfg(feature = "gpu")]
pub use gemm::gemm;
#[cfg(feature = "gpu")]
pub use knn::{knn_graph, KNN_MAX_K};
#[cfg(feature = "gpu")]
pub use matrix::{GpuGraph, GpuMatrix};
#[cfg(feature = "gpu")]
pub use norm::{
    l2_normalize, l2_normalize_backward, layer_norm_backward, layer_norm_backward_with,
    layer_norm_forward, layer_norm_forward_with, GpuLayerNorm, GpuLayerNormCache,
};
#[cfg(feature = "gpu")]
pub use optim::{adam_step, GpuAdamState};
#[cfg(feature = "gpu")]
pub use profile::KernelTime;
#[cfg(feature = "gpu")]
pub use propagation::{
    lightgcn_backward, lightgcn_backward_into, lightgcn_forward, lightgcn_forward_into, spmm,
    spmm_backward_into, spmm_into,
};
#[cfg(feature = "gpu")]
pub use transport::{sinkhorn, sinkhorn_batch, SMALL_PROBLEM};

#[cfg(not(feature = "gpu"))]
mod disabled {
    use crate::error::{Error, Result};

    /// The GPU context of a build without the `gpu` feature: it cannot be constructed.
    #[derive(Debug)]
    pub struct GpuContext {
        _never: std::convert::Infallible,
    }

    impl GpuContext {
        /// Always [`Error::GpuUnavailable`]: this build has no GPU path (enable the `gpu` feature).
        ///
        /// # Errors
        /// Always.
        pub fn new() -> Result<GpuContext> {
            Err(Error::GpuUnavailable {
                reason: "recgoat-core was built without the `gpu` cargo feature".into(),
            })
        }

        /// The adapter's name (never called: this type has no values).
        pub fn adapter_name(&self) -> &str {
            match self._never {}
        }
    }
}

#[cfg(not(feature = "gpu"))]
pub use disabled::GpuContext;
