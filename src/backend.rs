//! Where an op runs: the CPU with a given parallelism, or a GPU.
//!
//! One way to say it: every op takes `impl Into<Par>` or `&Backend`, and a [`Backend`] converts into its
//! host [`Par`], so a program passes its one `Backend` (or a `Par`) everywhere. One default: both
//! `Par::default()` and `Backend::default()` are rayon over all cores.
//!
//! Parallelism is a value passed to each call, never a global setting, so two callers in one process can run
//! the same op sequentially and in parallel side by side. Reductions are chunked by the `Par` value alone,
//! which makes every result deterministic for a given `Par` (and the same across runs on one machine).

/// CPU parallelism of one call. The default is [`Par::rayon`], as for [`Backend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Par {
    /// One thread, no rayon.
    Seq,
    /// Split the work into this many chunks on rayon's global pool; `0` means one chunk per rayon thread.
    /// Without the `rayon` feature this runs the same chunks one after the other (same numbers).
    Rayon(usize),
}

impl Default for Par {
    fn default() -> Self {
        Par::rayon()
    }
}

/// A backend's host parallelism: what the CPU ops run with when given the backend.
///
/// ```
/// use recgoat_core::{Backend, Par};
/// let g = recgoat_core::graph::CsrGraph::<f32>::new(1, 1, vec![0, 1], vec![0], None).unwrap();
/// let x = ndarray::array![[2.0f32]];
/// let be = Backend::default();
/// assert_eq!(recgoat_core::graph::spmm(&g, x.view(), &be).unwrap(), x);
/// assert_eq!(Par::from(&be), Par::default());
/// ```
impl From<&Backend> for Par {
    fn from(b: &Backend) -> Par {
        b.par()
    }
}

impl Par {
    /// `Par::Rayon(0)`: as many chunks as rayon has threads.
    pub fn rayon() -> Self {
        Par::Rayon(0)
    }

    /// Number of chunks a parallel loop is split into (1 for `Seq`).
    pub fn chunks(self) -> usize {
        match self {
            Par::Seq => 1,
            Par::Rayon(0) => available_threads(),
            Par::Rayon(n) => n,
        }
    }

    /// Short name for benchmark ids and test labels: `cpu_seq` or `cpu_rayon`.
    pub fn name(self) -> &'static str {
        match self {
            Par::Seq => "cpu_seq",
            Par::Rayon(_) => "cpu_rayon",
        }
    }
}

#[cfg(feature = "rayon")]
fn available_threads() -> usize {
    rayon::current_num_threads().max(1)
}

#[cfg(not(feature = "rayon"))]
fn available_threads() -> usize {
    1
}

/// The device an op runs on.
///
/// `Cpu` runs the CPU kernels with the given parallelism. `Gpu` runs the model's heavy ops on a GPU through
/// wgpu (see [`GpuBackend`]); without the `gpu` cargo feature it cannot be constructed ([`Backend::gpu`]
/// returns [`crate::Error::GpuUnavailable`]). The enum is `#[non_exhaustive]`.
///
/// Functions outside the model that take a `&Backend`: [`crate::transport::sinkhorn`],
/// [`crate::transport::sinkhorn_batch`] and [`crate::transport::sinkhorn_divergence`] run their GPU twins
/// (the functions of [`crate::gpu`]) on `Gpu` for f32 problems and refuse other float types there
/// ([`crate::Error::Param`]); the OAT map ([`crate::transport::AdaptiveTransport`]) solves its plan through
/// [`crate::transport::sinkhorn`] with the backend it is given, and runs the rest on the CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// The CPU path (SIMD kernels, parallel as the `Par` says).
    Cpu(Par),
    /// The GPU path of the model (f32 models only), with host-side work parallel as its `host` says.
    Gpu(GpuBackend),
}

/// A GPU for [`Backend::Gpu`]: a shared [`crate::gpu::GpuContext`] and the parallelism of the host-side
/// work between device calls.
#[derive(Debug, Clone)]
pub struct GpuBackend {
    ctx: std::sync::Arc<crate::gpu::GpuContext>,
    host: Par,
}

