//! Hot inner kernels: a fused `exp(alpha + beta_j - c_j * s)` row kernel and friends.
//!
//! `f32` runs an AVX2+FMA kernel when the CPU has it (runtime detection, checked once by std) and a scalar
//! fallback otherwise; `f64` runs the scalar code (its role is sharp checks, not speed). Every SIMD variant
//! is tested against the scalar fallback below.

use num_traits::{Float, FromPrimitive, NumAssign};
use std::fmt::{Debug, Display};
use std::iter::Sum;

/// A slice of [`Real`] values as its concrete type ([`Real::typed_mut`]).
#[derive(Debug)]
pub enum TypedMut<'a> {
    /// `f32` values.
    F32(&'a mut [f32]),
    /// `f64` values.
    F64(&'a mut [f64]),
}

/// Floating-point scalar the CPU kernels are generic over (`f32` and `f64`).
pub trait Real:
    Float
    + FromPrimitive
    + NumAssign
    + Sum
    + Debug
    + Display
    + std::fmt::LowerExp
    + Default
    + Send
    + Sync
    + ndarray::ScalarOperand
    + ndarray::LinalgScalar
    + 'static
{
    /// Type name, for labels.
    const NAME: &'static str;

    /// The slice as its concrete type, for libraries that take `f32` or `f64` buffers (MPI's reductions).
    fn typed_mut(xs: &mut [Self]) -> TypedMut<'_>;

    /// This thread's spare buffer of this type, which an op that needs a large scratch array takes and
    /// gives back, so that repeated calls do not fault in fresh pages each time.
    #[doc(hidden)]
    fn spare() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<Self>>>;

    /// Writes `out[j] = exp(alpha + beta[j] - c[j] * s)` and returns the sum of `out`.
    ///
    /// The slices must have the same length (checked by a debug assertion; callers own the invariant).
    fn exp_affine_sum(alpha: Self, beta: &[Self], c: &[Self], s: Self, out: &mut [Self]) -> Self {
        exp_affine_sum_scalar(alpha, beta, c, s, out)
    }

    /// `y += a * x` (slices of equal length).
    fn axpy(a: Self, x: &[Self], y: &mut [Self]) {
        axpy(a, x, y)
    }

    /// The largest element (`-inf` for an empty slice). For NaN-free input (callers validate); a NaN's
    /// effect on the result is unspecified.
    fn max_of(xs: &[Self]) -> Self {
        max_of(xs)
    }

    /// Replaces each `x[j]` by `exp(x[j] - shift)` and returns their sum.
    fn exp_shift_sum_in_place(shift: Self, xs: &mut [Self]) -> Self {
        exp_shift_sum_in_place_scalar(shift, xs)
    }

    /// Converts from `f64` (constants in generic code).
    fn c(x: f64) -> Self {
        Self::from_f64(x).expect("f64 converts to every Real")
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";

    fn typed_mut(xs: &mut [f64]) -> TypedMut<'_> {
        TypedMut::F64(xs)
    }

    fn spare() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<f64>>> {
        thread_local!(static SPARE: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) });
        &SPARE
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";

    fn typed_mut(xs: &mut [f32]) -> TypedMut<'_> {
        TypedMut::F32(xs)
    }

    fn spare() -> &'static std::thread::LocalKey<std::cell::RefCell<Vec<f32>>> {
        thread_local!(static SPARE: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) });
        &SPARE
    }

    fn exp_affine_sum(alpha: f32, beta: &[f32], c: &[f32], s: f32, out: &mut [f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: the CPU supports AVX2 and FMA (checked above); slice lengths are checked inside.
                return unsafe { x86::exp_affine_sum_avx2(alpha, beta, c, s, out) };
            }
        }
        exp_affine_sum_scalar(alpha, beta, c, s, out)
    }

    fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above); lengths are checked inside.
                return unsafe { x86::axpy_avx2(a, x, y) };
            }
        }
        axpy(a, x, y)
    }

    fn max_of(xs: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            if has_avx2_fma() {
                // SAFETY: AVX2 is present (checked above); the kernel reads within the slice.
                return unsafe { x86::max_of_avx2(xs) };
            }
        }
        max_of(xs)
    }

    fn exp_shift_sum_in_place(shift: f32, xs: &mut [f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        {
            #[cfg(recgoat_avx512)]
            if has_avx512f() {
                // SAFETY: AVX-512F is present (checked above); the kernel stays within the slice (masked
                // loads and stores for the tail).
                return unsafe { x86::exp_shift_sum_in_place_avx512(shift, xs) };
            }
            if has_avx2_fma() {
                // SAFETY: AVX2 and FMA are present (checked above); the kernel stays within the slice.
                return unsafe { x86::exp_shift_sum_in_place_avx2(shift, xs) };
            }
        }
        exp_shift_sum_in_place_scalar(shift, xs)
    }
}

