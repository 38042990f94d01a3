// Shared by the graph-attention kernels (prepended to the files whose leading lines include
// `// requires: lib/gat.wgsl`): their parameters and LeakyReLU.

struct Params {
    // nodes, heads, head width, first item of this dispatch
    n: u32,
    heads: u32,
    c: u32,
    offset: u32,
    // items of this kernel (nodes, or edge-head pairs)
    count: u32,
    // bit 0: GATv2 scoring, bit 1: heads concatenated (else averaged), bit 2: bias, bit 3: attention
    // dropout mask bound
    flags: u32,
    _pad0: u32,
    _pad1: u32,
    slope: f32,
    inv_heads: f32,
    _pad2: f32,
    _pad3: f32,
}

fn leaky(v: f32, slope: f32) -> f32 {
    if (v > 0.0) {
        return v;
    }
    return v * slope;
}

fn leaky_grad(v: f32, slope: f32) -> f32 {
    if (v > 0.0) {
        return 1.0;
    }
    return slope;
}

fn is_v2(p: Params) -> bool {
    return (p.flags & 1u) != 0u;
}

fn is_concat(p: Params) -> bool {
    return (p.flags & 2u) != 0u;
}

fn has_mask(p: Params) -> bool {
    return (p.flags & 8u) != 0u;
}