impl GpuBackend {
    /// A backend on `ctx`, with host-side work parallel as `host` says.
    pub fn new(ctx: std::sync::Arc<crate::gpu::GpuContext>, host: Par) -> Self {
        GpuBackend { ctx, host }
    }
    /// The device context.
    pub fn context(&self) -> &std::sync::Arc<crate::gpu::GpuContext> {
        &self.ctx
    }
    /// The parallelism of the host-side work.
    pub fn host(&self) -> Par {
        self.host
    }
}

impl PartialEq for GpuBackend {
    /// The same context (not merely the same adapter) and the same host parallelism.
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.ctx, &other.ctx) && self.host == other.host
    }
}

impl Eq for GpuBackend {}

impl Default for Backend {
    fn default() -> Self {
        Backend::Cpu(Par::rayon())
    }
}

impl Backend {
    /// The GPU the environment chooses ([`crate::gpu::GpuContext::new`]), with parallel host-side work.
    ///
    /// # Errors
    /// [`crate::Error::GpuUnavailable`] without the `gpu` feature, or when no adapter can be opened.
    pub fn gpu() -> crate::Result<Backend> {
        let ctx = crate::gpu::GpuContext::new()?;
        Ok(Backend::Gpu(GpuBackend::new(
            std::sync::Arc::new(ctx),
            Par::rayon(),
        )))
    }

    /// Name used in test labels and benchmark ids: `cpu_seq`, `cpu_rayon` or `gpu`.
    pub fn name(&self) -> String {
        match self {
            Backend::Cpu(p) => p.name().to_string(),
            Backend::Gpu(_) => "gpu".to_string(),
        }
    }

    /// The CPU parallelism of this backend (for `Gpu`, that of its host-side work).
    pub fn par(&self) -> Par {
        match self {
            Backend::Cpu(p) => *p,
            Backend::Gpu(g) => g.host,
        }
    }

    /// Every CPU backend, for parity tests: sequential and parallel.
    pub fn all_available() -> Vec<Backend> {
        vec![Backend::Cpu(Par::Seq), Backend::Cpu(Par::Rayon(3))]
    }
}

/// Run `f(chunk_index, range)` over `n` items split into contiguous chunks by `par`, collecting the results
/// in chunk order (deterministic for a given `par`).
pub(crate) fn map_chunks<T, G>(par: Par, n: usize, f: G) -> Vec<T>
where
    T: Send,
    G: Fn(usize, std::ops::Range<usize>) -> T + Sync + Send,
{
    let bounds = chunk_bounds(par, n);
    match par {
        Par::Seq => bounds
            .into_iter()
            .enumerate()
            .map(|(c, r)| f(c, r))
            .collect(),
        Par::Rayon(_) => run_parallel(bounds, &f),
    }
}

#[cfg(feature = "rayon")]
fn run_parallel<T: Send, G>(bounds: Vec<std::ops::Range<usize>>, f: &G) -> Vec<T>
where
    G: Fn(usize, std::ops::Range<usize>) -> T + Sync + Send,
{
    use rayon::prelude::*;
    bounds
        .into_par_iter()
        .enumerate()
        .map(|(c, r)| f(c, r))
        .collect()
}

#[cfg(not(feature = "rayon"))]
fn run_parallel<T: Send, G>(bounds: Vec<std::ops::Range<usize>>, f: &G) -> Vec<T>
where
    G: Fn(usize, std::ops::Range<usize>) -> T + Sync + Send,
{
    bounds
        .into_iter()
        .enumerate()
        .map(|(c, r)| f(c, r))
        .collect()
}

/// The contiguous row ranges `par` splits `n` rows into (the same as [`map_chunks`] uses).
pub(crate) fn chunk_bounds(par: Par, n: usize) -> Vec<std::ops::Range<usize>> {
    let chunks = par.chunks().clamp(1, n.max(1));
    (0..chunks)
        .map(|c| (c * n / chunks)..((c + 1) * n / chunks))
        .collect()
}