/// `a . b` over the shorter of the two, in 16 independent lanes that the compiler vectorises (with AVX2
/// where the CPU has it), then summed.
pub(crate) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA are present (checked above); the body is safe code.
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_lanes(a, b)
}

#[inline(always)]
fn dot_f32_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = (ca.remainder().iter().zip(cb.remainder()))
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..16 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Whether the AVX2+FMA kernels are used on this CPU.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AVX-512F (its kernels are built from Rust 1.89 on, `cfg(recgoat_avx512)`).
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether every value is finite, in a form that vectorises: `v * 0` is 0 for finite `v` and NaN for
/// NaN/Inf, so one sum over 16 lanes decides.
pub fn all_finite<F: Float>(xs: &[F]) -> bool {
    let mut acc = [F::zero(); 16];
    let chunks = xs.chunks_exact(16);
    let tail = chunks.remainder();
    for ch in chunks {
        for (a, &v) in acc.iter_mut().zip(ch) {
            *a = *a + v * F::zero();
        }
    }
    let mut s = acc.iter().fold(F::zero(), |s, &a| s + a);
    for &v in tail {
        s = s + v * F::zero();
    }
    s == F::zero()
}

/// Defines `$name`, which runs the `#[inline(always)]` kernel `$kernel` compiled for AVX2+FMA when the CPU
/// has them (through a `#[target_feature]` twin `$avx` that the kernel inlines into), else as compiled for
/// the baseline. The kernel's plain loops then vectorise 8-wide on AVX2 machines.
macro_rules! avx2_dispatch {
    ($name:ident, $avx:ident, $kernel:ident, <$T:ident>, ($($arg:ident : $ty:ty),* $(,)?)) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx<$T: crate::simd::Real>($($arg: $ty),*) {
            $kernel($($arg),*)
        }

        #[allow(clippy::too_many_arguments)]
        fn $name<$T: crate::simd::Real>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                if crate::simd::has_avx2_fma() {
                    // SAFETY: the CPU has AVX2 and FMA (checked just above).
                    return unsafe { $avx($($arg),*) };
                }
            }
            $kernel($($arg),*)
        }
    };
}
pub(crate) use avx2_dispatch;

