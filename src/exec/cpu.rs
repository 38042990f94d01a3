//! [`CpuExec`]: the model's backend on the host, `ndarray` matrices through the crate's CPU ops.

use super::{BprOut, Exec, GatRefs, Inputs};
use crate::attention::{GatCache, GatParams, Mode};
use crate::backend::par_dot;
use crate::contrastive::{multi_view_info_nce, InfoNceConfig, ViewPair};
use crate::error::{Error, Result};
use crate::graph::{
    lightgcn_backward_into, lightgcn_forward_into, spmm, spmm_backward, PropagationBuffers,
};
use crate::nn::{self, Adam, AdamState, LayerNorm, LayerNormCache, Linear};
use crate::simd::Real;
use crate::transport::AdaptiveCache;
use crate::Par;
use ndarray::{concatenate, s, Array1, Array2, ArrayView2, Axis, Zip};

/// The host backend of a model: its inputs by reference, ops parallel as the model's backend says, and the
/// propagation's layer buffers, reused by every propagation while it lives (an epoch's steps, say), so
/// that each call does not allocate and first-touch two graph-sized arrays.
#[derive(Debug)]
pub(crate) struct CpuExec<'a, F: Real> {
    inputs: Inputs<'a, F>,
    par: Par,
    buffers: std::sync::Mutex<PropagationBuffers<F>>,
}

impl<F: Real> Clone for CpuExec<'_, F> {
    fn clone(&self) -> Self {
        CpuExec::new(self.inputs.clone())
    }
}

impl<'a, F: Real> CpuExec<'a, F> {
    pub(crate) fn new(inputs: Inputs<'a, F>) -> Self {
        let par = inputs.backend.par();
        CpuExec {
            inputs,
            par,
            buffers: std::sync::Mutex::new(PropagationBuffers::new()),
        }
    }

    fn gat_params(p: GatRefs<'_, Array2<F>>) -> GatParams<F> {
        GatParams {
            w: p.w.clone(),
            a_src: p.a_src.clone(),
            a_dst: p.a_dst.cloned(),
            bias: p.bias.map(row),
            w_res: p.w_res.cloned(),
        }
    }

    fn branch(&self, slot: usize) -> Result<(&'a Array2<F>, &'a crate::graph::CsrGraph<F>)> {
        self.inputs
            .branches
            .get(slot)
            .copied()
            .ok_or_else(|| Error::param("CpuExec", "branch", slot, "no such branch in the model"))
    }
}

/// Row 0 of a `1 x n` matrix.
fn row<F: Real>(m: &Array2<F>) -> Array1<F> {
    m.row(0).to_owned()
}

fn as_row<F: Real>(v: Array1<F>) -> Array2<F> {
    v.insert_axis(Axis(0))
}

fn layer_norm<F: Real>((gamma, beta, eps): (&Array2<F>, &Array2<F>, F)) -> LayerNorm<F> {
    LayerNorm {
        gamma: row(gamma),
        beta: row(beta),
        eps,
    }
}

