// requires: lib/gemm_tile.wgsl
// InfoNCE's scaled similarities with their row statistics in the same pass: S = alpha X Y^T (lib/gemm_tile.wgsl,
// beta 0, no split K), stored once, and for every row of each 64-column tile the tile's maximum and its sum of
// exp(s - maximum), written to part[(row * aux1 + aux0 + tile) * 2 + {0, 1}] (aux0: the first tile's slot,
// aux1: slots per row), which xent_lse.wgsl folds into the row's log-sum-exp. Grid: (ceil(n / 64),
// ceil(m / 64), 1).

@group(0) @binding(4) var<storage, read_write> part: array<f32>;

// red[row of the tile][tx]: one value per invocation and row, reduced along tx
var<workgroup> red: array<array<f32, 16>, 64>;

const LOWEST: f32 = -3.4e38;

fn load_a(i: u32, q: u32, k_end: u32) -> f32 {
    return a_at(i, q, k_end);
}

// the maximum of an invocation's row values at columns col + 16 j inside the matrix
fn max4(v: vec4<f32>, col: u32) -> f32 {
    var m = LOWEST;
    if (col < p.n) { m = max(m, v.x); }
    if (col + 16u < p.n) { m = max(m, v.y); }
    if (col + 32u < p.n) { m = max(m, v.z); }
    if (col + 48u < p.n) { m = max(m, v.w); }
    return m;
}

// sum of exp(v - mx) over the same columns
fn sum4(v: vec4<f32>, col: u32, mx: f32) -> f32 {
    var s = 0.0;
    if (col < p.n) { s += exp(v.x - mx); }
    if (col + 16u < p.n) { s += exp(v.y - mx); }
    if (col + 32u < p.n) { s += exp(v.z - mx); }
    if (col + 48u < p.n) { s += exp(v.w - mx); }
    return s;
}

fn red_max(r: u32) -> f32 {
    var m = LOWEST;
    for (var q = 0u; q < 16u; q++) {
        m = max(m, red[r][q]);
    }
    return m;
}

fn red_sum(r: u32) -> f32 {
    var s = 0.0;
    for (var q = 0u; q < 16u; q++) {
        s += red[r][q];
    }
    return s;
}

// the statistics of tile `tile` of row `row`
fn put_slot(row: u32, tile: u32, mx: f32, se: f32) {
    if (row < p.m) {
        let o = (row * p.aux1 + p.aux0 + tile) * 2u;
        part[o] = mx;
        part[o + 1u] = se;
    }
}

@compute @workgroup_size(16, 16, 1)
fn xent_logits(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let t = gemm_tile(lid, wid);
    store_tile(lid, wid, t);
    // the values as stored (alpha applied the same way)
    let s0 = p.alpha * t.r0;
    let s1 = p.alpha * t.r1;
    let s2 = p.alpha * t.r2;
    let s3 = p.alpha * t.r3;
    let col = wid.x * TM + lid.x;
    let ty = lid.y;
    red[ty][lid.x] = max4(s0, col);
    red[ty + 16u][lid.x] = max4(s1, col);
    red[ty + 32u][lid.x] = max4(s2, col);
    red[ty + 48u][lid.x] = max4(s3, col);
    workgroupBarrier();
    let m = vec4<f32>(red_max(ty), red_max(ty + 16u), red_max(ty + 32u), red_max(ty + 48u));
    workgroupBarrier();
    red[ty][lid.x] = sum4(s0, col, m.x);
    red[ty + 16u][lid.x] = sum4(s1, col, m.y);
    red[ty + 32u][lid.x] = sum4(s2, col, m.z);
    red[ty + 48u][lid.x] = sum4(s3, col, m.w);
    workgroupBarrier();
    if (lid.x == 0u) {
        let row = wid.y * TM + ty;
        put_slot(row, wid.x, m.x, red_sum(ty));
        put_slot(row + 16u, wid.x, m.y, red_sum(ty + 16u));
        put_slot(row + 32u, wid.x, m.z, red_sum(ty + 32u));
        put_slot(row + 48u, wid.x, m.w, red_sum(ty + 48u));
    }
}
