//! The model's BPR loss with its embedding regulariser on the GPU, per triple (`shaders/bpr_rows.wgsl`): one
//! kernel writes each triple's terms and the gradients of its user, item and ego rows. Only the reference
//! model uses it.

use super::context::Kernel;
use super::matrix::same_shape;
use super::{GpuContext, GpuMatrix};
use crate::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct BprParams {
    b: u32,
    d: u32,
    row_offset: u32,
    _pad: u32,
    inv_b: f32,
    reg: f32,
    _pad1: [f32; 2],
}

/// The BPR and regulariser terms of `b` triples: final user vectors `zu` (`b x d`), final item vectors `zi`
/// stacked `[positives; negatives]` (`2b x d`) and ego embeddings `e` stacked `[users; positives; negatives]`
/// (`3b x d`). Their gradients go into `gu`, `gi` and `ge` (the shapes of `zu`, `zi`, `e`) and per triple
/// `(softplus term, sum of squares)` into `terms` (`b x 2`). See `shaders/bpr_rows.wgsl`.
pub(crate) fn bpr_rows(
    ctx: &GpuContext,
    (zu, zi, e): (&GpuMatrix, &GpuMatrix, &GpuMatrix),
    reg: f32,
    (gu, gi, ge, terms): (&GpuMatrix, &GpuMatrix, &GpuMatrix, &GpuMatrix),
) -> Result<()> {
    const OP: &str = "gpu::bpr_rows";
    let (b, d) = (zu.rows(), zu.cols());
    if b == 0 {
        return Err(Error::Empty {
            op: OP,
            what: "batch".into(),
        });
    }
    for (what, m, rows) in [("zi", zi, 2 * b), ("e", e, 3 * b), ("terms", terms, b)] {
        let want = (rows, if what == "terms" { 2 } else { d });
        if (m.rows(), m.cols()) != want {
            return Err(Error::shape(OP, what, want, (m.rows(), m.cols())));
        }
    }
    for (what, g, m) in [("gu", gu, zu), ("gi", gi, zi), ("ge", ge, e)] {
        same_shape(OP, what, m, g)?;
    }
    let kernel = Kernel::new("bpr_rows.wgsl", "bpr_rows");
    let mut enc = ctx.encoder();
    let params = |start: usize| BprParams {
        b: b as u32,
        d: d as u32,
        row_offset: start as u32,
        _pad: 0,
        inv_b: 1.0 / b as f32,
        reg,
        _pad1: [0.0; 2],
    };
    let bufs = [
        &zu.buf, &zi.buf, &e.buf, &gu.buf, &gi.buf, &ge.buf, &terms.buf,
    ];
    ctx.dispatch_rows(&mut enc, kernel, (b, 1), params, &bufs)?;
    ctx.submit(OP, enc)
}
