//! Reuse of storage buffers and bind groups across ops and training steps.
//!
//! A training step makes the same activations, gradients and scratch, of the same sizes, step after step.
//! Rather than creating each as a new buffer, the context's [`Pool`] keeps every storage buffer whose last
//! handle ([`Buf`]) has dropped and hands it out again for a request of the same size class; and a dispatch
//! over buffers that live in the pool (or in the uniform cache) reuses the bind group it made the first time
//! ([`BindCache`]).
//!
//! Reuse follows the queue's order, so a buffer's new contents are written after every use of its old ones:
//! - a dropped buffer becomes free only when no command encoder is open ([`Encoder`] counts them), that is
//!   when every command that used it sits in a finished command buffer, queued or submitted; anything
//!   recorded later runs after those;
//! - a free buffer handed out as zeros is cleared by a command that the context queues before the next
//!   command buffer or submission ([`Pool::take_clears`]);
//! - uploads never reuse a buffer (a queue write would run before commands still queued) and never join
//!   the pool: a step uploads new inputs every time, and kept, their buffers would pile up in the pool and
//!   crowd out the ones a step's zeros reuse (which keeps those, and the bind groups over them, the same
//!   from step to step).
//!
//! Of the free buffers of a size class the pool hands out the one made first. A step that allocates and
//! frees in the same pattern as the step before, from the same free buffers, then gets the same buffers
//! at the same places (a last-in-first-out pool would rotate them from step to step), so its dispatches
//! bind what they bound before and find their bind groups cached.
//!
//! Free buffers are kept up to [`POOL_MAX_BYTES`]. A buffer that is let go (an upload's, or a pooled one
//! beyond that size) takes the cached bind groups that bind it with it: they would keep it alive.

use super::context::Kernel;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes of free buffers a pool keeps for reuse.
pub(crate) const POOL_MAX_BYTES: u64 = 512 << 20;

/// Bind groups kept before the cache starts over.
const BIND_GROUPS_MAX: usize = 4096;

/// The size a request of `bytes` is served with, its size class: a multiple of 256 bytes up to 4 KiB, then 8
/// classes per power of two (at most 12.5 % above the request), so that requests of nearby sizes share
/// buffers.
pub(crate) fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(4);
    if bytes <= 4096 {
        return bytes.next_multiple_of(256);
    }
    let step = 1u64 << (63 - bytes.leading_zeros() - 3);
    bytes.next_multiple_of(step)
}

/// A storage buffer of the context, shared by every handle on it (a matrix and its aliases); when the last
/// handle drops, the buffer goes back to the pool ([`Buf::pooled`]) or is let go ([`Buf::transient`]).
#[derive(Clone, Debug)]
pub(crate) struct Buf(Arc<Held>);

#[derive(Debug)]
struct Held {
    buf: wgpu::Buffer,
    pool: Arc<Pool>,
    /// The pool's number for a buffer it reuses (the order of creation); `None`: let go when dropped.
    id: Option<u64>,
}

impl Buf {
    /// A buffer that returns to the pool when its last handle drops: a new one (`id: None`, numbered here)
    /// or a free one the pool handed out with its number.
    pub(crate) fn pooled(buf: wgpu::Buffer, id: Option<u64>, pool: Arc<Pool>) -> Buf {
        let id = id.unwrap_or_else(|| pool.number());
        Buf(Arc::new(Held {
            buf,
            pool,
            id: Some(id),
        }))
    }

    /// A buffer that is let go when its last handle drops (an upload's).
    pub(crate) fn transient(buf: wgpu::Buffer, pool: Arc<Pool>) -> Buf {
        Buf(Arc::new(Held {
            buf,
            pool,
            id: None,
        }))
    }
}

impl std::ops::Deref for Buf {
    type Target = wgpu::Buffer;
    fn deref(&self) -> &wgpu::Buffer {
        &self.0.buf
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        match self.id {
            Some(id) => self.pool.release(id, self.buf.clone()),
            None => self.pool.state().dead.push(self.buf.clone()),
        }
    }
}

/// A command encoder of the context, counted while it is open (see the module's ordering rules).
pub(crate) struct Encoder {
    enc: Option<wgpu::CommandEncoder>,
    pool: Arc<Pool>,
}

