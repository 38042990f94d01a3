// General matrix product C = alpha * op(A) op(B) + beta * C on row-major f32 buffers with leading dimensions
// and element offsets (so sub-blocks of larger matrices are addressed in place). op(X) = X or X^T.
// 16 x 16 output tile per workgroup, one output per invocation, K walked in 16-wide tiles staged in
// workgroup memory (a barrier after each load and after each use).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    // bit 0: A transposed, bit 1: B transposed
    flags: u32,
    lda: u32,
    ldb: u32,
    ldc: u32,
    a_off: u32,
    b_off: u32,
    c_off: u32,
    alpha: f32,
    beta: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const T: u32 = 16u;
var<workgroup> ta: array<array<f32, 16>, 16>;
var<workgroup> tb: array<array<f32, 16>, 16>;

fn load_a(i: u32, q: u32) -> f32 {
    if (i >= p.m || q >= p.k) {
        return 0.0;
    }
    if ((p.flags & 1u) != 0u) {
        return a[p.a_off + q * p.lda + i];
    }
    return a[p.a_off + i * p.lda + q];
}

fn load_b(q: u32, j: u32) -> f32 {
    if (q >= p.k || j >= p.n) {
        return 0.0;
    }
    if ((p.flags & 2u) != 0u) {
        return b[p.b_off + j * p.ldb + q];
    }
    return b[p.b_off + q * p.ldb + j];
}

@compute @workgroup_size(16, 16, 1)
fn gemm(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    // x walks columns, y rows
    let i = wid.y * T + lid.y;
    let j = wid.x * T + lid.x;
    var acc = 0.0;
    let tiles = (p.k + T - 1u) / T;
    for (var t = 0u; t < tiles; t++) {
        ta[lid.y][lid.x] = load_a(i, t * T + lid.x);
        tb[lid.y][lid.x] = load_b(t * T + lid.y, j);
        workgroupBarrier();
        for (var q = 0u; q < T; q++) {
            acc += ta[lid.y][q] * tb[q][lid.x];
        }
        workgroupBarrier();
    }
    if (i < p.m && j < p.n) {
        let o = p.c_off + i * p.ldc + j;
        var v = p.alpha * acc;
        if (p.beta != 0.0) {
            v += p.beta * c[o];
        }
        c[o] = v;
    }
}
