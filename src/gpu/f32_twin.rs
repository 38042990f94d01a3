//! Values of a generic float type as their f32 twins, for the GPU path (whose kernels are f32): a run-time
//! type check where the type must be f32 already, and copies of arrays either way.

use crate::simd::Real;
use ndarray::{Array, ArrayView, Dimension};
use std::any::{Any, TypeId};

/// `a` as a `&B` when `A` and `B` are the same type.
pub(crate) fn same<A: 'static, B: 'static>(a: &A) -> Option<&B> {
    (TypeId::of::<A>() == TypeId::of::<B>())
        // SAFETY: A and B are the same type.
        .then(|| unsafe { &*(a as *const A).cast::<B>() })
}

/// `a` as a `B` when `A` and `B` are the same type.
pub(crate) fn same_owned<A: 'static, B: 'static>(a: A) -> Option<B> {
    (Box::new(a) as Box<dyn Any>).downcast().ok().map(|b| *b)
}

/// An f32 copy of an array of any float type.
pub(crate) fn to_f32<F: Real, D: Dimension>(x: ArrayView<'_, F, D>) -> Array<f32, D> {
    x.mapv(|v| v.to_f32().expect("f32 holds every Real"))
}

/// An f32 array as the float type `F`.
pub(crate) fn from_f32<F: Real, D: Dimension>(x: Array<f32, D>) -> Array<F, D> {
    x.mapv(|v| F::c(f64::from(v)))
}
