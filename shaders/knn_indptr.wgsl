// The kNN graph's row offsets from its row lengths, on the device: row i holds `base` entries (its k
// neighbours and its self loop if asked) plus extra[i] reverse edges (knn_degrees.wgsl), and
//   indptr[0] = 0,  indptr[i + 1] = indptr[i] + base + extra[i].
// One workgroup of 256 invocations: each sums a contiguous chunk of rows, the 256 chunk sums are scanned in
// workgroup memory, then each invocation writes its chunk's offsets.

struct Params {
    n: u32,
    base: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> extra: array<u32>;
@group(0) @binding(2) var<storage, read_write> indptr: array<u32>;

const W: u32 = 256u;
var<workgroup> sums: array<u32, 256>;

@compute @workgroup_size(256, 1, 1)
fn knn_indptr(@builtin(local_invocation_id) lid: vec3<u32>) {
    let chunk = (p.n + W - 1u) / W;
    let start = min(lid.x * chunk, p.n);
    let end = min(start + chunk, p.n);
    var s = 0u;
    for (var i = start; i < end; i++) {
        s += p.base + extra[i];
    }
    sums[lid.x] = s;
    workgroupBarrier();
    // inclusive scan of the chunk sums (Hillis-Steele: read, barrier, write, barrier)
    for (var d = 1u; d < W; d = d * 2u) {
        var add = 0u;
        if (lid.x >= d) {
            add = sums[lid.x - d];
        }
        workgroupBarrier();
        sums[lid.x] += add;
        workgroupBarrier();
    }
    var at = sums[lid.x] - s;
    if (lid.x == 0u) {
        indptr[0] = 0u;
    }
    for (var i = start; i < end; i++) {
        at += p.base + extra[i];
        indptr[i + 1u] = at;
    }
}
