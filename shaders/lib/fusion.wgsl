// Shared by the fusion-weight kernels (prepended to the files whose leading lines include
// `// requires: lib/fusion.wgsl`): their parameters, the logits, and a view's weight. The view count V is
// small (the collaborative view and one per modality), so every invocation reads all V logits.

struct Params {
    // V views, row width d, first view of this dispatch, bit 0 of flags: softmax (else the free scalars)
    rows: u32,
    d: u32,
    row_offset: u32,
    flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;

// softmax(logits)_v with the max subtracted, or logits[v] for free scalars
fn view_weight(v: u32) -> f32 {
    if ((p.flags & 1u) == 0u) {
        return logits[v];
    }
    var mx = logits[0];
    for (var u = 1u; u < p.rows; u++) {
        mx = max(mx, logits[u]);
    }
    var s = 0.0;
    for (var u = 0u; u < p.rows; u++) {
        s += exp(logits[u] - mx);
    }
    return exp(logits[v] - mx) / s;
}
