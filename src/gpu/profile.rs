//! Opt-in kernel timing: with [`super::GpuOptions::profile`] (environment `RECGOAT_GPU_PROFILE=1`) on an
//! adapter with timestamp queries, every dispatch writes GPU timestamps around its compute pass and each
//! submission waits for its work, so [`super::GpuContext::profile`] can say how much device time each
//! kernel took. Profiling serialises the queue: use it to find where the time goes, not for throughput.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::sync::Mutex;

/// Device time of one kernel (entry point) since the last [`super::GpuContext::reset_profile`].
#[derive(Debug, Clone, PartialEq)]
pub struct KernelTime {
    /// The kernel's entry point (e.g. `"gemm"`, `"spmm"`).
    pub kernel: &'static str,
    /// Dispatches timed.
    pub dispatches: u64,
    /// Their summed device time, in milliseconds.
    pub total_ms: f64,
}

pub(crate) struct Profiler {
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
    /// Timestamps recorded but not yet read: (kernel, mappable 16-byte buffer).
    pending: Mutex<Vec<(&'static str, wgpu::Buffer)>>,
    totals: Mutex<HashMap<&'static str, (u64, f64)>>,
}

impl Profiler {
    pub(crate) fn new(queue: &wgpu::Queue) -> Profiler {
        Profiler {
            period_ns: f64::from(queue.get_timestamp_period()),
            pending: Mutex::new(Vec::new()),
            totals: Mutex::new(HashMap::new()),
        }
    }

    /// A two-timestamp query set for one compute pass; [`Profiler::after_pass`] records its read-back once
    /// the pass has ended.
    pub(crate) fn query_set(&self, device: &wgpu::Device) -> wgpu::QuerySet {
        device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("kernel timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        })
    }

    /// Records the copy of the pass's two timestamps to a buffer read at the next submission.
    pub(crate) fn after_pass(
        &self,
        device: &wgpu::Device,
        encoder: &mut wgpu::CommandEncoder,
        set: &wgpu::QuerySet,
        kernel: &'static str,
    ) {
        let buffer = |usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("kernel timestamps"),
                size: 16,
                usage,
                mapped_at_creation: false,
            })
        };
        let resolved = buffer(wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC);
        let staging = buffer(wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST);
        encoder.resolve_query_set(set, 0..2, &resolved, 0);
        encoder.copy_buffer_to_buffer(&resolved, 0, &staging, 0, 16);
        lock(&self.pending).push((kernel, staging));
    }

    /// Waits for the submitted work and adds the timestamps it wrote to the totals.
    pub(crate) fn collect(&self, device: &wgpu::Device, op: &'static str) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.pending));
        if pending.is_empty() {
            return Ok(());
        }
        let gpu_err = |reason: String| Error::Gpu { op, reason };
        let (tx, rx) = std::sync::mpsc::channel();
        for (i, (_, buf)) in pending.iter().enumerate() {
            let tx = tx.clone();
            buf.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send((i, r));
            });
        }
        drop(tx);
        device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| gpu_err(e.to_string()))?;
        for (_, r) in rx.iter() {
            r.map_err(|e| gpu_err(e.to_string()))?;
        }
        let mut totals = lock(&self.totals);
        for (kernel, buf) in &pending {
            let ticks: [u64; 2] = {
                let view = buf
                    .get_mapped_range(..)
                    .map_err(|e| gpu_err(e.to_string()))?;
                let t: &[u64] = bytemuck::cast_slice(&view);
                [t[0], t[1]]
            };
            buf.unmap();
            let ns = ticks[1].saturating_sub(ticks[0]) as f64 * self.period_ns;
            let e = totals.entry(kernel).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += ns;
        }
        Ok(())
    }

    pub(crate) fn report(&self) -> Vec<KernelTime> {
        let mut v: Vec<KernelTime> = lock(&self.totals)
            .iter()
            .map(|(&kernel, &(dispatches, ns))| KernelTime {
                kernel,
                dispatches,
                total_ms: ns * 1e-6,
            })
            .collect();
        v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms));
        v
    }

    pub(crate) fn reset(&self) {
        lock(&self.totals).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