/// `par.chunks()` contiguous row ranges of about equal work, for rows whose cumulative work before row `r`
/// is `prefix(r)` (non-decreasing in `r`, defined for `0..=n`), e.g. a CSR `indptr` plus one unit per row.
/// The uneven degrees of real graphs make equal row counts (as [`chunk_bounds`] gives) leave a thread idle.
pub(crate) fn chunk_bounds_by_work(
    par: Par,
    prefix: impl Fn(usize) -> usize,
    n: usize,
) -> Vec<std::ops::Range<usize>> {
    let chunks = par.chunks().clamp(1, n.max(1));
    let total = prefix(n);
    // the first row whose cumulative work reaches each chunk's share
    let cut = |c: usize| -> usize {
        if c == chunks {
            return n;
        }
        let target = c * total / chunks;
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if prefix(mid) < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    };
    let cuts: Vec<usize> = (0..=chunks).map(cut).collect();
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

/// Runs `f` on every item, in parallel when `par` says so.
pub(crate) fn run_each<T: Send, G>(par: Par, items: Vec<T>, f: G)
where
    G: Fn(T) + Sync + Send,
{
    match par {
        Par::Seq => items.into_iter().for_each(f),
        Par::Rayon(_) => {
            map_each_parallel(items, &f);
        }
    }
}

/// Runs `f` on every item, in parallel when `par` says so, the workers claiming items in their order (each
/// takes the next unclaimed one): at any moment the workers are on neighbouring items, so what neighbouring
/// items read in common (the rows a product gathers) is in cache once for all of them, where a split into
/// one contiguous share per worker has each worker stream its own distant part.
pub(crate) fn run_in_order<T: Send, G>(par: Par, items: Vec<T>, f: G)
where
    G: Fn(T) + Sync + Send,
{
    match par {
        Par::Seq => items.into_iter().for_each(f),
        Par::Rayon(_) => claim_in_order(par.chunks(), items, &f),
    }
}

#[cfg(feature = "rayon")]
fn claim_in_order<T: Send, G: Fn(T) + Sync + Send>(workers: usize, items: Vec<T>, f: &G) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let slots: Vec<Mutex<Option<T>>> = items.into_iter().map(|t| Mutex::new(Some(t))).collect();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(slot) = slots.get(i) else { break };
        let item = slot.lock().map(|mut s| s.take()).unwrap_or(None);
        if let Some(item) = item {
            f(item);
        }
    };
    rayon::scope(|s| {
        for _ in 1..workers.min(slots.len()).max(1) {
            s.spawn(|_| work());
        }
        work();
    });
}

#[cfg(not(feature = "rayon"))]
fn claim_in_order<T: Send, G: Fn(T) + Sync + Send>(_: usize, items: Vec<T>, f: &G) {
    items.into_iter().for_each(f)
}

/// Splits `data` into consecutive mutable pieces of the given lengths.
pub(crate) fn split_lengths<T>(
    mut data: &mut [T],
    lengths: impl Iterator<Item = usize>,
) -> Vec<&mut [T]> {
    let mut out = Vec::new();
    for len in lengths {
        let (head, tail) = std::mem::take(&mut data).split_at_mut(len);
        out.push(head);
        data = tail;
    }
    out
}

/// Splits `data` (rows of `row_len` values) into the row chunks of [`chunk_bounds`] and runs
/// `f(row_range, chunk)` on each, in parallel when `par` says so.
pub(crate) fn for_row_chunks<T: Send, G>(par: Par, data: &mut [T], row_len: usize, f: G)
where
    G: Fn(std::ops::Range<usize>, &mut [T]) + Sync + Send,
{
    map_row_chunks(par, data, row_len, f);
}

