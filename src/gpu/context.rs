//! Adapter and device acquisition, limits, the pipeline cache and submission helpers.

use super::pool::{size_class, BindCache, Buf, Encoder, Pool};
use super::profile::{KernelTime, Profiler};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// `shaders/lib/<lib>` for each listed library, in order, followed by `shaders/<file>`: the composition that
/// a file's leading `// requires: lib/<lib>` lines ask for (WGSL has no includes).
macro_rules! composed {
    ($file:literal $(, $lib:literal)*) => {
        concat!(
            $(include_str!(concat!("../../shaders/lib/", $lib)),)*
            include_str!(concat!("../../shaders/", $file))
        )
    };
}

/// A compute kernel: a WGSL file of `shaders/` (included at compile time) and its entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Kernel {
    pub(crate) file: &'static str,
    pub(crate) source: &'static str,
    pub(crate) entry: &'static str,
}

/// Every WGSL file of `shaders/`, by name, as compiled: what the kernels use and what `tests/shaders.rs`
/// checks. A file whose leading lines are `// requires: lib/<name>.wgsl` is compiled with those library files
/// (shared helpers) in front of it, in the order listed.
pub const SHADERS: &[(&str, &str)] = &[
    ("adam.wgsl", include_str!("../../shaders/adam.wgsl")),
    ("bpr_rows.wgsl", composed!("bpr_rows.wgsl", "reduce64.wgsl")),
    (
        "add_scaled_cols.wgsl",
        include_str!("../../shaders/add_scaled_cols.wgsl"),
    ),
    ("col_sums.wgsl", include_str!("../../shaders/col_sums.wgsl")),
    (
        "gat_aggregate.wgsl",
        composed!("gat_aggregate.wgsl", "gat.wgsl"),
    ),
    (
        "gat_backward_dst.wgsl",
        composed!("gat_backward_dst.wgsl", "gat.wgsl"),
    ),
    (
        "gat_backward_src.wgsl",
        composed!("gat_backward_src.wgsl", "gat.wgsl"),
    ),
    (
        "gat_edge_logits.wgsl",
        composed!("gat_edge_logits.wgsl", "gat.wgsl"),
    ),
    (
        "gat_node_scores.wgsl",
        composed!("gat_node_scores.wgsl", "gat.wgsl"),
    ),
    ("gemm.wgsl", composed!("gemm.wgsl", "gemm_tile.wgsl")),
    ("gemm_sum.wgsl", include_str!("../../shaders/gemm_sum.wgsl")),
    ("hadamard.wgsl", include_str!("../../shaders/hadamard.wgsl")),
    (
        "fusion_weights.wgsl",
        composed!("fusion_weights.wgsl", "fusion.wgsl"),
    ),
    (
        "fusion_logits_backward.wgsl",
        composed!("fusion_logits_backward.wgsl", "fusion.wgsl"),
    ),
    (
        "leaky_relu.wgsl",
        include_str!("../../shaders/leaky_relu.wgsl"),
    ),
    (
        "layer_norm.wgsl",
        composed!("layer_norm.wgsl", "reduce64.wgsl"),
    ),
    (
        "layer_norm_backward.wgsl",
        composed!("layer_norm_backward.wgsl", "reduce64.wgsl"),
    ),
    (
        "normalize_rows.wgsl",
        composed!("normalize_rows.wgsl", "reduce64.wgsl"),
    ),
    (
        "normalize_rows_backward.wgsl",
        composed!("normalize_rows_backward.wgsl", "reduce64.wgsl"),
    ),
    (
        "oat_implicit.wgsl",
        composed!("oat_implicit.wgsl", "reduce256.wgsl"),
    ),
    ("oat_map.wgsl", include_str!("../../shaders/oat_map.wgsl")),
    (
        "oat_prepare.wgsl",
        composed!("oat_prepare.wgsl", "reduce256.wgsl"),
    ),
    ("ot_plan.wgsl", include_str!("../../shaders/ot_plan.wgsl")),
    (
        "sinkhorn_measure.wgsl",
        composed!("sinkhorn_measure.wgsl", "ot_cost.wgsl"),
    ),
    (
        "sinkhorn_online.wgsl",
        composed!("sinkhorn_online.wgsl", "ot_potential.wgsl"),
    ),
    (
        "sinkhorn_small.wgsl",
        include_str!("../../shaders/sinkhorn_small.wgsl"),
    ),
    (
        "sinkhorn_update.wgsl",
        composed!("sinkhorn_update.wgsl", "ot_cost.wgsl", "ot_potential.wgsl"),
    ),
    ("spmm.wgsl", include_str!("../../shaders/spmm.wgsl")),
    (
        "spmm_vec4.wgsl",
        include_str!("../../shaders/spmm_vec4.wgsl"),
    ),
    (
        "knn_degrees.wgsl",
        composed!("knn_degrees.wgsl", "knn_edges.wgsl"),
    ),
    (
        "knn_fill.wgsl",
        composed!("knn_fill.wgsl", "knn_edges.wgsl"),
    ),
    (
        "knn_indptr.wgsl",
        include_str!("../../shaders/knn_indptr.wgsl"),
    ),
    (
        "sort_rows.wgsl",
        include_str!("../../shaders/sort_rows.wgsl"),
    ),
    (
        "topk_rows.wgsl",
        include_str!("../../shaders/topk_rows.wgsl"),
    ),
    (
        "xent_grad.wgsl",
        composed!("xent_grad.wgsl", "gemm_tile.wgsl"),
    ),
    (
        "xent_logits.wgsl",
        composed!("xent_logits.wgsl", "gemm_tile.wgsl"),
    ),
    ("xent_lse.wgsl", include_str!("../../shaders/xent_lse.wgsl")),
];

