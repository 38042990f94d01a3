// The register-tiled GEMM body shared by gemm.wgsl and the InfoNCE kernels (xent_logits.wgsl,
// xent_grad.wgsl): C = alpha * op(A) op(B) + beta * C on row-major f32 buffers with leading dimensions and
// element offsets (so sub-blocks of larger matrices are addressed in place). op(X) = X or X^T.
//
// A workgroup of 16 x 16 invocations computes a 64 x 64 tile of C, each invocation a 4 x 4 block of it (rows
// ty + 16 i, columns tx + 16 j, so neighbouring invocations touch neighbouring columns), held in four vec4
// accumulators (no dynamically indexed private arrays, which drivers may put in slow memory). K is walked in
// slices of 16: the 64 x 16 slice of op(A) and the 16 x 64 slice of op(B) are staged in workgroup memory
// (read along the stored layout, so the loads are contiguous for either transposition), with a barrier after
// each load and after each use.
//
// Split K: workgroup z covers k in [z k_chunk, min(k, (z + 1) k_chunk)) and writes its partial product to
// C + z c_stride (the caller then sums the slices with gemm_sum.wgsl); unsplit calls have one z and
// k_chunk >= k.
//
// The including file defines `load_a(i, q, k_end) -> f32`, the value of op(A)[i, q] (zero outside the matrix
// and the slice): `a_at` below, or a function of it. `aux0` and `aux1` are the including kernel's own.

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
    k_chunk: u32,
    c_stride: u32,
    aux0: u32,
    aux1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const TM: u32 = 64u;
const TK: u32 = 16u;
// ta[q][i] = op(A)[row0 + i, k0 + q], tb[q][j] = op(B)[k0 + q, col0 + j]; rows padded to 65 so that the
// transposing stores (consecutive invocations on consecutive q) fall in distinct banks
var<workgroup> ta: array<array<f32, 65>, 16>;
var<workgroup> tb: array<array<f32, 65>, 16>;

// whether op(A)[i, q] lies in the matrix and the slice
fn a_inside(i: u32, q: u32, k_end: u32) -> bool {
    return i < p.m && q < k_end;
}

// the buffer index of op(A)[i, q]
fn a_index(i: u32, q: u32) -> u32 {
    if ((p.flags & 1u) != 0u) {
        return p.a_off + q * p.lda + i;
    }
    return p.a_off + i * p.lda + q;
}

// op(A)[i, q], zero outside the matrix and the slice
fn a_at(i: u32, q: u32, k_end: u32) -> f32 {
    if (!a_inside(i, q, k_end)) {
        return 0.0;
    }
    return a[a_index(i, q)];
}

// op(B)[q, j], zero outside the matrix and the slice
fn load_b(q: u32, j: u32, k_end: u32) -> f32 {
    if (q >= k_end || j >= p.n) {
        return 0.0;
    }
    if ((p.flags & 2u) != 0u) {
        return b[p.b_off + j * p.ldb + q];
    }
    return b[p.b_off + q * p.ldb + j];
}

// an invocation's 4 x 4 block of the tile: row ty + 16 i in acc[i], columns tx, tx + 16, tx + 32, tx + 48
struct Tile {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// the invocation's block of op(A) op(B) over workgroup wid's tile and K slice (before alpha)
fn gemm_tile(lid: vec3<u32>, wid: vec3<u32>) -> Tile {
    let tx = lid.x;
    let ty = lid.y;
    let flat = ty * 16u + tx;
    let row0 = wid.y * TM;
    let col0 = wid.x * TM;
    let a_trans = (p.flags & 1u) != 0u;
    let b_trans = (p.flags & 2u) != 0u;
    let k_begin = wid.z * p.k_chunk;
    let k_end = min(p.k, k_begin + p.k_chunk);
    var t = Tile(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
    for (var k0 = k_begin; k0 < k_end; k0 += TK) {
        // 1024 values of each slice, 4 per invocation, walked along the stored layout
        for (var r = 0u; r < 4u; r++) {
            let e = flat + r * 256u;
            if (a_trans) {
                // stored K x M: consecutive invocations read consecutive rows of op(A)
                ta[e / TM][e % TM] = load_a(row0 + e % TM, k0 + e / TM, k_end);
            } else {
                // stored M x K: consecutive invocations read consecutive k
                ta[e % TK][e / TK] = load_a(row0 + e / TK, k0 + e % TK, k_end);
            }
            if (b_trans) {
                tb[e % TK][e / TK] = load_b(k0 + e % TK, col0 + e / TK, k_end);
            } else {
                tb[e / TM][e % TM] = load_b(k0 + e / TM, col0 + e % TM, k_end);
            }
        }
        workgroupBarrier();
        for (var q = 0u; q < TK; q++) {
            let av = vec4<f32>(ta[q][ty], ta[q][ty + 16u], ta[q][ty + 32u], ta[q][ty + 48u]);
            let bv = vec4<f32>(tb[q][tx], tb[q][tx + 16u], tb[q][tx + 32u], tb[q][tx + 48u]);
            t.r0 += av.x * bv;
            t.r1 += av.y * bv;
            t.r2 += av.z * bv;
            t.r3 += av.w * bv;
        }
        workgroupBarrier();
    }
    return t;
}

fn store(row: u32, col: u32, base: u32, v: f32) {
    if (row < p.m && col < p.n) {
        let o = base + row * p.ldc + col;
        var x = p.alpha * v;
        if (p.beta != 0.0) {
            x += p.beta * c[o];
        }
        c[o] = x;
    }
}

// writes row `row` of an invocation's 4 x 4 block (columns col, col + 16, col + 32, col + 48)
fn store_row(row: u32, col: u32, base: u32, v: vec4<f32>) {
    store(row, col, base, v.x);
    store(row, col + 16u, base, v.y);
    store(row, col + 32u, base, v.z);
    store(row, col + 48u, base, v.w);
}

// stores the invocation's block: C = alpha t + beta C (slice z of split K at C + z c_stride)
fn store_tile(lid: vec3<u32>, wid: vec3<u32>, t: Tile) {
    let row = wid.y * TM + lid.y;
    let col = wid.x * TM + lid.x;
    let base = p.c_off + wid.z * p.c_stride;
    store_row(row, col, base, t.r0);
    store_row(row + 16u, col, base, t.r1);
    store_row(row + 32u, col, base, t.r2);
    store_row(row + 48u, col, base, t.r3);
}