/// [`for_row_chunks`] collecting each chunk's result, in chunk order.
pub(crate) fn map_row_chunks<T: Send, R: Send, G>(
    par: Par,
    data: &mut [T],
    row_len: usize,
    f: G,
) -> Vec<R>
where
    G: Fn(std::ops::Range<usize>, &mut [T]) -> R + Sync + Send,
{
    let n = data.len().checked_div(row_len).unwrap_or(0);
    let bounds = chunk_bounds(par, n);
    let parts = split_lengths(data, bounds.iter().map(|r| r.len() * row_len));
    let items: Vec<_> = bounds.into_iter().zip(parts).collect();
    match par {
        Par::Seq => items.into_iter().map(|(r, d)| f(r, d)).collect(),
        Par::Rayon(_) => map_each_parallel(items, &|(r, d)| f(r, d)),
    }
}

#[cfg(feature = "rayon")]
fn map_each_parallel<T: Send, R: Send, G: Fn(T) -> R + Sync + Send>(
    items: Vec<T>,
    f: &G,
) -> Vec<R> {
    use rayon::prelude::*;
    items.into_par_iter().map(f).collect()
}

#[cfg(not(feature = "rayon"))]
fn map_each_parallel<T: Send, R: Send, G: Fn(T) -> R + Sync + Send>(
    items: Vec<T>,
    f: &G,
) -> Vec<R> {
    items.into_iter().map(f).collect()
}

/// Apply `f` to each item of `items` in parallel when `par` says so (order of results kept).
pub(crate) fn map_items<I: Sync, T: Send, G>(par: Par, items: &[I], f: G) -> Vec<T>
where
    G: Fn(&I) -> T + Sync + Send,
{
    map_chunks(par, items.len(), |_, r| {
        items[r].iter().map(&f).collect::<Vec<T>>()
    })
    .into_iter()
    .flatten()
    .collect()
}

/// Runs `f` on a worker of rayon's global pool when `par` is parallel and the calling thread is not one
/// (it waits for the result), else on the calling thread. A parallel op started from outside the pool hands
/// all of its work to the workers and wakes them; started on a worker it keeps a share and lets the others
/// steal the rest. For a sequence of many short parallel ops (a training epoch's steps) that saves a hand-over
/// per op.
pub(crate) fn on_worker<R: Send>(par: Par, f: impl FnOnce() -> R + Send) -> R {
    #[cfg(feature = "rayon")]
    if matches!(par, Par::Rayon(_)) && rayon::current_thread_index().is_none() {
        return rayon::scope(|_| f());
    }
    let _ = par;
    f()
}

/// The most memory (bytes) a thread keeps in its spare buffer between calls of [`with_spare`].
pub(crate) const SPARE_KEPT_BYTES: usize = 64 << 20;

/// Runs `f` on a buffer of `len` values (their contents unspecified: `f` must write before it reads), this
/// thread's spare buffer of `F` when it is large enough. A buffer of up to [`SPARE_KEPT_BYTES`] is kept for
/// the next call on this thread: the pages of a large array are then touched once rather than faulted in,
/// zeroed and returned to the system at every call. Reentrant: a call made while the buffer is taken (by a
/// job this thread runs while it waits) gets a buffer of its own.
pub(crate) fn with_spare<F: crate::simd::Real, R>(len: usize, f: impl FnOnce(&mut [F]) -> R) -> R {
    let mut buf = F::spare().with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf = vec![F::zero(); len];
    }
    let out = f(&mut buf[..len]);
    if buf.len() * std::mem::size_of::<F>() <= SPARE_KEPT_BYTES {
        F::spare().with(|s| {
            let mut kept = s.borrow_mut();
            if kept.len() < buf.len() {
                *kept = buf;
            }
        });
    }
    out
}

/// A row-major copy of `a`, its rows copied in `par`'s chunks (for the large inputs an op keeps).
pub(crate) fn par_owned<F: crate::simd::Real>(
    par: Par,
    a: ndarray::ArrayView2<'_, F>,
) -> ndarray::Array2<F> {
    let w = a.ncols();
    let mut out = ndarray::Array2::<F>::zeros(a.dim());
    if w == 0 {
        return out;
    }
    for_row_chunks(par, out.as_slice_mut().expect("fresh"), w, |rows, chunk| {
        for (dst, src) in chunk
            .chunks_exact_mut(w)
            .zip(a.slice(ndarray::s![rows, ..]).rows())
        {
            match src.as_slice() {
                Some(s) => dst.copy_from_slice(s),
                None => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v),
            }
        }
    });
    out
}