fn shader(file: &'static str) -> &'static str {
    SHADERS
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, s)| *s)
        .expect("every kernel's file is listed in SHADERS")
}

impl Kernel {
    pub(crate) fn new(file: &'static str, entry: &'static str) -> Kernel {
        Kernel {
            file,
            source: shader(file),
            entry,
        }
    }
}

/// How to pick the adapter. [`GpuOptions::from_env`] reads the overrides from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuOptions {
    /// Backends to consider, as wgpu spells them (`"vulkan"`, `"metal"`, `"dx12"`, `"gl"`,
    /// comma-separated); `None`: Vulkan, Metal and DX12 (those compiled in). Environment:
    /// `RECGOAT_GPU_BACKEND`.
    pub backend: Option<String>,
    /// Case-insensitive substring of the adapter name to require (e.g. `"llvmpipe"`, `"H100"`); `None`:
    /// the first hardware GPU, else a software one. Environment: `RECGOAT_GPU_ADAPTER`.
    pub adapter: Option<String>,
    /// A cap on workgroups per dispatch dimension below the device's own limit, so that the chunking of
    /// large inputs can be exercised on small ones (tests); `None`: the device's limit.
    pub max_workgroups_per_dispatch: Option<u32>,
    /// A cap on the bytes of one storage binding below the device's `max_storage_buffer_binding_size`, so
    /// that blocking and the limit errors can be exercised on small inputs (tests); `None`: the device's.
    pub max_storage_binding: Option<u64>,
    /// Time every kernel with GPU timestamps ([`GpuContext::profile`]); needs an adapter with timestamp
    /// queries and serialises the queue. Environment: `RECGOAT_GPU_PROFILE=1`.
    pub profile: bool,
}

impl GpuOptions {
    /// The options from `RECGOAT_GPU_BACKEND` and `RECGOAT_GPU_ADAPTER` (unset or empty: no override).
    pub fn from_env() -> GpuOptions {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        GpuOptions {
            backend: var("RECGOAT_GPU_BACKEND"),
            adapter: var("RECGOAT_GPU_ADAPTER"),
            max_workgroups_per_dispatch: None,
            max_storage_binding: None,
            profile: var("RECGOAT_GPU_PROFILE").is_some_and(|v| v == "1"),
        }
    }
}