impl Encoder {
    pub(crate) fn new(enc: wgpu::CommandEncoder, pool: Arc<Pool>) -> Encoder {
        pool.state().open_encoders += 1;
        Encoder {
            enc: Some(enc),
            pool,
        }
    }

    /// The recorded commands; the encoder still counts as open until `self` drops, which the caller does
    /// once the commands are queued.
    pub(crate) fn finish_commands(&mut self) -> wgpu::CommandBuffer {
        self.enc
            .take()
            .expect("an encoder is finished once")
            .finish()
    }
}

impl std::ops::Deref for Encoder {
    type Target = wgpu::CommandEncoder;
    fn deref(&self) -> &wgpu::CommandEncoder {
        self.enc.as_ref().expect("an open encoder")
    }
}

impl std::ops::DerefMut for Encoder {
    fn deref_mut(&mut self) -> &mut wgpu::CommandEncoder {
        self.enc.as_mut().expect("an open encoder")
    }
}

impl Drop for Encoder {
    fn drop(&mut self) {
        self.pool.encoder_closed();
    }
}

/// Free storage buffers by size class, and the bookkeeping that orders their reuse.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Buffers free to hand out, by size, then by number (the first made goes out first).
    free: HashMap<u64, std::collections::BTreeMap<u64, wgpu::Buffer>>,
    free_bytes: u64,
    /// Dropped while an encoder was open: their last commands may not be finished yet.
    released: Vec<(u64, wgpu::Buffer)>,
    open_encoders: usize,
    /// Handed out as zeros, not cleared yet.
    to_clear: Vec<wgpu::Buffer>,
    /// Let go since the bind-group cache last looked ([`Pool::take_dead`]): its groups over these go too.
    dead: Vec<wgpu::Buffer>,
    /// Requests served from the free buffers.
    reused: u64,
    /// Buffers numbered so far.
    numbered: u64,
}

impl Pool {
    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free buffer of exactly `size` bytes (a size class), to be read as zeros: cleared before the next
    /// command buffer reaches the queue.
    pub(crate) fn take_zeroed(&self, size: u64) -> Option<(u64, wgpu::Buffer)> {
        let mut s = self.state();
        let (id, buf) = s.free.get_mut(&size)?.pop_first()?;
        s.free_bytes -= size;
        s.reused += 1;
        s.to_clear.push(buf.clone());
        Some((id, buf))
    }

    /// The buffers handed out since the last call that still need clearing.
    pub(crate) fn take_clears(&self) -> Vec<wgpu::Buffer> {
        std::mem::take(&mut self.state().to_clear)
    }

    /// The buffers let go since the last call (the bind groups made before may hold them).
    pub(crate) fn take_dead(&self) -> Vec<wgpu::Buffer> {
        std::mem::take(&mut self.state().dead)
    }

    /// Requests served by reuse so far.
    pub(crate) fn reused(&self) -> u64 {
        self.state().reused
    }

    fn number(&self) -> u64 {
        let mut s = self.state();
        s.numbered += 1;
        s.numbered
    }

    fn release(&self, id: u64, buf: wgpu::Buffer) {
        let mut s = self.state();
        if s.open_encoders > 0 {
            s.released.push((id, buf));
        } else {
            s.keep(id, buf);
        }
    }

    fn encoder_closed(&self) {
        let mut s = self.state();
        s.open_encoders -= 1;
        if s.open_encoders == 0 {
            for (id, buf) in std::mem::take(&mut s.released) {
                s.keep(id, buf);
            }
        }
    }

    /// Drops every free buffer.
    pub(crate) fn clear(&self) {
        let mut s = self.state();
        let free: Vec<wgpu::Buffer> = s.free.drain().flat_map(|(_, v)| v.into_values()).collect();
        s.dead.extend(free);
        s.free_bytes = 0;
    }
}

impl PoolState {
    fn keep(&mut self, id: u64, buf: wgpu::Buffer) {
        let size = buf.size();
        if self.free_bytes + size > POOL_MAX_BYTES {
            self.dead.push(buf);
            return;
        }
        self.free_bytes += size;
        self.free.entry(size).or_default().insert(id, buf);
    }
}