impl<F: Real> Exec for CpuExec<'_, F> {
    type F = F;
    type M = Array2<F>;
    type Sel = Vec<usize>;
    type GatCache = GatCache<F>;
    type NormCache = LayerNormCache<F>;
    type Oat = AdaptiveCache<F>;
    type Fusion = Array1<F>;
    type Adam = AdamState<F>;
    type Scalar = f64;
    const DEFERRED: bool = false;

    fn upload(&self, x: ArrayView2<'_, F>) -> Result<Array2<F>> {
        Ok(x.to_owned())
    }
    fn download(&self, x: &Array2<F>) -> Result<Array2<F>> {
        Ok(x.clone())
    }
    fn zeros(&self, rows: usize, cols: usize) -> Result<Array2<F>> {
        Ok(Array2::zeros((rows, cols)))
    }
    fn dim(&self, x: &Array2<F>) -> (usize, usize) {
        x.dim()
    }
    fn rows(&self, x: &Array2<F>, r0: usize, n: usize) -> Result<Array2<F>> {
        Ok(x.slice(s![r0..r0 + n, ..]).to_owned())
    }
    fn concat_rows(&self, a: &Array2<F>, b: &Array2<F>) -> Result<Array2<F>> {
        concatenate(Axis(0), &[a.view(), b.view()])
            .map_err(|e| Error::shape("CpuExec::concat_rows", "widths", a.ncols(), e))
    }
    fn axpy(&self, a: F, x: &Array2<F>, y: &mut Array2<F>) -> Result<()> {
        y.scaled_add(a, x);
        Ok(())
    }
    fn masked(&self, x: Array2<F>, mask: Option<&Array2<F>>) -> Result<Array2<F>> {
        Ok(match mask {
            Some(m) => x * m,
            None => x,
        })
    }

    fn propagate(&self, x: &Array2<F>, backward: bool) -> Result<Array2<F>> {
        let (adj, layers) = (self.inputs.adj, self.inputs.layers);
        let mut out = Array2::zeros(x.dim());
        // a poisoned lock only means another propagation panicked; the buffers hold no invariant
        let mut buffers = self.buffers.lock().unwrap_or_else(|e| e.into_inner());
        type PropagateInto<F> = fn(
            &crate::graph::CsrGraph<F>,
            ArrayView2<'_, F>,
            usize,
            ndarray::ArrayViewMut2<'_, F>,
            &mut PropagationBuffers<F>,
            Par,
        ) -> Result<()>;
        let run: PropagateInto<F> = if backward {
            lightgcn_backward_into
        } else {
            lightgcn_forward_into
        };
        run(
            adj,
            x.view(),
            layers,
            out.view_mut(),
            &mut buffers,
            self.par,
        )?;
        Ok(out)
    }
    fn item_propagate(&self, x: &Array2<F>, backward: bool) -> Result<Array2<F>> {
        let (s, layers) = (self.inputs.item_graph)
            .ok_or_else(|| Error::param("CpuExec", "item_graph", "none", "the model has none"))?;
        let mut h = x.clone();
        for _ in 0..layers {
            h = if backward {
                spmm_backward(s, h.view(), self.par)?
            } else {
                spmm(s, h.view(), self.par)?
            };
        }
        Ok(h)
    }
    fn project(&self, slot: usize, w: &Array2<F>, b: Option<&Array2<F>>) -> Result<Array2<F>> {
        let lin = Linear {
            w: w.clone(),
            b: b.map(row),
        };
        lin.forward_par(self.branch(slot)?.0.view(), self.par)
    }
    fn project_backward(
        &self,
        slot: usize,
        g: &Array2<F>,
        bias: bool,
    ) -> Result<(Array2<F>, Option<Array2<F>>)> {
        let x = self.branch(slot)?.0;
        let gw = par_dot(self.par, &x.t(), &g.view());
        Ok((gw, bias.then(|| as_row(g.sum_axis(Axis(0))))))
    }
    fn project_rows(
        &self,
        slot: usize,
        s: &Vec<usize>,
        w: &Array2<F>,
        b: Option<&Array2<F>>,
    ) -> Result<(Array2<F>, Array2<F>)> {
        let x = nn::gather(self.branch(slot)?.0.view(), s)?;
        let lin = Linear {
            w: w.clone(),
            b: b.map(row),
        };
        Ok((lin.forward_par(x.view(), self.par)?, x))
    }
    fn project_rows_backward(
        &self,
        x: &Array2<F>,
        g: &Array2<F>,
        bias: bool,
    ) -> Result<(Array2<F>, Option<Array2<F>>)> {
        let gw = par_dot(self.par, &x.t(), &g.view());
        Ok((gw, bias.then(|| as_row(g.sum_axis(Axis(0))))))
    }
    fn gat_forward(
        &self,
        slot: usize,
        p: GatRefs<'_, Array2<F>>,
        x: &Array2<F>,
        mode: Mode,
    ) -> Result<(Array2<F>, GatCache<F>)> {
        let graph = self.branch(slot)?.1;
        let gp = Self::gat_params(p);
        self.inputs
            .gat
            .forward(&gp, graph, x.view(), mode, self.par)
    }
    fn gat_backward(
        &self,
        slot: usize,
        p: GatRefs<'_, Array2<F>>,
        cache: &GatCache<F>,
        _x: &Array2<F>,
        g: &Array2<F>,
    ) -> Result<(Array2<F>, Vec<Array2<F>>)> {
        let graph = self.branch(slot)?.1;
        let gp = Self::gat_params(p);
        let gg = self
            .inputs
            .gat
            .backward(&gp, graph, cache, g.view(), self.par)?;
        let mut params = vec![gg.grad_w, gg.grad_a_src];
        params.extend(gg.grad_a_dst);
        params.extend(gg.grad_bias.map(as_row));
        params.extend(gg.grad_w_res);
        Ok((gg.grad_x, params))
    }
    fn leaky_relu_masked(
        &self,
        pre: &Array2<F>,
        slope: F,
        mask: Option<&Array2<F>>,
    ) -> Result<Array2<F>> {
        self.masked(nn::leaky_relu(pre.view(), slope)?, mask)
    }
    fn leaky_relu_masked_backward(
        &self,
        pre: &Array2<F>,
        slope: F,
        mask: Option<&Array2<F>>,
        g: &Array2<F>,
    ) -> Result<Array2<F>> {
        let gd = nn::dropout_backward(g.view(), mask)?;
        nn::leaky_relu_backward(pre.view(), gd.view(), slope)
    }

    fn oat_forward(
        &self,
        m: &Array2<F>,
        z: &Array2<F>,
        delta: &Array2<F>,
    ) -> Result<(Array2<F>, AdaptiveCache<F>, Option<f64>)> {
        let op = self.inputs.oat.ok_or_else(|| {
            Error::param("CpuExec::oat_forward", "oat", "off", "the model has no OAT")
        })?;
        let (a, c) = op.forward(m.view(), z.view(), delta.view(), self.inputs.backend)?;
        Ok((a, c, None))
    }
    fn oat_backward(
        &self,
        oat: &AdaptiveCache<F>,
        _m: &Array2<F>,
        _z: &Array2<F>,
        g: &Array2<F>,
    ) -> Result<[Array2<F>; 3]> {
        let op = self.inputs.oat.ok_or_else(|| {
            Error::param(
                "CpuExec::oat_backward",
                "oat",
                "off",
                "the model has no OAT",
            )
        })?;
        let ag = op.backward(oat, Some(g.view()), F::zero())?;
        Ok([ag.grad_m, ag.grad_z, ag.grad_delta])
    }
    fn oat_plan(&self, oat: &AdaptiveCache<F>) -> Result<Array2<F>> {
        Ok(oat.plan().clone())
    }
    fn fusion(
        &self,
        views: &[&Array2<F>],
        logits: &Array2<F>,
        softmax: bool,
    ) -> Result<(Array2<F>, Array1<F>)> {
        let views: Vec<ArrayView2<'_, F>> = views.iter().map(|v| v.view()).collect();
        if softmax {
            return nn::softmax_fusion(&views, logits.row(0));
        }
        let mut y = Array2::zeros(views[0].dim());
        for (v, &w) in views.iter().zip(logits.row(0)) {
            y.scaled_add(w, v);
        }
        Ok((y, row(logits)))
    }
    fn fusion_backward(
        &self,
        views: &[&Array2<F>],
        weights: &Array1<F>,
        _logits: &Array2<F>,
        softmax: bool,
        g: &Array2<F>,
    ) -> Result<(Vec<Array2<F>>, Array2<F>)> {
        let views: Vec<ArrayView2<'_, F>> = views.iter().map(|v| v.view()).collect();
        let (g_views, g_w) = if softmax {
            nn::softmax_fusion_backward(&views, weights.view(), g.view())?
        } else {
            (
                weights.iter().map(|&w| g * w).collect(),
                views.iter().map(|v| (v * g).sum()).collect(),
            )
        };
        Ok((g_views, as_row(g_w)))
    }
    fn layer_norm(
        &self,
        ln: (&Array2<F>, &Array2<F>, F),
        x: &Array2<F>,
    ) -> Result<(Array2<F>, LayerNormCache<F>)> {
        layer_norm(ln).forward(x.view())
    }
    fn layer_norm_backward(
        &self,
        ln: (&Array2<F>, &Array2<F>, F),
        cache: &LayerNormCache<F>,
        g: &Array2<F>,
    ) -> Result<(Array2<F>, Array2<F>, Array2<F>)> {
        let (gx, gg, gb) = layer_norm(ln).backward(cache, g.view())?;
        Ok((gx, as_row(gg), as_row(gb)))
    }
    fn l2_normalize(
        &self,
        x: &Array2<F>,
        _what: &'static str,
    ) -> Result<(Array2<F>, Array2<F>, Option<f64>)> {
        let (y, norms) = nn::l2_normalize(x.view())?;
        Ok((y, norms.insert_axis(Axis(1)), None))
    }
    fn l2_normalize_backward(
        &self,
        y: &Array2<F>,
        norms: &Array2<F>,
        g: &Array2<F>,
    ) -> Result<Array2<F>> {
        nn::l2_normalize_backward(y.view(), norms.column(0), g.view())
    }

    fn select(&self, ids: &[usize], _n: usize) -> Result<Vec<usize>> {
        Ok(ids.to_vec())
    }
    fn gather(&self, s: &Vec<usize>, table: &Array2<F>) -> Result<Array2<F>> {
        nn::gather(table.view(), s)
    }
    fn scatter_add(&self, s: &Vec<usize>, g: &Array2<F>, acc: &mut Array2<F>) -> Result<()> {
        let w = acc.ncols();
        match (g.as_slice(), acc.as_slice_mut()) {
            // contiguous rows: one SIMD axpy per row
            (Some(gs), Some(a)) if g.ncols() == w => {
                for (&id, src) in s.iter().zip(gs.chunks_exact(w.max(1))) {
                    F::axpy(F::one(), src, &mut a[id * w..(id + 1) * w]);
                }
            }
            _ => {
                for (&id, r) in s.iter().zip(g.rows()) {
                    acc.row_mut(id).scaled_add(F::one(), &r);
                }
            }
        }
        Ok(())
    }
    fn bpr(&self, zu: &Array2<F>, zi: &Array2<F>, e: &Array2<F>, reg: F) -> Result<BprOut<Self>> {
        let b = zu.nrows();
        let (ip, ineg) = (zi.slice(s![..b, ..]), zi.slice(s![b.., ..]));
        let sp = (zu * &ip).sum_axis(Axis(1));
        let sn = (zu * &ineg).sum_axis(Axis(1));
        let (bpr, gp, gn) = nn::bpr_loss(sp.view(), sn.view())?;
        let gpc = gp.view().insert_axis(Axis(1));
        let gnc = gn.view().insert_axis(Axis(1));
        let grad_users = &ip * &gpc + &ineg * &gnc;
        // the item rows' gradients written in place, [positives; negatives]
        let mut grad_items = Array2::zeros(zi.dim());
        for (half, g) in [(0, &gpc), (b, &gnc)] {
            Zip::from(grad_items.slice_mut(s![half..half + b, ..]))
                .and(zu)
                .and_broadcast(g)
                .for_each(|o, &u, &g| *o = u * g);
        }
        // nn::l2_regularization over the three blocks of b rows each, without splitting and re-joining them
        let n = F::from_usize(b.max(1)).unwrap_or_else(F::one);
        let mut value = F::zero();
        for k in 0..3 {
            let block = e.slice(s![k * b..(k + 1) * b, ..]);
            value += reg * block.iter().map(|&v| v * v).sum::<F>() / n;
        }
        let grad_ego = e.mapv(|v| F::c(2.0) * reg * v / n);
        Ok(BprOut {
            bpr: bpr.to_f64().unwrap_or(f64::NAN),
            reg: value.to_f64().unwrap_or(f64::NAN),
            grad_users,
            grad_items,
            grad_ego,
        })
    }
    fn info_nce(
        &self,
        views: &[&Array2<F>],
        pairs: &[ViewPair<F>],
        cfg: &InfoNceConfig<F>,
        scale: F,
    ) -> Result<(Vec<f64>, Vec<Array2<F>>)> {
        let views: Vec<ArrayView2<'_, F>> = views.iter().map(|v| v.view()).collect();
        let out = multi_view_info_nce(&views, pairs, cfg, self.par)?;
        let grads = out.grads.into_iter().map(|g| g * scale).collect();
        Ok((vec![out.loss.to_f64().unwrap_or(f64::NAN)], grads))
    }
    fn sq_dist(
        &self,
        a: &Array2<F>,
        t: &Array2<F>,
        scale: F,
        parts: F,
    ) -> Result<(f64, Array2<F>)> {
        if a.dim() != t.dim() {
            return Err(Error::shape("CpuExec::sq_dist", "target", a.dim(), t.dim()));
        }
        let rows = F::c(a.nrows().max(1) as f64);
        let diff = a - t;
        let value = diff.iter().map(|&v| v * v).sum::<F>() / rows / parts;
        let grad = diff * (F::c(2.0) * scale / rows);
        Ok((value.to_f64().unwrap_or(f64::NAN), grad))
    }
    fn scalar(&self, v: f64) -> f64 {
        v
    }
    fn read(&self, xs: &[&f64]) -> Result<Vec<Result<f64>>> {
        Ok(xs.iter().map(|&&v| Ok(v)).collect())
    }

    fn adam_state(&self, st: &AdamState<F>) -> Result<AdamState<F>> {
        Ok(st.clone())
    }
    fn adam_state_download(&self, st: &AdamState<F>) -> Result<AdamState<F>> {
        Ok(st.clone())
    }
    fn adam_step(
        &self,
        adam: &Adam<F>,
        p: &mut Array2<F>,
        g: &Array2<F>,
        st: &mut AdamState<F>,
    ) -> Result<()> {
        adam.step(p.view_mut(), g.view(), st)
    }
}