/// One GPU device with its queue, acquired once, and a lazy cache of compiled compute pipelines.
///
/// Create one per process (acquiring an adapter takes milliseconds to seconds) and pass it by reference.
///
/// # Example
/// ```no_run
/// # #[cfg(feature = "gpu")] {
/// use recgoat_core::gpu::GpuContext;
/// let ctx = GpuContext::new().expect("a GPU adapter");
/// println!("{} ({:?})", ctx.adapter_name(), ctx.adapter_info().backend);
/// # }
/// ```
pub struct GpuContext {
    pub(crate) device: wgpu::Device,
    pub(crate) queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    limits: wgpu::Limits,
    dispatch_cap: u32,
    pipelines: Mutex<HashMap<Kernel, Arc<wgpu::ComputePipeline>>>,
    /// Uniform buffers by content: an op's parameters repeat from step to step, and a uniform buffer is
    /// never written after creation, so one buffer serves every dispatch with the same parameters.
    uniforms: Mutex<HashMap<Vec<u8>, wgpu::Buffer>>,
    /// Command buffers finished but not yet submitted: submitted together, in order, before anything the
    /// host observes (a read, a synchronisation, a queue write) or when [`PENDING_MAX`] have gathered.
    pending: Mutex<Pending>,
    /// Storage buffers whose handles have all dropped, for reuse (`pool.rs`).
    pool: Arc<Pool>,
    /// Bind groups over pooled and uniform buffers, for reuse.
    binds: Mutex<BindCache>,
    /// See [`GpuContext::placeholders`].
    placeholders: std::sync::OnceLock<(Buf, Buf)>,
    profiler: Option<Profiler>,
    counters: Counters,
}

/// Ops' command buffers gathered before a submission is forced.
const PENDING_MAX: usize = 256;

/// Command buffers waiting for the next submission, in order: ops' commands and, before them, the clears of
/// pooled buffers handed out as zeros.
#[derive(Default)]
struct Pending {
    buffers: Vec<wgpu::CommandBuffer>,
    /// How many of `buffers` are ops' (the count that forces a submission).
    ops: usize,
}

/// Distinct uniform buffers kept before the cache starts over.
const UNIFORMS_MAX: usize = 4096;

/// Running totals of the host-side work a context has done, for counting what a training step costs
/// (see [`GpuContext::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCounters {
    /// Compute dispatches recorded.
    pub dispatches: u64,
    /// Buffers created: storage, uniform and staging (a storage buffer reused from the context's pool is
    /// not created again, and counts in `buffers_reused`).
    pub buffers: u64,
    /// Storage buffers handed out again from the pool instead of created.
    pub buffers_reused: u64,
    /// Bind groups created (a dispatch over the same buffers as an earlier one reuses its group).
    pub bind_groups: u64,
    /// Queue submissions (each carries every command buffer finished since the one before).
    pub submissions: u64,
}

impl std::ops::Sub for GpuCounters {
    type Output = GpuCounters;
    fn sub(self, rhs: GpuCounters) -> GpuCounters {
        GpuCounters {
            dispatches: self.dispatches - rhs.dispatches,
            buffers: self.buffers - rhs.buffers,
            buffers_reused: self.buffers_reused - rhs.buffers_reused,
            bind_groups: self.bind_groups - rhs.bind_groups,
            submissions: self.submissions - rhs.submissions,
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    dispatches: std::sync::atomic::AtomicU64,
    buffers: std::sync::atomic::AtomicU64,
    bind_groups: std::sync::atomic::AtomicU64,
    submissions: std::sync::atomic::AtomicU64,
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

impl std::fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("device_type", &self.info.device_type)
            .finish()
    }
}

fn device_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Cpu => 3,
        wgpu::DeviceType::Other => 4,
    }
}