/// Asks the CPU to bring the `bytes` from the start of `xs` into L1 (a hint; nothing happens off x86_64).
/// For kernels whose next random accesses are known ahead (CSR neighbour lists). Lines past the end of
/// `xs` may be requested too: a prefetch never faults, and the addresses are formed with `wrapping_add`.
#[inline(always)]
pub(crate) fn prefetch<T>(xs: &[T], bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let p = xs.as_ptr() as *const i8;
        for line in 0..bytes.div_ceil(64) {
            // SAFETY: prefetching is a hint that never faults, whatever the address.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    p.wrapping_add(line * 64),
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (xs, bytes);
}

/// `x > 0` and finite (false for NaN): the domain check of every positive parameter.
#[inline]
pub fn positive_finite<F: Float>(x: F) -> bool {
    x > F::zero() && x.is_finite()
}

/// `x > 0`, a normal number (not subnormal) whose reciprocal is finite: a scale the ops divide by (a
/// temperature, an eps) without overflowing to infinity and then NaN.
pub fn positive_normal<F: Float>(x: F) -> bool {
    x > F::zero() && x.is_normal() && x.recip().is_finite()
}

/// Scalar reference of [`Real::exp_affine_sum`], also the fallback.
pub fn exp_affine_sum_scalar<F: Float + Sum>(
    alpha: F,
    beta: &[F],
    c: &[F],
    s: F,
    out: &mut [F],
) -> F {
    debug_assert!(beta.len() == out.len() && c.len() == out.len());
    let mut acc = F::zero();
    for ((o, &b), &cj) in out.iter_mut().zip(beta).zip(c) {
        let e = (alpha + b - cj * s).exp();
        *o = e;
        acc = acc + e;
    }
    acc
}

/// `max_j (alpha + beta[j] - c[j] * s)`, the stabiliser of an exact log-sum-exp.
pub fn affine_max<F: Float>(alpha: F, beta: &[F], c: &[F], s: F) -> F {
    beta.iter()
        .zip(c)
        .fold(F::neg_infinity(), |m, (&b, &cj)| m.max(alpha + b - cj * s))
}

/// `log sum_j exp(alpha + beta[j] - c[j] * s)`, computed with the maximum subtracted (never overflows).
pub fn affine_logsumexp<F: Real>(alpha: F, beta: &[F], c: &[F], s: F, scratch: &mut [F]) -> F {
    let m = affine_max(alpha, beta, c, s);
    if !m.is_finite() {
        return m;
    }
    let sum = F::exp_affine_sum(alpha - m, beta, c, s, scratch);
    m + sum.ln()
}

/// Scalar fallback of [`Real::max_of`].
pub fn max_of<F: Float>(xs: &[F]) -> F {
    xs.iter().fold(F::neg_infinity(), |m, &v| m.max(v))
}

/// Scalar fallback of [`Real::exp_shift_sum_in_place`].
pub fn exp_shift_sum_in_place_scalar<F: Float>(shift: F, xs: &mut [F]) -> F {
    let mut sum = F::zero();
    for x in xs.iter_mut() {
        *x = (*x - shift).exp();
        sum = sum + *x;
    }
    sum
}

/// `y += a * x`.
#[inline]
pub fn axpy<F: Float>(a: F, x: &[F], y: &mut [F]) {
    debug_assert_eq!(x.len(), y.len());
    for (yi, &xi) in y.iter_mut().zip(x) {
        *yi = *yi + a * xi;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// The constants of [`exp8`] and `exp16`, which must run the same operations on the same values: the
    /// clamp bounds (below `EXP_LO` the result is 0), `-ln 2` split in two for the range reduction, and the
    /// Cephes polynomial's coefficients, highest degree first.
    const EXP_HI: f32 = 88.0;
    const EXP_LO: f32 = -87.336_55;
    const EXP_NEG_LN2: [f32; 2] = [-0.693_359_4, 2.121_944_4e-4];
    const EXP_POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];

    /// exp of 8 lanes: Cody-Waite range reduction and the Cephes degree-6 polynomial (about 1 ulp);
    /// inputs below -87.3 give exactly 0, NaN propagates.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let hi = _mm256_set1_ps(EXP_HI);
        let lo = _mm256_set1_ps(EXP_LO);
        // min/max with the constant first so that a NaN in x is returned (not replaced by the bound).
        let x = _mm256_min_ps(hi, x);
        let underflow = _mm256_cmp_ps::<_CMP_LT_OQ>(x, lo);
        let x = _mm256_max_ps(lo, x);
        let fx = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fmadd_ps(fx, _mm256_set1_ps(EXP_NEG_LN2[0]), x);
        let r = _mm256_fmadd_ps(fx, _mm256_set1_ps(EXP_NEG_LN2[1]), r);
        let mut p = _mm256_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        p = _mm256_fmadd_ps(p, r2, r);
        p = _mm256_add_ps(p, _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(fx);
        let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )));
        _mm256_andnot_ps(underflow, _mm256_mul_ps(p, scale))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// AVX2+FMA `y += a * x`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn axpy_avx2(a: f32, x: &[f32], y: &mut [f32]) {
        let n = y.len();
        assert_eq!(x.len(), n, "axpy: slice lengths differ");
        let va = _mm256_set1_ps(a);
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let mut j = 0;
        while j + 8 <= n {
            _mm256_storeu_ps(
                yp.add(j),
                _mm256_fmadd_ps(va, _mm256_loadu_ps(xp.add(j)), _mm256_loadu_ps(yp.add(j))),
            );
            j += 8;
        }
        while j < n {
            *yp.add(j) = a.mul_add(*xp.add(j), *yp.add(j));
            j += 1;
        }
    }

    /// AVX2 `max_of`: four independent lane maxima (no dependency chain through one register).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn max_of_avx2(xs: &[f32]) -> f32 {
        let n = xs.len();
        let p = xs.as_ptr();
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        let (mut m0, mut m1, mut m2, mut m3) = (ninf, ninf, ninf, ninf);
        let mut j = 0;
        while j + 32 <= n {
            m0 = _mm256_max_ps(m0, _mm256_loadu_ps(p.add(j)));
            m1 = _mm256_max_ps(m1, _mm256_loadu_ps(p.add(j + 8)));
            m2 = _mm256_max_ps(m2, _mm256_loadu_ps(p.add(j + 16)));
            m3 = _mm256_max_ps(m3, _mm256_loadu_ps(p.add(j + 24)));
            j += 32;
        }
        while j + 8 <= n {
            m0 = _mm256_max_ps(m0, _mm256_loadu_ps(p.add(j)));
            j += 8;
        }
        let m = _mm256_max_ps(_mm256_max_ps(m0, m1), _mm256_max_ps(m2, m3));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), m);
        lanes
            .iter()
            .chain(&xs[j..])
            .fold(f32::NEG_INFINITY, |a, &b| a.max(b))
    }

    /// AVX2 `exp_shift_sum_in_place`; the tail goes through a padded lane block (the same exp everywhere).
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_shift_sum_in_place_avx2(shift: f32, xs: &mut [f32]) -> f32 {
        let n = xs.len();
        let vs = _mm256_set1_ps(shift);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let p = xs.as_mut_ptr();
        let mut j = 0;
        while j + 16 <= n {
            let e0 = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j)), vs));
            let e1 = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(j + 8)), vs));
            _mm256_storeu_ps(p.add(j), e0);
            _mm256_storeu_ps(p.add(j + 8), e1);
            acc0 = _mm256_add_ps(acc0, e0);
            acc1 = _mm256_add_ps(acc1, e1);
            j += 16;
        }
        while j < n {
            let k = (n - j).min(8);
            let mut xx = [0f32; 8];
            xx[..k].copy_from_slice(&xs[j..j + k]);
            let mut ee = [0f32; 8];
            _mm256_storeu_ps(
                ee.as_mut_ptr(),
                exp8(_mm256_sub_ps(_mm256_loadu_ps(xx.as_ptr()), vs)),
            );
            xs[j..j + k].copy_from_slice(&ee[..k]);
            let t: f32 = ee[..k].iter().sum();
            acc1 = _mm256_add_ps(acc1, _mm256_setr_ps(t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
            j += k;
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }

    /// exp of 16 lanes, the same operations on the same constants as [`exp8`] (so the same value in every
    /// lane).
    #[cfg(recgoat_avx512)]
    #[clippy::msrv = "1.89"]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn exp16(x: __m512) -> __m512 {
        let hi = _mm512_set1_ps(EXP_HI);
        let lo = _mm512_set1_ps(EXP_LO);
        let x = _mm512_min_ps(hi, x);
        let underflow = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, lo);
        let x = _mm512_max_ps(lo, x);
        let fx = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fmadd_ps(fx, _mm512_set1_ps(EXP_NEG_LN2[0]), x);
        let r = _mm512_fmadd_ps(fx, _mm512_set1_ps(EXP_NEG_LN2[1]), r);
        let mut p = _mm512_set1_ps(EXP_POLY[0]);
        for &c in &EXP_POLY[1..] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        p = _mm512_fmadd_ps(p, r2, r);
        p = _mm512_add_ps(p, _mm512_set1_ps(1.0));
        let n = _mm512_cvtps_epi32(fx);
        let scale = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
            n,
            _mm512_set1_epi32(127),
        )));
        _mm512_maskz_mov_ps(!underflow, _mm512_mul_ps(p, scale))
    }

    /// AVX-512F `exp_shift_sum_in_place`: the values of the AVX2 kernel ([`exp16`]), summed in 16 lanes; the
    /// tail through masked loads and stores.
    #[cfg(recgoat_avx512)]
    #[clippy::msrv = "1.89"]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_shift_sum_in_place_avx512(shift: f32, xs: &mut [f32]) -> f32 {
        let n = xs.len();
        let vs = _mm512_set1_ps(shift);
        let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let p = xs.as_mut_ptr();
        let mut j = 0;
        while j + 32 <= n {
            let e0 = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(j)), vs));
            let e1 = exp16(_mm512_sub_ps(_mm512_loadu_ps(p.add(j + 16)), vs));
            _mm512_storeu_ps(p.add(j), e0);
            _mm512_storeu_ps(p.add(j + 16), e1);
            acc0 = _mm512_add_ps(acc0, e0);
            acc1 = _mm512_add_ps(acc1, e1);
            j += 32;
        }
        while j < n {
            let k = (n - j).min(16);
            let m: __mmask16 = if k == 16 { u16::MAX } else { (1u16 << k) - 1 };
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(j)), vs));
            _mm512_mask_storeu_ps(p.add(j), m, e);
            acc1 = _mm512_mask_add_ps(acc1, m, acc1, e);
            j += k;
        }
        _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
    }

    /// AVX2 version of `exp_affine_sum`; the tail goes through a padded lane block so every element uses
    /// the same exp approximation.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_affine_sum_avx2(
        alpha: f32,
        beta: &[f32],
        c: &[f32],
        s: f32,
        out: &mut [f32],
    ) -> f32 {
        let n = out.len();
        assert!(
            beta.len() == n && c.len() == n,
            "exp_affine_sum: slice lengths differ"
        );
        let va = _mm256_set1_ps(alpha);
        let vs = _mm256_set1_ps(-s);
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (bp, cp, op) = (beta.as_ptr(), c.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        while j + 16 <= n {
            let x0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(cp.add(j)),
                vs,
                _mm256_add_ps(va, _mm256_loadu_ps(bp.add(j))),
            );
            let x1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(cp.add(j + 8)),
                vs,
                _mm256_add_ps(va, _mm256_loadu_ps(bp.add(j + 8))),
            );
            let e0 = exp8(x0);
            let e1 = exp8(x1);
            _mm256_storeu_ps(op.add(j), e0);
            _mm256_storeu_ps(op.add(j + 8), e1);
            acc0 = _mm256_add_ps(acc0, e0);
            acc1 = _mm256_add_ps(acc1, e1);
            j += 16;
        }
        while j < n {
            let k = (n - j).min(8);
            let mut bb = [0f32; 8];
            let mut cc = [0f32; 8];
            bb[..k].copy_from_slice(&beta[j..j + k]);
            cc[..k].copy_from_slice(&c[j..j + k]);
            let x = _mm256_fmadd_ps(
                _mm256_loadu_ps(cc.as_ptr()),
                vs,
                _mm256_add_ps(va, _mm256_loadu_ps(bb.as_ptr())),
            );
            let mut ee = [0f32; 8];
            _mm256_storeu_ps(ee.as_mut_ptr(), exp8(x));
            out[j..j + k].copy_from_slice(&ee[..k]);
            let mut t = 0f32;
            for &e in &ee[..k] {
                t += e;
            }
            acc1 = _mm256_add_ps(acc1, _mm256_setr_ps(t, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0));
            j += k;
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_exp_matches_scalar_fallback_on_every_length_and_range() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 33, 100, 257] {
            let beta: Vec<f32> = (0..n).map(|_| rng.gen_range(-120.0..5.0)).collect();
            let c: Vec<f32> = (0..n).map(|_| rng.gen_range(0.0..3.0)).collect();
            let mut fast = vec![0f32; n];
            let mut slow = vec![0f32; n];
            let s_fast = f32::exp_affine_sum(0.25, &beta, &c, 1.5, &mut fast);
            let s_slow = exp_affine_sum_scalar(0.25f32, &beta, &c, 1.5, &mut slow);
            let x = |j: usize| 0.25 + beta[j] - c[j] * 1.5;
            assert_exps_match(x, (&fast, s_fast), (&slow, s_slow));
        }
    }

    /// The SIMD exps `fast` (summing to `s_fast`) against the scalar ones `slow` of the arguments `x(j)`.
    fn assert_exps_match(x: impl Fn(usize) -> f32, fast: (&[f32], f32), slow: (&[f32], f32)) {
        let n = fast.0.len();
        for (j, (&a, &b)) in fast.0.iter().zip(slow.0).enumerate() {
            let x = x(j);
            if x < -87.3 {
                // below the f32 normal range the fast kernel flushes to 0 and the scalar one may be subnormal
                assert!(a == 0.0 && b < 1.2e-38, "n={n} j={j} x={x}: {a} vs {b}");
            } else {
                // 4 ulps for the two exp implementations, plus exp's condition number |x| times the
                // argument's rounding (the SIMD path may fuse it into one FMA where the scalar one rounds twice)
                let tol = (4.0 + 2.0 * x.abs()) * f32::EPSILON * b;
                assert!(
                    (a - b).abs() <= tol,
                    "n={n} j={j} x={x}: fast {a} scalar {b}"
                );
            }
        }
        let (s_fast, s_slow) = (fast.1, slow.1);
        assert!(
            (s_fast - s_slow).abs() <= 1e-5 * s_slow.abs() + 1e-30,
            "n={n}: {s_fast} vs {s_slow}"
        );
    }

    #[test]
    fn simd_max_and_in_place_exp_match_scalar_fallback() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100, 257] {
            let xs: Vec<f32> = (0..n).map(|_| rng.gen_range(-100.0..8.0)).collect();
            // the maximum placed at every position in turn, so no lane or tail position is skipped
            for at in 0..n {
                let mut ys = xs.clone();
                ys[at] = 9.5;
                assert_eq!(f32::max_of(&ys), 9.5, "n={n} at={at}");
            }
            assert_eq!(f32::max_of(&xs), max_of(&xs), "n={n}");
            let (mut fast, mut slow) = (xs.clone(), xs.clone());
            let s_fast = f32::exp_shift_sum_in_place(-0.5, &mut fast);
            let s_slow = exp_shift_sum_in_place_scalar(-0.5f32, &mut slow);
            assert_exps_match(|j| xs[j] + 0.5, (&fast, s_fast), (&slow, s_slow));
        }
        assert_eq!(f32::max_of(&[]), f32::NEG_INFINITY);
    }

    /// The AVX-512 in-place exp writes the AVX2 kernel's values to the bit (the same operations per lane)
    /// at every length, underflow and NaN included; only the sum's grouping differs.
    #[cfg(all(recgoat_avx512, target_arch = "x86_64"))]
    #[test]
    fn avx512_in_place_exp_matches_the_avx2_kernel() {
        use rand::{Rng, SeedableRng};
        if !(has_avx512f() && has_avx2_fma()) {
            return;
        }
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(12);
        for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 47, 64, 100, 257] {
            let mut xs: Vec<f32> = (0..n).map(|_| rng.gen_range(-100.0..8.0)).collect();
            if n > 3 {
                xs[n / 2] = f32::NAN;
            }
            let (mut a, mut b) = (xs.clone(), xs.clone());
            // SAFETY: both instruction sets are present (checked above)
            let (sa, sb) = unsafe {
                (
                    x86::exp_shift_sum_in_place_avx512(-0.5, &mut a),
                    x86::exp_shift_sum_in_place_avx2(-0.5, &mut b),
                )
            };
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "n={n}");
            if n > 3 {
                assert!(
                    sa.is_nan() && sb.is_nan(),
                    "n={n}: a NaN must reach the sum"
                );
            } else {
                assert!((sa - sb).abs() <= 1e-6 * sb.abs(), "n={n}: {sa} vs {sb}");
            }
        }
    }

    #[test]
    fn dot_f32_matches_the_plain_sum_at_every_length() {
        for n in [0, 1, 15, 16, 17, 37, 384] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let want: f64 = a
                .iter()
                .zip(&b)
                .map(|(x, y)| f64::from(*x) * f64::from(*y))
                .sum();
            let got = f64::from(dot_f32(&a, &b));
            assert!(
                (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "{n}: {got} vs {want}"
            );
            assert_eq!(
                dot_f32_lanes(&a, &b),
                dot_f32(&a, &b),
                "{n}: one result on every path"
            );
        }
    }

    #[test]
    fn all_finite_finds_nan_and_infinities_anywhere() {
        for n in [0usize, 1, 15, 16, 17, 40] {
            let mut xs = vec![1.5f32; n];
            assert!(all_finite(&xs));
            for k in 0..n {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    xs[k] = bad;
                    assert!(!all_finite(&xs), "n={n} k={k} {bad}");
                    xs[k] = -3.0e38;
                }
            }
        }
    }

    #[test]
    fn simd_axpy_matches_scalar_fallback() {
        for n in [0usize, 1, 7, 8, 9, 64, 67] {
            let x: Vec<f32> = (0..n).map(|i| (i as f32).sin()).collect();
            let mut fast: Vec<f32> = (0..n).map(|i| (i as f32) * 0.5).collect();
            let mut slow = fast.clone();
            f32::axpy(1.25, &x, &mut fast);
            axpy(1.25f32, &x, &mut slow);
            for (a, b) in fast.iter().zip(&slow) {
                // FMA rounds once, the fallback twice: one ulp of the larger term at most
                assert!(
                    (a - b).abs() <= f32::EPSILON * (a.abs() + 1.0),
                    "n={n}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn simd_exp_handles_infinities_and_nan() {
        let beta = [
            f32::NEG_INFINITY,
            0.0,
            f32::NAN,
            200.0,
            -1000.0,
            0.0,
            0.0,
            0.0,
            1.0,
        ];
        let c = [0.0f32; 9];
        let mut out = [0f32; 9];
        f32::exp_affine_sum(0.0, &beta, &c, 1.0, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[1], 1.0);
        assert!(out[2].is_nan());
        assert!(out[3].is_finite() && out[3] > 1e38);
        assert_eq!(out[4], 0.0);
        assert!((out[8] - std::f32::consts::E).abs() < 1e-6);
    }

    #[test]
    fn logsumexp_is_stable_for_large_arguments() {
        let beta = [1000.0f64, 1000.0];
        let c = [0.0f64; 2];
        let mut scratch = [0.0; 2];
        let l = affine_logsumexp(0.0, &beta, &c, 1.0, &mut scratch);
        assert!((l - (1000.0 + 2f64.ln())).abs() < 1e-12);
        let l32 = affine_logsumexp(0.0f32, &[-1000.0, -1000.0], &[0.0; 2], 1.0, &mut [0.0; 2]);
        assert!((l32 - (-1000.0 + 2f32.ln())).abs() < 1e-3);
    }
}
