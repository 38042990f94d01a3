// Column sums of a (rows x d), optionally of the elementwise product a * b: out_c = sum_r a_rc (b_rc).
// A workgroup covers 64 columns (coalesced lanes) with 4 row phases over one slice of the rows (workgroup
// y covers rows [y chunk, (y + 1) chunk) and writes out[y d + c], so tall matrices spread over many
// workgroups; the caller sums the slices with gemm_sum.wgsl). The 4 partial sums per column are added in
// workgroup memory after a barrier, in a fixed order (deterministic).

struct Params {
    d: u32,
    rows: u32,
    col_offset: u32,
    // bit 0: multiply by b
    flags: u32,
    // rows per slice
    chunk: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

const LANES: u32 = 64u;
const PHASES: u32 = 4u;
var<workgroup> part: array<array<f32, 64>, 4>;

@compute @workgroup_size(64, 4, 1)
fn col_sums(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let c = p.col_offset + wid.x * LANES + lid.x;
    let live = c < p.d;
    let product = (p.flags & 1u) != 0u;
    let r_end = min(p.rows, (wid.y + 1u) * p.chunk);
    var s = 0.0;
    if (live) {
        for (var r = wid.y * p.chunk + lid.y; r < r_end; r += PHASES) {
            let o = r * p.d + c;
            if (product) {
                s += a[o] * b[o];
            } else {
                s += a[o];
            }
        }
    }
    part[lid.y][lid.x] = s;
    workgroupBarrier();
    if (live && lid.y == 0u) {
        out[wid.y * p.d + c] = ((part[0][lid.x] + part[1][lid.x]) + part[2][lid.x]) + part[3][lid.x];
    }
}
