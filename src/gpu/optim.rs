//! The Adam step on the GPU ([`adam_step`], `shaders/adam.wgsl`), for parameters kept on the device.

use super::context::Kernel;
use super::matrix::same_shape;
use super::{GpuContext, GpuMatrix};
use crate::error::Result;
use crate::nn::{Adam, AdamState};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct AdamParams {
    count: u32,
    offset: u32,
    _pad: [u32; 2],
    lr: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    weight_decay: f32,
    c1: f32,
    c2: f32,
    _pad1: f32,
}

/// Adam's moments of one parameter on the device (the GPU twin of [`AdamState`]).
#[derive(Debug)]
pub struct GpuAdamState {
    m: GpuMatrix,
    v: GpuMatrix,
    /// Steps taken.
    pub t: u64,
}

impl GpuAdamState {
    /// Zero moments for a `rows x cols` parameter.
    ///
    /// # Errors
    /// As [`GpuMatrix::zeros`].
    pub fn zeros(ctx: &GpuContext, rows: usize, cols: usize) -> Result<GpuAdamState> {
        Ok(GpuAdamState {
            m: GpuMatrix::zeros(ctx, rows, cols)?,
            v: GpuMatrix::zeros(ctx, rows, cols)?,
            t: 0,
        })
    }

    /// The host state's moments and step count, on the device.
    ///
    /// # Errors
    /// As [`GpuMatrix::upload`].
    pub fn upload(ctx: &GpuContext, state: &AdamState<f32>) -> Result<GpuAdamState> {
        Ok(GpuAdamState {
            m: GpuMatrix::upload(ctx, state.m().view())?,
            v: GpuMatrix::upload(ctx, state.v().view())?,
            t: state.t,
        })
    }

    /// The state back on the host.
    ///
    /// # Errors
    /// [`Error::Gpu`](crate::Error::Gpu) for a failed read.
    pub fn download(&self, ctx: &GpuContext) -> Result<AdamState<f32>> {
        AdamState::from_moments(self.m.download(ctx)?, self.v.download(ctx)?, self.t)
    }
}

/// One [`Adam::step`] on the device: `param` and the moments updated in place from `grad`, with the same
/// arithmetic as the CPU step. The gradient is not checked for NaN/Inf here (it never comes back to the
/// host); callers check a value that depends on it, as the model's device step checks its loss.
///
/// # Errors
/// [`Error::Param`](crate::Error::Param) for invalid hyper-parameters, [`Error::Shape`](crate::Error::Shape) when `grad` or the moments do not have
/// `param`'s shape, [`Error::Gpu`](crate::Error::Gpu).
///
/// # Example
/// ```no_run
/// # #[cfg(feature = "gpu")] {
/// use ndarray::array;
/// use recgoat_core::gpu::{self, GpuAdamState, GpuContext, GpuMatrix};
/// use recgoat_core::nn::Adam;
/// let ctx = GpuContext::new()?;
/// let mut p = GpuMatrix::upload(&ctx, array![[1.0f32, -1.0]].view())?;
/// let g = GpuMatrix::upload(&ctx, array![[0.5f32, -0.5]].view())?;
/// let mut st = GpuAdamState::zeros(&ctx, 1, 2)?;
/// gpu::adam_step(&ctx, &Adam::new(0.1), &mut p, &g, &mut st)?;
/// // the first bias-corrected step moves every coordinate by lr against its gradient's sign
/// let p = p.download(&ctx)?;
/// assert!((p[[0, 0]] - 0.9).abs() < 1e-5 && (p[[0, 1]] + 0.9).abs() < 1e-5);
/// # }
/// # Ok::<(), recgoat_core::Error>(())
/// ```
pub fn adam_step(
    ctx: &GpuContext,
    adam: &Adam<f32>,
    param: &mut GpuMatrix,
    grad: &GpuMatrix,
    state: &mut GpuAdamState,
) -> Result<()> {
    const OP: &str = "gpu::adam_step";
    adam.validate()?;
    same_shape(OP, "grad", param, grad)?;
    same_shape(OP, "first moment", param, &state.m)?;
    same_shape(OP, "second moment", param, &state.v)?;
    state.t += 1;
    let (c1, c2) = adam.corrections(state.t);
    let count = param.rows() * param.cols();
    let kernel = Kernel::new("adam.wgsl", "adam");
    let mut enc = ctx.encoder();
    let params = |start: usize| AdamParams {
        count: count as u32,
        offset: start as u32,
        _pad: [0; 2],
        lr: adam.lr,
        beta1: adam.beta1,
        beta2: adam.beta2,
        eps: adam.eps,
        weight_decay: adam.weight_decay,
        c1,
        c2,
        _pad1: 0.0,
    };
    let bufs = [&grad.buf, &param.buf, &state.m.buf, &state.v.buf];
    ctx.dispatch_rows(&mut enc, kernel, (count, 256), params, &bufs)?;
    ctx.submit(OP, enc)
}