/// Bind groups by kernel and bound buffers, for dispatches whose buffers all outlive the group in the
/// pool or the uniform cache.
#[derive(Debug, Default)]
pub(crate) struct BindCache {
    groups: HashMap<(Kernel, Vec<wgpu::Buffer>), wgpu::BindGroup>,
}

impl BindCache {
    pub(crate) fn get(&self, k: Kernel, buffers: &[&wgpu::Buffer]) -> Option<wgpu::BindGroup> {
        let key = (k, buffers.iter().map(|b| (*b).clone()).collect::<Vec<_>>());
        self.groups.get(&key).cloned()
    }

    pub(crate) fn insert(&mut self, k: Kernel, buffers: &[&wgpu::Buffer], group: wgpu::BindGroup) {
        if self.groups.len() >= BIND_GROUPS_MAX {
            self.groups.clear();
        }
        let key = (k, buffers.iter().map(|b| (*b).clone()).collect());
        self.groups.insert(key, group);
    }

    pub(crate) fn clear(&mut self) {
        self.groups.clear();
    }

    /// Drops the groups that bind any of `dead`.
    // a wgpu::Buffer hashes and compares by identity, which its interior state never changes
    #[allow(clippy::mutable_key_type)]
    pub(crate) fn forget(&mut self, dead: &[wgpu::Buffer]) {
        let dead: std::collections::HashSet<&wgpu::Buffer> = dead.iter().collect();
        self.groups
            .retain(|(_, bound), _| !bound.iter().any(|b| dead.contains(b)));
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;
    use crate::gpu::gemm::{record_gemm, Operand};
    use crate::gpu::{GpuContext, GpuMatrix};
    use ndarray::array;

    /// A context of its own: the counters are per context.
    fn context() -> Option<GpuContext> {
        crate::testing::gpu_context()
    }

    #[test]
    fn a_buffer_dropped_while_recording_is_reused_only_after_its_commands_and_as_zeros() {
        let Some(ctx) = context() else { return };
        let a = GpuMatrix::upload(&ctx, array![[1.0f32, 2.0], [3.0, 4.0]].view()).unwrap();
        let eye = GpuMatrix::upload(&ctx, array![[1.0f32, 0.0], [0.0, 1.0]].view()).unwrap();
        let out = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        let square = array![[7.0f32, 10.0], [15.0, 22.0]];
        fn op(m: &GpuMatrix) -> Operand<'_> {
            Operand::of(m, false)
        }
        let before = ctx.counters();
        let mut enc = ctx.encoder();
        // t = a a, out = t I; then t drops while the encoder is still open
        let t = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        record_gemm(&ctx, &mut enc, (2, 2, 2), 1.0, op(&a), op(&a), 0.0, op(&t)).unwrap();
        record_gemm(
            &ctx,
            &mut enc,
            (2, 2, 2),
            1.0,
            op(&t),
            op(&eye),
            0.0,
            op(&out),
        )
        .unwrap();
        drop(t);
        // so x cannot be t's buffer: x = a a + x must see zeros
        let x = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        assert_eq!((ctx.counters() - before).buffers_reused, 0);
        record_gemm(&ctx, &mut enc, (2, 2, 2), 1.0, op(&a), op(&a), 1.0, op(&x)).unwrap();
        ctx.submit("test", enc).unwrap();
        assert_eq!(out.download(&ctx).unwrap(), square);
        assert_eq!(x.download(&ctx).unwrap(), square);
        // with the commands queued, t's buffer and then x's are free: a new matrix reuses one, as zeros
        drop(x);
        let before = ctx.counters();
        let y = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        let used = ctx.counters() - before;
        assert_eq!((used.buffers_reused, used.buffers), (1, 0));
        assert_eq!(y.download(&ctx).unwrap(), array![[0.0f32, 0.0], [0.0, 0.0]]);
        // an upload never takes a free buffer; after release_cached_buffers nothing is reused
        drop(y);
        let before = ctx.counters();
        let u = GpuMatrix::upload(&ctx, square.view()).unwrap();
        assert_eq!((ctx.counters() - before).buffers_reused, 0);
        assert_eq!(u.download(&ctx).unwrap(), square);
        ctx.release_cached_buffers();
        let before = ctx.counters();
        let _z = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        assert_eq!((ctx.counters() - before).buffers_reused, 0);
    }