impl GpuContext {
    /// The context for the adapter the environment chooses ([`GpuOptions::from_env`]).
    ///
    /// # Errors
    /// [`Error::GpuUnavailable`] when no adapter matches or the device cannot be opened (the message lists
    /// the adapters seen).
    pub fn new() -> Result<GpuContext> {
        GpuContext::with_options(&GpuOptions::from_env())
    }

    /// The context for the adapter `opts` chooses: the adapters of the requested backends whose name
    /// contains `opts.adapter`, hardware before software.
    ///
    /// # Errors
    /// As [`GpuContext::new`].
    pub fn with_options(opts: &GpuOptions) -> Result<GpuContext> {
        let backends = match &opts.backend {
            Some(b) => {
                let parsed = wgpu::Backends::from_comma_list(b);
                if parsed.is_empty() {
                    return Err(Error::GpuUnavailable {
                        reason: format!(
                            "RECGOAT_GPU_BACKEND / backend {b:?} names no wgpu backend"
                        ),
                    });
                }
                parsed
            }
            None => wgpu::Backends::PRIMARY,
        };
        // the no-op backend "runs" nothing: never let it stand in for a device
        let backends = backends.difference(wgpu::Backends::NOOP);
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends,
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let mut adapters = pollster::block_on(instance.enumerate_adapters(backends));
        let seen: Vec<String> = adapters
            .iter()
            .map(|a| {
                let i = a.get_info();
                format!("{} ({:?}, {:?})", i.name, i.backend, i.device_type)
            })
            .collect();
        if let Some(want) = &opts.adapter {
            let want = want.to_lowercase();
            adapters.retain(|a| a.get_info().name.to_lowercase().contains(&want));
        }
        adapters.sort_by_key(|a| device_rank(a.get_info().device_type));
        let adapter = adapters.into_iter().next().ok_or_else(|| Error::GpuUnavailable {
            reason: format!(
                "no adapter{} among [{}] (backends {backends:?}; on Linux, install a Vulkan driver, e.g. \
                 `apt-get install mesa-vulkan-drivers libvulkan1` for the software one)",
                opts.adapter
                    .as_ref()
                    .map(|a| format!(" named like {a:?}"))
                    .unwrap_or_default(),
                seen.join(", ")
            ),
        })?;
        let info = adapter.get_info();
        // ask for everything the adapter offers: large graphs need its full storage-binding size
        let limits = adapter.limits();
        if opts.profile && !adapter.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return Err(Error::GpuUnavailable {
                reason: format!(
                    "profiling was asked for (RECGOAT_GPU_PROFILE / GpuOptions::profile) but {} has no \
                     timestamp queries",
                    info.name
                ),
            });
        }
        let features = if opts.profile {
            wgpu::Features::TIMESTAMP_QUERY
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("recgoat-core"),
            required_features: features,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::GpuUnavailable {
            reason: format!("opening {}: {e}", info.name),
        })?;
        // what the crate plans with: the device's limits, lowered where the options ask
        let mut limits = limits;
        if let Some(cap) = opts.max_storage_binding {
            limits.max_storage_buffer_binding_size =
                limits.max_storage_buffer_binding_size.min(cap);
        }
        let dispatch_cap = opts
            .max_workgroups_per_dispatch
            .unwrap_or(u32::MAX)
            .clamp(1, limits.max_compute_workgroups_per_dimension.max(1));
        let profiler = opts.profile.then(|| Profiler::new(&queue));
        Ok(GpuContext {
            device,
            queue,
            info,
            limits,
            dispatch_cap,
            pipelines: Mutex::new(HashMap::new()),
            uniforms: Mutex::new(HashMap::new()),
            pending: Mutex::new(Pending::default()),
            pool: Arc::new(Pool::default()),
            binds: Mutex::new(BindCache::default()),
            placeholders: std::sync::OnceLock::new(),
            profiler,
            counters: Counters::default(),
        })
    }

    /// The dispatches, buffer creations and submissions this context has made so far; the difference of
    /// two readings is the cost of what ran between them.
    ///
    /// # Example
    /// ```no_run
    /// # #[cfg(feature = "gpu")] {
    /// use recgoat_core::gpu::{GpuContext, GpuMatrix};
    /// let ctx = GpuContext::new().expect("a GPU adapter");
    /// let before = ctx.counters();
    /// let _m = GpuMatrix::zeros(&ctx, 4, 4).unwrap();
    /// assert_eq!((ctx.counters() - before).buffers, 1);
    /// # }
    /// ```
    pub fn counters(&self) -> GpuCounters {
        let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        GpuCounters {
            dispatches: get(&self.counters.dispatches),
            buffers: get(&self.counters.buffers),
            buffers_reused: self.pool.reused(),
            bind_groups: get(&self.counters.bind_groups),
            submissions: get(&self.counters.submissions),
        }
    }

    /// The adapter's name (e.g. `"NVIDIA H100 80GB HBM3"`, `"llvmpipe (LLVM 15.0.6, 256 bits)"`).
    pub fn adapter_name(&self) -> &str {
        &self.info.name
    }

    /// Everything wgpu reports about the adapter (backend, device type, driver).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// The device's limits (the adapter's own, all requested; lowered where [`GpuOptions`] caps them).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.limits
    }

    /// Device time per kernel since the context was made or [`GpuContext::reset_profile`], most expensive
    /// first; `None` unless the context profiles ([`GpuOptions::profile`]).
    pub fn profile(&self) -> Option<Vec<KernelTime>> {
        self.profiler.as_ref().map(Profiler::report)
    }

    /// Clears the kernel times of [`GpuContext::profile`].
    pub fn reset_profile(&self) {
        if let Some(p) = &self.profiler {
            p.reset();
        }
    }

    /// Whether the adapter is a software rasteriser (lavapipe / llvmpipe / WARP): correct, but slow.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Blocks until every submitted command has finished (what a benchmark does before its clock stops).
    ///
    /// # Errors
    /// [`Error::Gpu`] when the device is lost or the wait fails.
    pub fn synchronize(&self) -> Result<()> {
        self.flush("GpuContext::synchronize")?;
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| Error::Gpu {
                op: "GpuContext::synchronize",
                reason: e.to_string(),
            })
    }

    /// Workgroups one dispatch may launch along x (the device limit, or the cap of [`GpuOptions`]).
    pub(crate) fn dispatch_cap(&self) -> u32 {
        self.dispatch_cap
    }

    /// The compiled pipeline of `k`, compiled on first use.
    pub(crate) fn pipeline(&self, k: Kernel) -> Result<Arc<wgpu::ComputePipeline>> {
        let mut cache = self.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = cache.get(&k) {
            return Ok(p.clone());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(k.file),
                source: wgpu::ShaderSource::Wgsl(k.source.into()),
            });
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(k.entry),
                layout: None,
                module: &module,
                entry_point: Some(k.entry),
                compilation_options: Default::default(),
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                op: "GpuContext::pipeline",
                reason: format!("{} / {}: {e}", k.file, k.entry),
            });
        }
        let p = Arc::new(pipeline);
        cache.insert(k, p.clone());
        Ok(p)
    }

    /// Refuses a buffer larger than the device binds in one storage binding.
    pub(crate) fn check_binding(&self, op: &'static str, what: &str, bytes: u64) -> Result<()> {
        let max = self.limits.max_storage_buffer_binding_size;
        if bytes > max {
            return Err(Error::Gpu {
                op,
                reason: format!(
                    "{what} needs {bytes} bytes in one storage binding; the device's \
                     max_storage_buffer_binding_size is {max}"
                ),
            });
        }
        Ok(())
    }

    /// A new storage buffer holding `data` (at least 4 bytes: wgpu refuses empty bindings), let go when its
    /// last handle drops. (Never a reused one: a queue write would reach the buffer before the commands still
    /// queued on its old contents; and never kept for reuse: see `pool.rs`.)
    pub(crate) fn storage_from<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> Buf {
        bump(&self.counters.buffers);
        let bytes: &[u8] = bytemuck::cast_slice(data);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (bytes.len() as u64).max(4).next_multiple_of(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: true,
        });
        if !bytes.is_empty() {
            let mut view = buf
                .slice(..bytes.len() as u64)
                .get_mapped_range_mut()
                .expect("a buffer mapped at creation");
            view.copy_from_slice(bytes);
        }
        buf.unmap();
        Buf::transient(buf, self.pool.clone())
    }

    /// A zero-filled storage buffer of at least `bytes` bytes: a free one of the pool (cleared on the
    /// device before the next commands), or a new one (wgpu zero-initialises those).
    pub(crate) fn storage_zeroed(&self, label: &str, bytes: u64) -> Buf {
        // a class above what one binding (or buffer) may hold would make a request that fits unbindable:
        // such a buffer keeps its own size
        let most = (self.limits.max_storage_buffer_binding_size).min(self.limits.max_buffer_size);
        let size = match size_class(bytes) {
            class if class > most => bytes.max(4).next_multiple_of(4),
            class => class,
        };
        if let Some((id, buf)) = self.pool.take_zeroed(size) {
            return Buf::pooled(buf, Some(id), self.pool.clone());
        }
        bump(&self.counters.buffers);
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Buf::pooled(buf, None, self.pool.clone())
    }

    /// Two 16-byte buffers (room for one `vec4<f32>`), made once per context, bound where a kernel's
    /// optional input (the first, read) or output (the second, read-write) is unused: one buffer cannot be
    /// bound both ways in one dispatch. What a kernel writes to the second is never read.
    pub(crate) fn placeholders(&self) -> (Buf, Buf) {
        self.placeholders
            .get_or_init(|| {
                let read = self.storage_from("placeholder", &[0f32; 4]);
                (read, self.storage_from("placeholder_rw", &[0f32; 4]))
            })
            .clone()
    }

    /// Lets go of the storage buffers kept for reuse and of the cached bind groups (their memory returns to
    /// the device once no matrix holds them). The context keeps up to 512 MiB of free buffers otherwise.
    pub fn release_cached_buffers(&self) {
        self.pool.clear();
        self.pool.take_dead();
        self.binds.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// A uniform buffer holding `data`: created on first use of these bytes, then shared.
    pub(crate) fn uniform_from<T: bytemuck::Pod>(&self, data: &T) -> wgpu::Buffer {
        use wgpu::util::DeviceExt;
        let bytes = bytemuck::bytes_of(data);
        let mut cache = self.uniforms.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = cache.get(bytes) {
            return b.clone();
        }
        if cache.len() >= UNIFORMS_MAX {
            cache.clear();
        }
        bump(&self.counters.buffers);
        let buf = self
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("params"),
                contents: bytes,
                usage: wgpu::BufferUsages::UNIFORM,
            });
        cache.insert(bytes.to_vec(), buf.clone());
        buf
    }

    /// Records one compute dispatch of `k` over `groups` workgroups (x) with `buffers` bound to group 0
    /// at bindings 0, 1, ... in order.
    pub(crate) fn dispatch(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        k: Kernel,
        buffers: &[&wgpu::Buffer],
        groups: u32,
    ) -> Result<()> {
        self.dispatch_2d(encoder, k, buffers, (groups, 1))
    }

    /// `(row_offset, workgroups)` for each dispatch covering `rows` rows at `rows_per_group` rows per
    /// workgroup, under the dispatch limit.
    pub(crate) fn row_dispatches(&self, rows: usize, rows_per_group: usize) -> Vec<(usize, u32)> {
        let step = self.dispatch_cap as usize * rows_per_group;
        (0..rows)
            .step_by(step)
            .map(|start| {
                let n = (rows - start).min(step);
                (start, n.div_ceil(rows_per_group) as u32)
            })
            .collect()
    }

    /// Records `kernel` over `rows` items, `per_group` per workgroup, chunked under the dispatch limit: each
    /// chunk binds the uniform `params(first item of the chunk)` first, then `buffers`.
    pub(crate) fn dispatch_rows<P: bytemuck::Pod>(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        kernel: Kernel,
        (rows, per_group): (usize, usize),
        params: impl Fn(usize) -> P,
        buffers: &[&wgpu::Buffer],
    ) -> Result<()> {
        for (start, groups) in self.row_dispatches(rows, per_group) {
            let p = self.uniform_from(&params(start));
            let mut all = vec![&p];
            all.extend_from_slice(buffers);
            self.dispatch(encoder, kernel, &all, groups)?;
        }
        Ok(())
    }

    /// [`GpuContext::dispatch`] over an `x` by `y` grid of workgroups.
    pub(crate) fn dispatch_2d(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        k: Kernel,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) -> Result<()> {
        self.dispatch_3d(encoder, k, buffers, (groups.0, groups.1, 1))
    }

    /// [`GpuContext::dispatch`] over an `x` by `y` by `z` grid of workgroups.
    pub(crate) fn dispatch_3d(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        k: Kernel,
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32, u32),
    ) -> Result<()> {
        let pipeline = self.pipeline(k)?;
        bump(&self.counters.dispatches);
        let bind = self.bind_group(k, &pipeline, buffers);
        let timestamps = self.profiler.as_ref().map(|p| p.query_set(&self.device));
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(k.entry),
                timestamp_writes: timestamps
                    .as_ref()
                    .map(|set| wgpu::ComputePassTimestampWrites {
                        query_set: set,
                        beginning_of_pass_write_index: Some(0),
                        end_of_pass_write_index: Some(1),
                    }),
            });
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, groups.2);
        }
        if let (Some(p), Some(set)) = (&self.profiler, &timestamps) {
            p.after_pass(&self.device, encoder, set, k.entry);
        }
        Ok(())
    }

    /// The bind group of `buffers` at bindings 0, 1, ... for `k`: the one made for an earlier dispatch over
    /// the same buffers, or a new one. Every buffer a kernel binds is a pooled storage buffer or a cached
    /// uniform, which outlive their groups here; when the pool destroys a buffer, the groups are let go.
    fn bind_group(
        &self,
        k: Kernel,
        pipeline: &wgpu::ComputePipeline,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let mut cache = self.binds.lock().unwrap_or_else(|e| e.into_inner());
        let dead = self.pool.take_dead();
        if !dead.is_empty() {
            cache.forget(&dead);
        }
        if let Some(group) = cache.get(k, buffers) {
            return group;
        }
        bump(&self.counters.bind_groups);
        let layout = pipeline.get_bind_group_layout(0);
        let entries: Vec<wgpu::BindGroupEntry<'_>> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let group = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(k.entry),
            layout: &layout,
            entries: &entries,
        });
        cache.insert(k, buffers, group.clone());
        group
    }

    /// Copies the first `count` values of `buf` back to the host (waits for the work queued before).
    pub(crate) fn read_buffer<T: bytemuck::Pod>(
        &self,
        op: &'static str,
        buf: &wgpu::Buffer,
        count: usize,
    ) -> Result<Vec<T>> {
        Ok(self.read_many(op, &[(buf, count)])?.remove(0))
    }

    /// The first `count` values of each buffer, back to the host through one staging buffer: one copy
    /// each, one submission and one wait for all of them (small results read together at the end of an
    /// epoch).
    pub(crate) fn read_many<T: bytemuck::Pod>(
        &self,
        op: &'static str,
        parts: &[(&wgpu::Buffer, usize)],
    ) -> Result<Vec<Vec<T>>> {
        let size = std::mem::size_of::<T>();
        let total: usize = parts.iter().map(|(_, n)| n).sum();
        if total == 0 {
            return Ok(parts.iter().map(|_| Vec::new()).collect());
        }
        let gpu_err = |reason: String| Error::Gpu { op, reason };
        bump(&self.counters.buffers);
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("download"),
            size: (total * size) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.encoder();
        let mut at = 0u64;
        for (buf, n) in parts {
            let bytes = (*n * size) as u64;
            if bytes > 0 {
                enc.copy_buffer_to_buffer(buf, 0, &staging, at, bytes);
            }
            at += bytes;
        }
        self.submit(op, enc)?;
        // the copies (and all work before them) reach the queue before the staging buffer is mapped
        self.flush(op)?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.synchronize()?;
        rx.recv()
            .map_err(|e| gpu_err(e.to_string()))?
            .map_err(|e| gpu_err(e.to_string()))?;
        let all: Vec<T> = {
            let view = staging
                .get_mapped_range(..)
                .map_err(|e| gpu_err(e.to_string()))?;
            bytemuck::cast_slice(&view).to_vec()
        };
        staging.unmap();
        let mut out = Vec::with_capacity(parts.len());
        let mut rest = all.as_slice();
        for (_, n) in parts {
            let (head, tail) = rest.split_at(*n);
            out.push(head.to_vec());
            rest = tail;
        }
        Ok(out)
    }

    /// A fresh command encoder (counted open until it is submitted or dropped: see `pool.rs`).
    pub(crate) fn encoder(&self) -> Encoder {
        let enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        Encoder::new(enc, self.pool.clone())
    }

    /// Queues the clears of the pooled buffers handed out as zeros since the last call (before whatever
    /// is queued next, after everything queued before).
    fn queue_clears(&self, pending: &mut Pending) {
        let clears = self.pool.take_clears();
        if clears.is_empty() {
            return;
        }
        let mut enc = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("pool clears"),
            });
        for buf in &clears {
            enc.clear_buffer(buf, 0, None);
        }
        pending.buffers.push(enc.finish());
    }

    /// Finishes `encoder` (catching validation errors as [`Error::Gpu`] for `op`) and queues its commands
    /// after everything recorded before: they reach the device with the next [`GpuContext::flush`], which
    /// every read, synchronisation and queue write does first. With the profiler on, each op is submitted
    /// at once, so that its timestamps are collected.
    pub(crate) fn submit(&self, op: &'static str, mut encoder: Encoder) -> Result<()> {
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let commands = encoder.finish_commands();
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                op,
                reason: e.to_string(),
            });
        }
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            self.queue_clears(&mut pending);
            pending.buffers.push(commands);
            pending.ops += 1;
            pending.ops >= PENDING_MAX
        };
        // the commands are queued: buffers dropped while they were recorded may now be reused
        drop(encoder);
        if full || self.profiler.is_some() {
            self.flush(op)?;
        }
        match &self.profiler {
            Some(p) => p.collect(&self.device, op),
            None => Ok(()),
        }
    }

    /// Submits the queued command buffers in one submission (nothing when none are queued).
    ///
    /// # Errors
    /// [`Error::Gpu`] for a validation error of the submission, naming `op`.
    pub(crate) fn flush(&self, op: &'static str) -> Result<()> {
        // the lock is held through the submission: a context shared between threads must not let one
        // thread's later commands reach the queue before its earlier ones taken by another thread
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        self.queue_clears(&mut pending);
        if pending.buffers.is_empty() {
            return Ok(());
        }
        let scope = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        bump(&self.counters.submissions);
        pending.ops = 0;
        self.queue.submit(pending.buffers.drain(..));
        drop(pending);
        match pollster::block_on(scope.pop()) {
            Some(e) => Err(Error::Gpu {
                op,
                reason: e.to_string(),
            }),
            None => Ok(()),
        }
    }
}
