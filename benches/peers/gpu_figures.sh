#!/usr/bin/env bash
# The GPU figures of docs/GPU.md in one run on a machine with a GPU (a Vulkan driver, and PyTorch with CUDA
# for the peer), including one without a Rust toolchain: build the binaries where cargo is, copy them with
# the checkout, run them there.
#
#   bash benches/peers/gpu_figures.sh build [BIN]            # benches/gpu.rs and the train example, built
#                                                            # with --features gpu and stripped, into BIN
#                                                            # (default target/gpu-bin)
#   bash benches/peers/gpu_figures.sh run BIN [OUT] [PARTS]  # from the checkout's root: PARTS (default all
#                                                            # four, comma-separated) into OUT (default
#                                                            # target/gpu-figures)
#
# The parts, each into its own file of OUT:
#   bench    bench.txt    criterion medians of benches/gpu.rs on the GPU beside the CPU (RECGOAT_BENCH_FILTER:
#                         a criterion filter, e.g. "InfoNCE"; RECGOAT_BENCH_QUICK=1 on a software adapter)
#   profile  profile.txt  device time per kernel of the same problems (RECGOAT_GPU_PROFILE=1, not timed)
#   torch    torch.txt    benches/peers/gpu_torch.py on the same problems, with torch.json
#   train    train.txt    10 epochs of recgoat() and of lightgcn() with the GPU backend (seconds per epoch,
#                         evaluation included), results under OUT/train-*
# and gpu.txt, the adapter as nvidia-smi sees it (when there is one). Quote only figures of one run, and
# the CPU column beside them as that machine's own.
set -euo pipefail
cd "$(dirname "$0")/../.."

usage() {
    sed -n 2,21p "$0" >&2
    exit 2
}

build() {
    local bin=${1:-target/gpu-bin}
    mkdir -p "$bin"
    # the benchmark's executable, as cargo reports it
    local exe
    exe=$(cargo bench --features gpu --bench gpu --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])
')
    [ -n "$exe" ] || { echo "no benchmark executable from cargo bench --no-run" >&2; exit 1; }
    cp "$exe" "$bin/gpu-bench"
    cargo build --release --features gpu --example train
    cp target/release/examples/train "$bin/train"
    strip "$bin/gpu-bench" "$bin/train"
    ls -l "$bin"
}

run() {
    local bin=${1:?the folder that build filled}
    local out=${2:-target/gpu-figures}
    local parts=${3:-bench,profile,torch,train}
    mkdir -p "$out"
    # the binaries read the bundled data from this checkout, wherever they were built
    export RECGOAT_DATA_DIR="$PWD/data"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt"
    fi
    local filter=${RECGOAT_BENCH_FILTER:-}
    for part in ${parts//,/ }; do
        echo "=== $part" >&2
        case $part in
        bench) "$bin/gpu-bench" --bench $filter 2>&1 | tee "$out/bench.txt" ;;
        profile) RECGOAT_GPU_PROFILE=1 "$bin/gpu-bench" --bench profile-only 2>&1 | tee "$out/profile.txt" ;;
        torch) python3 benches/peers/gpu_torch.py "$out/torch.json" 2>&1 | tee "$out/torch.txt" ;;
        train)
            for preset in recgoat lightgcn; do
                "$bin/train" --data "$RECGOAT_DATA_DIR/lfm2k" --preset "$preset" --backend gpu --epochs 10 \
                    --baseline none --seeds 1 --out "$out/train-$preset"
            done 2>&1 | tee "$out/train.txt"
            ;;
        *) usage ;;
        esac
    done
}

case ${1:-} in
build) shift; build "$@" ;;
run) shift; run "$@" ;;
*) usage ;;
esac