/// `a · b` with the rows of `a` split into the chunks of `par` (one GEMM per chunk, in parallel); each entry
/// is summed as in one `a.dot(b)`, to the last bit through `matrixmultiply` (with the `linalg` feature
/// ndarray may hand the products to BLAS, which rounds its own way). With `a` a transposed view (`x.t()`),
/// `x^T b` split by the columns of `x`.
pub(crate) fn par_dot<F: crate::simd::Real>(
    par: Par,
    a: &ndarray::ArrayView2<'_, F>,
    b: &ndarray::ArrayView2<'_, F>,
) -> ndarray::Array2<F> {
    let mut out = ndarray::Array2::<F>::zeros((a.nrows(), b.ncols()));
    let w = b.ncols();
    for_row_chunks(par, out.as_slice_mut().expect("fresh"), w, |rows, chunk| {
        let mut view = ndarray::ArrayViewMut2::from_shape((rows.len(), w), chunk)
            .expect("chunk of whole rows");
        ndarray::linalg::general_mat_mul(
            F::one(),
            &a.slice(ndarray::s![rows, ..]),
            b,
            F::zero(),
            &mut view,
        );
    });
    out
}

/// `a^T · b` (a reduction over the shared rows) as per-chunk partial products summed in chunk order.
pub(crate) fn par_t_dot<F: crate::simd::Real>(
    par: Par,
    a: &ndarray::ArrayView2<'_, F>,
    b: &ndarray::ArrayView2<'_, F>,
) -> ndarray::Array2<F> {
    let parts = map_chunks(par, a.nrows(), |_, rows| {
        a.slice(ndarray::s![rows.clone(), ..])
            .t()
            .dot(&b.slice(ndarray::s![rows, ..]))
    });
    let mut it = parts.into_iter();
    let mut acc = it
        .next()
        .unwrap_or_else(|| ndarray::Array2::zeros((a.ncols(), b.ncols())));
    for p in it {
        acc += &p;
    }
    acc
}

/// [`crate::error::check_finite_array`] split over `par`'s chunks when the view is contiguous: for the large inputs of
/// memory-bound ops (SpMM, propagation), where a one-thread scan of the input would be a serial phase as long
/// as a sizeable part of the parallel op.
pub(crate) fn check_finite_array_par<
    F: crate::simd::Real + std::fmt::Display,
    D: ndarray::Dimension,