    #[test]
    fn a_repeated_step_gets_the_same_buffers_and_bind_groups() {
        let Some(ctx) = context() else { return };
        let a = GpuMatrix::upload(&ctx, array![[1.0f32, 2.0], [3.0, 4.0]].view()).unwrap();
        // three temporaries dropped in the order 0, 2, 1: a last-in-first-out pool would hand them out
        // rotated by one place each step (a cycle of three steps), so every dispatch would bind new buffers
        let step = || {
            let mut t: Vec<GpuMatrix> = (0..3)
                .map(|_| GpuMatrix::zeros(&ctx, 2, 2).unwrap())
                .collect();
            crate::gpu::gemm(&ctx, 1.0, &a, false, &a, false, 0.0, &mut t[0]).unwrap();
            let (head, tail) = t.split_at_mut(1);
            crate::gpu::gemm(&ctx, 1.0, &head[0], false, &a, false, 0.0, &mut tail[0]).unwrap();
            let (head, tail) = t.split_at_mut(2);
            crate::gpu::gemm(&ctx, 1.0, &head[1], false, &a, false, 0.0, &mut tail[0]).unwrap();
            let last = t[2].download(&ctx).unwrap();
            let (t1, t2) = (t.pop().unwrap(), t.pop().unwrap());
            drop(t);
            drop(t1);
            drop(t2);
            last
        };
        let want = array![[199.0f32, 290.0], [435.0, 634.0]]; // a^4
        assert_eq!(step(), want);
        let before = ctx.counters();
        for _ in 0..2 {
            assert_eq!(step(), want);
        }
        let used = ctx.counters() - before;
        assert_eq!((used.dispatches, used.buffers_reused), (6, 6));
        assert_eq!(used.bind_groups, 0, "the same buffers at the same places");
    }

    #[test]
    fn a_buffer_is_never_sized_past_one_binding() {
        if context().is_none() {
            return;
        }
        let ctx = GpuContext::with_options(&crate::gpu::GpuOptions {
            max_storage_binding: Some(1000),
            ..crate::gpu::GpuOptions::from_env()
        })
        .unwrap();
        // 1000 bytes: its class (1024) would not fit the binding, so it keeps its size; 600 takes its class
        assert_eq!(GpuMatrix::zeros(&ctx, 250, 1).unwrap().buf.size(), 1000);
        assert_eq!(GpuMatrix::zeros(&ctx, 150, 1).unwrap().buf.size(), 768);
    }

    #[test]
    fn a_repeated_dispatch_reuses_its_bind_group() {
        let Some(ctx) = context() else { return };
        let a = GpuMatrix::upload(&ctx, array![[1.0f32, 2.0], [3.0, 4.0]].view()).unwrap();
        let mut c = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        let before = ctx.counters();
        for _ in 0..3 {
            crate::gpu::gemm(&ctx, 1.0, &a, false, &a, false, 1.0, &mut c).unwrap();
        }
        let used = ctx.counters() - before;
        assert_eq!((used.dispatches, used.bind_groups), (3, 1));
        assert_eq!(
            c.download(&ctx).unwrap(),
            array![[21.0f32, 30.0], [45.0, 66.0]]
        );
        // another output: another group
        let mut d = GpuMatrix::zeros(&ctx, 2, 2).unwrap();
        let before = ctx.counters();
        crate::gpu::gemm(&ctx, 1.0, &a, false, &a, false, 0.0, &mut d).unwrap();
        assert_eq!((ctx.counters() - before).bind_groups, 1);
    }

    #[test]
    fn size_classes_round_up_by_at_most_an_eighth() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(4), 256);
        assert_eq!(size_class(257), 512);
        assert_eq!(size_class(4096), 4096);
        assert_eq!(size_class(4097), 4608);
        assert_eq!(size_class(1 << 20), 1 << 20);
        for bytes in [5000u64, 65_537, 1_000_003, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && (c - bytes) * 8 <= bytes, "{bytes} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
    }
}
