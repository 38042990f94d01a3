//! The learnable parameters of [`super::RecGoat`], and the same structure used for their gradients.

use crate::attention::GatParams;
use crate::nn::{LayerNorm, Linear};
use crate::simd::Real;
use ndarray::{Array1, Array2, ArrayView2, ArrayViewMut2, Axis};

/// One graph-attention branch: a projection to the embedding size, then GAT layers.
#[derive(Debug, Clone, PartialEq)]
pub struct Branch<F> {
    /// `d_in -> d` projection with bias.
    pub proj: Linear<F>,
    /// One parameter set per GAT layer (`d -> d`).
    pub gat: Vec<GatParams<F>>,
}

/// Every learnable tensor of the model. Gradients use the same type (same shapes, same optional parts).
#[derive(Debug, Clone, PartialEq)]
pub struct Params<F> {
    /// LightGCN ego embeddings `E^0`, `(U + I) x d`, users first.
    pub embedding: Array2<F>,
    /// One branch per modality, in the model's modality order.
    pub branches: Vec<Branch<F>>,
    /// The user-user branch, when configured.
    pub user_branch: Option<Branch<F>>,
    /// OAT corrections `Delta_m` (`d x d`), one per modality when OAT is on.
    pub deltas: Vec<Array2<F>>,
    /// Fusion weights (softmax logits or free scalars), collaborative view first; `None` for ID-only models.
    pub fusion: Option<Array1<F>>,
    /// LayerNorm of the fusion; `None` for ID-only models.
    pub norm: Option<LayerNorm<F>>,
}

/// Visits every tensor of a [`Params`] in a fixed order with a stable name; `$view`/`$iter`/`$as` are
/// `view`/`iter`/`as_ref` or `view_mut`/`iter_mut`/`as_mut`, so one traversal serves reading and updating.
macro_rules! walk {
    ($p:expr, $view:ident, $iter:ident, $as:ident, $f:expr) => {{
        let f = $f;
        f("embedding".to_string(), $p.embedding.$view());
        let branches = $p
            .branches
            .$iter()
            .enumerate()
            .map(|(m, b)| (format!("branch{m}"), b))
            .chain($p.user_branch.$as().map(|b| ("user_branch".to_string(), b)));
        for (prefix, b) in branches {
            f(format!("{prefix}.proj.w"), b.proj.w.$view());
            if let Some(bias) = b.proj.b.$as() {
                f(
                    format!("{prefix}.proj.b"),
                    bias.$view().insert_axis(Axis(0)),
                );
            }
            for (l, g) in b.gat.$iter().enumerate() {
                f(format!("{prefix}.gat{l}.w"), g.w.$view());
                f(format!("{prefix}.gat{l}.a_src"), g.a_src.$view());
                if let Some(a) = g.a_dst.$as() {
                    f(format!("{prefix}.gat{l}.a_dst"), a.$view());
                }
                if let Some(bias) = g.bias.$as() {
                    f(
                        format!("{prefix}.gat{l}.bias"),
                        bias.$view().insert_axis(Axis(0)),
                    );
                }
                if let Some(w) = g.w_res.$as() {
                    f(format!("{prefix}.gat{l}.w_res"), w.$view());
                }
            }
        }
        for (m, d) in $p.deltas.$iter().enumerate() {
            f(format!("delta{m}"), d.$view());
        }
        if let Some(w) = $p.fusion.$as() {
            f("fusion".to_string(), w.$view().insert_axis(Axis(0)));
        }
        if let Some(n) = $p.norm.$as() {
            f(
                "norm.gamma".to_string(),
                n.gamma.$view().insert_axis(Axis(0)),
            );
            f("norm.beta".to_string(), n.beta.$view().insert_axis(Axis(0)));
        }
    }};
}

impl<F: Real> Params<F> {
    /// Every tensor with its stable name, in a fixed order (vectors as `1 x n`).
    pub fn tensors(&self) -> Vec<(String, ArrayView2<'_, F>)> {
        let mut out = Vec::new();
        let p = self;
        walk!(p, view, iter, as_ref, &mut |name: String, v| out
            .push((name, v)));
        out
    }

    /// Every tensor, mutable, in the order of [`Params::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<(String, ArrayViewMut2<'_, F>)> {
        let mut out = Vec::new();
        let p = self;
        walk!(p, view_mut, iter_mut, as_mut, &mut |name: String, v| out
            .push((name, v)));
        out
    }

    /// Zeros of the same structure and shapes (a gradient accumulator).
    pub fn zeros_like(&self) -> Self {
        let mut z = self.clone();
        for (_, mut t) in z.tensors_mut() {
            t.fill(F::zero());
        }
        z
    }

    /// Total number of scalars.
    pub fn len(&self) -> usize {
        self.tensors().iter().map(|(_, t)| t.len()).sum()
    }

    /// Whether there are no parameters (never true for a built model).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `self += alpha * other` over every tensor (same structure required).
    ///
    /// # Panics
    /// When the structures differ (an internal invariant: both come from one model).
    pub fn scaled_add(&mut self, alpha: F, other: &Self) {
        let theirs = other.tensors();
        let mut mine = self.tensors_mut();
        assert_eq!(mine.len(), theirs.len(), "parameter structures differ");
        for ((_, m), (_, t)) in mine.iter_mut().zip(&theirs) {
            m.scaled_add(alpha, t);
        }
    }

    /// The sum of `self . other` over every tensor.
    ///
    /// # Panics
    /// When the structures differ.
    pub fn dot(&self, other: &Self) -> F {
        let (a, b) = (self.tensors(), other.tensors());
        assert_eq!(a.len(), b.len(), "parameter structures differ");
        a.iter()
            .zip(&b)
            .map(|((_, x), (_, y))| (x * y).sum())
            .fold(F::zero(), |s, v| s + v)
    }

    /// Converts every tensor to another float type.
    pub fn cast<G: Real>(&self) -> Params<G> {
        let c2 = |a: &Array2<F>| a.mapv(|v| G::c(v.to_f64().expect("float converts")));
        let c1 = |a: &Array1<F>| a.mapv(|v| G::c(v.to_f64().expect("float converts")));
        let branch = |b: &Branch<F>| Branch {
            proj: Linear {
                w: c2(&b.proj.w),
                b: b.proj.b.as_ref().map(c1),
            },
            gat: b
                .gat
                .iter()
                .map(|g| GatParams {
                    w: c2(&g.w),
                    a_src: c2(&g.a_src),
                    a_dst: g.a_dst.as_ref().map(c2),
                    bias: g.bias.as_ref().map(c1),
                    w_res: g.w_res.as_ref().map(c2),
                })
                .collect(),
        };
        Params {
            embedding: c2(&self.embedding),
            branches: self.branches.iter().map(branch).collect(),
            user_branch: self.user_branch.as_ref().map(branch),
            deltas: self.deltas.iter().map(c2).collect(),
            fusion: self.fusion.as_ref().map(c1),
            norm: self.norm.as_ref().map(|n| LayerNorm {
                gamma: c1(&n.gamma),
                beta: c1(&n.beta),
                eps: G::c(n.eps.to_f64().expect("float converts")),
            }),
        }
    }
}