>(
    op: &'static str,
    what: &str,
    x: &ndarray::ArrayView<'_, F, D>,
    par: Par,
) -> crate::Result<()> {
    match (par, x.as_slice()) {
        (Par::Rayon(_), Some(s)) => {
            let all = map_chunks(par, s.len(), |_, r| crate::simd::all_finite(&s[r]));
            if all.into_iter().all(|ok| ok) {
                Ok(())
            } else {
                crate::error::check_finite(op, what, s.iter().copied())
            }
        }
        _ => crate::error::check_finite_array(op, what, x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_runs_every_item_once_whatever_the_workers() {
        use std::sync::Mutex;
        for par in [Par::Seq, Par::Rayon(1), Par::Rayon(2), Par::Rayon(7)] {
            for n in [0usize, 1, 3, 100] {
                let seen = Mutex::new(Vec::new());
                run_in_order(par, (0..n).collect(), |i| seen.lock().unwrap().push(i));
                let mut seen = seen.into_inner().unwrap();
                if par == Par::Seq {
                    assert_eq!(
                        seen,
                        (0..n).collect::<Vec<_>>(),
                        "sequential keeps the order"
                    );
                }
                seen.sort_unstable();
                assert_eq!(seen, (0..n).collect::<Vec<_>>(), "{par:?}, {n} items");
            }
        }
    }

    #[test]
    fn work_bounds_cover_rows_and_balance_work() {
        // 6 light rows then 2 heavy ones: equal work, not equal rows
        let ip = [0usize, 1, 2, 3, 4, 5, 6, 26, 46];
        let prefix = |r: usize| ip[r] + r;
        for par in [Par::Seq, Par::Rayon(2), Par::Rayon(3), Par::Rayon(20)] {
            let b = chunk_bounds_by_work(par, prefix, 8);
            assert_eq!(b.first().unwrap().start, 0);
            assert_eq!(b.last().unwrap().end, 8);
            assert!(b.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert_eq!(
            chunk_bounds_by_work(Par::Rayon(2), prefix, 8),
            vec![0..7, 7..8]
        );
        assert_eq!(chunk_bounds_by_work(Par::Rayon(2), |_| 0, 0), vec![0..0]);
    }

    #[test]
    fn chunks_cover_every_item_once_in_order() {
        for par in [Par::Seq, Par::Rayon(1), Par::Rayon(3), Par::Rayon(7)] {
            let got: Vec<usize> = map_chunks(par, 10, |_, r| r.collect::<Vec<_>>())
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(got, (0..10).collect::<Vec<_>>(), "{par:?}");
        }
        assert_eq!(
            map_items(Par::Rayon(4), &[1, 2, 3], |x| x * 10),
            vec![10, 20, 30]
        );
    }

    #[test]
    fn chunked_gemms_equal_plain_products() {
        let mut r = crate::testing::rng(1);
        let a: ndarray::Array2<f64> = crate::testing::randn(&mut r, (23, 5));
        let b: ndarray::Array2<f64> = crate::testing::randn(&mut r, (5, 4));
        let c: ndarray::Array2<f64> = crate::testing::randn(&mut r, (23, 4));
        for par in [Par::Seq, Par::Rayon(3), Par::Rayon(40)] {
            let tol = crate::testing::Tolerance::F64_EXACT;
            tol.assert_close(
                "a b",
                &par_dot(par, &a.view(), &b.view()).view(),
                &a.dot(&b).view(),
            );
            tol.assert_close(
                "a^T c",
                &par_t_dot(par, &a.view(), &c.view()).view(),
                &a.t().dot(&c).view(),
            );
        }
    }

    #[test]
    fn row_and_column_chunked_gemms_are_the_plain_products_to_the_last_bit() {
        // through `matrixmultiply` each entry is summed alike, whatever the rows a call gets; with the
        // `linalg` feature ndarray hands products past a size to BLAS, whose blocking may round otherwise
        let same = |got: &ndarray::Array2<f32>, want: &ndarray::Array2<f32>, what: &str| {
            assert_eq!(got.dim(), want.dim(), "{what}");
            for (a, b) in got.iter().zip(want) {
                match cfg!(feature = "linalg") {
                    false => assert_eq!(a.to_bits(), b.to_bits(), "{what}: {a} vs {b}"),
                    true => assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "{what}: {a} vs {b}"
                    ),
                }
            }
        };
        // shapes of the modality projections (rows x feature width, by the embedding width), and odd ones
        let mut r = crate::testing::rng(2);
        for (n, f, d) in [(384, 512, 64), (257, 129, 17), (3, 2, 1), (1, 300, 5)] {
            let x: ndarray::Array2<f32> = crate::testing::randn(&mut r, (n, f));
            let w: ndarray::Array2<f32> = crate::testing::randn(&mut r, (f, d));
            let g: ndarray::Array2<f32> = crate::testing::randn(&mut r, (n, d));
            let (xw, xtg) = (x.dot(&w), x.t().dot(&g));
            for par in [Par::Seq, Par::Rayon(2), Par::Rayon(7)] {
                let what = format!("{n} x {f} x {d}, {par:?}");
                same(
                    &par_dot(par, &x.view(), &w.view()),
                    &xw,
                    &format!("x w, {what}"),
                );
                // `x^T` split by rows: `x`'s columns, each entry summed over every shared row
                let cols = par_dot(par, &x.t(), &g.view());
                same(&cols, &xtg, &format!("x^T g, {what}"));
            }
        }
    }
}
