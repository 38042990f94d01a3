// The k largest entries of each similarity row: row r of s belongs to node row_base + r, its own column is
// skipped, and its list goes to out[node k ..], ordered by value descending then index ascending (so ties
// are deterministic). One workgroup per row: each invocation keeps a sorted private list of its strided
// columns' best k, then k rounds pick the best head among the 64 lists by a tree reduction in workgroup
// memory (a barrier at every level).

struct Params {
    rows: u32,
    n: u32,
    k: u32,
    row_offset: u32,
    row_base: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> s: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<u32>;

const W: u32 = 64u;
const KMAX: u32 = 64u;
const NONE: u32 = 0xffffffffu;
var<workgroup> best_v: array<f32, 64>;
var<workgroup> best_i: array<u32, 64>;
var<workgroup> best_t: array<u32, 64>;

// (v1, i1) ranks before (v2, i2)
fn before(v1: f32, i1: u32, v2: f32, i2: u32) -> bool {
    if (i2 == NONE) {
        return i1 != NONE;
    }
    if (i1 == NONE) {
        return false;
    }
    return v1 > v2 || (v1 == v2 && i1 < i2);
}

@compute @workgroup_size(64, 1, 1)
fn topk_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    let live = r < p.rows;
    let node = p.row_base + r;
    var lv: array<f32, 64>;
    var li: array<u32, 64>;
    for (var q = 0u; q < KMAX; q++) {
        lv[q] = 0.0;
        li[q] = NONE;
    }
    if (live) {
        for (var j = lid.x; j < p.n; j += W) {
            if (j == node) {
                continue;
            }
            let v = s[r * p.n + j];
            // columns arrive in ascending order: a tie goes after the kept equal values
            if (!before(v, j, lv[p.k - 1u], li[p.k - 1u])) {
                continue;
            }
            var q = p.k - 1u;
            while (q > 0u && before(v, j, lv[q - 1u], li[q - 1u])) {
                lv[q] = lv[q - 1u];
                li[q] = li[q - 1u];
                q--;
            }
            lv[q] = v;
            li[q] = j;
        }
    }
    var head = 0u;
    for (var round = 0u; round < p.k; round++) {
        var hv = 0.0;
        var hi = NONE;
        if (head < p.k) {
            hv = lv[head];
            hi = li[head];
        }
        best_v[lid.x] = hv;
        best_i[lid.x] = hi;
        best_t[lid.x] = lid.x;
        workgroupBarrier();
        for (var half = W / 2u; half > 0u; half = half / 2u) {
            if (lid.x < half) {
                let o = lid.x + half;
                if (before(best_v[o], best_i[o], best_v[lid.x], best_i[lid.x])) {
                    best_v[lid.x] = best_v[o];
                    best_i[lid.x] = best_i[o];
                    best_t[lid.x] = best_t[o];
                }
            }
            workgroupBarrier();
        }
        let winner = best_t[0];
        let idx = best_i[0];
        workgroupBarrier();
        if (winner == lid.x) {
            head++;
        }
        if (live && lid.x == 0u) {
            out[node * p.k + round] = idx;
        }
    }
}
