// Sorts every row of a CSR index array in place, ascending: one workgroup per row, a bitonic network run over
// the row in storage memory. The network is the variant whose comparisons all put the smaller value first
// (each merge stage opens with a flip: position a against the mirror of a in its block), so a row of any
// length sorts as if padded with +infinity: a comparison that reaches past the row's end never swaps and is
// skipped. A storage barrier separates the passes; the row's length is loaded uniformly (the loops around the
// barriers must be uniform). `row_offset` chunks long row sets under the dispatch limit.

struct Params {
    rows: u32,
    row_offset: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> indptr: array<u32>;
@group(0) @binding(2) var<storage, read_write> indices: array<u32>;

const W: u32 = 64u;
var<workgroup> row_start: u32;
var<workgroup> row_len: u32;

// compares and orders positions a < b of the row at `base`, if b lies inside it
fn order(base: u32, len: u32, a: u32, b: u32) {
    if (b < len) {
        let x = indices[base + a];
        let y = indices[base + b];
        if (x > y) {
            indices[base + a] = y;
            indices[base + b] = x;
        }
    }
}

@compute @workgroup_size(64, 1, 1)
fn sort_rows(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let r = p.row_offset + wid.x;
    if (lid.x == 0u) {
        if (r < p.rows) {
            row_start = indptr[r];
            row_len = indptr[r + 1u] - indptr[r];
        } else {
            row_start = 0u;
            row_len = 0u;
        }
    }
    let base = workgroupUniformLoad(&row_start);
    let len = workgroupUniformLoad(&row_len);
    var size = 1u;
    while (size < len) {
        size = size * 2u;
    }
    // size: the row's length rounded up to a power of two; size / 2 comparisons per pass
    for (var block = 2u; block <= size; block = block * 2u) {
        let half = block / 2u;
        for (var q = lid.x; q < size / 2u; q += W) {
            let a = (q / half) * block + q % half;
            order(base, len, a, (q / half) * block + block - 1u - q % half);
        }
        storageBarrier();
        for (var stride = half / 2u; stride > 0u; stride = stride / 2u) {
            for (var q = lid.x; q < size / 2u; q += W) {
                let a = (q / stride) * 2u * stride + q % stride;
                order(base, len, a, a + stride);
            }
            storageBarrier();
        }
    }
}
