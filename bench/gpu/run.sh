#!/usr/bin/env bash
# The GPU benchmark of issue 20 on a lent device machine (one NVIDIA GPU, CUDA 13 and cuDNN 9 as
# `nvidia-*` wheels in a Python venv, no onnxruntime-gpu). The onnxruntime-gpu libraries are too
# large for one call, so `bench/gpu/prepare.sh` packs them, with the release examples, into chunks
# under `.gpu/` (ignored through .git/info/exclude), and consecutive calls on one warm machine
# carry one chunk each (GPU_DIR, default .gpu, names the folder):
#
#   bench/gpu/run.sh store        # keep the chunks carried so far (.gpu/ort.NN) in /tmp/ortc
#   bench/gpu/run.sh bench        # join and check the chunks, set up, run the benchmarks
#
# `bench` writes its logs under $OUT (or target/gpu-bench when OUT is unset). Environment:
# VENV_PY (default /opt/torch/.venv/bin/python3) is the Python whose site-packages hold the
# nvidia-* wheels; ORT_ROOT (default /tmp/ort) is where the libraries are unpacked.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE=${STORE:-/tmp/ortc}
ORT_ROOT=${ORT_ROOT:-/tmp/ort}
VENV_PY=${VENV_PY:-/opt/torch/.venv/bin/python3}
OUT=${OUT:-target/gpu-bench}
GPU_DIR=${GPU_DIR:-.gpu}
mkdir -p "$STORE" "$OUT"

# Copies the chunks carried so far (.gpu/ort.01, .gpu/ort.02, ...) to $STORE.
store() {
    local f
    for f in "$GPU_DIR"/ort.[0-9]*; do [ -e "$STORE/${f##*/}" ] || cp "$f" "$STORE/"; done
    ls -l "$STORE"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
}

# The `lib/` folders of the nvidia-* wheels, joined with ':'.
cuda_lib_path() {
    local site
    site=$("$VENV_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    { find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' 2>/dev/null || true; } | sort -u | paste -sd:
}

unpack() {
    local want
    want=$(cat "$GPU_DIR/SHA256")
    mkdir -p "$ORT_ROOT"
    store
    local got
    got=$(cat "$STORE"/ort.[0-9]* | sha256sum | cut -d' ' -f1)
    if [ "$got" != "$want" ]; then
        echo "chunks in $STORE do not add up: sha256 $got, expected $want" >&2
        ls -l "$STORE" >&2
        exit 3
    fi
    cat "$STORE"/ort.[0-9]* | xz -d | tar -x -C "$ORT_ROOT"
    ln -sf libonnxruntime.so.1.31.1 "$ORT_ROOT/libonnxruntime.so"
    ls -l "$ORT_ROOT"
}

bench() {
    unpack
    local cuda
    cuda=$(cuda_lib_path)
    echo "CUDA library folders: $cuda"
    export LD_LIBRARY_PATH="$ORT_ROOT:$cuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export ORT_DYLIB_PATH="$ORT_ROOT/libonnxruntime.so.1.31.1"
    echo "unresolved libraries of the CUDA provider:"
    ldd "$ORT_ROOT/libonnxruntime_providers_cuda.so" | grep 'not found' || echo "  none"
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed"
    local bin=$GPU_DIR/bin
    chmod +x "$bin"/*
    local llava=(--llava models/fixtures/llava --batches 1,4,8 --tokens 16
        --bart models/fixtures/bart --bart-batches 1,4,8 --bart-beams 4)
    for p in cuda cpu; do
        echo "== batch_speed --provider $p"
        timeout 100 "$bin/batch_speed" --provider "$p" "${llava[@]}" 2>&1 | tee "$OUT/batch_speed-$p.txt" || echo "batch_speed $p failed: $?"
    done
    # BART's KV cache on the host against bound (issue 20, item 3): texts/s and host<->device
    # bytes per decode step, both providers together.
    echo "== bart cache on host / bound"
    grep -h '^bart ' "$OUT/batch_speed-cuda.txt" "$OUT/batch_speed-cpu.txt" || echo "no bart lines in batch_speed's output"
    # SD's UNet conditioning rebuilt on the host every step against bound once per run: s/image
    # and host<->device bytes per step (issue 20, item 3).
    for p in cuda cpu; do
        echo "== batch_speed --sd --provider $p"
        timeout 100 "$bin/batch_speed" --provider "$p" --llava none --sd models/fixtures/sd15_ip --sd-batch 4 \
            --sd-steps 10 2>&1 | tee "$OUT/batch_speed-sd-$p.txt" || echo "batch_speed --sd $p failed: $?"
    done
    for p in cuda cpu; do
        echo "== sd_batch_speed $p"
        timeout 100 "$bin/sd_batch_speed" models/fixtures/sd15_ip 2 8 10 3 1 "$p" 2>&1 | tee "$OUT/sd_batch_speed-$p.txt" || echo "sd_batch_speed $p failed: $?"
    done
    echo "== sd_batch_speed fp16 cuda"
    timeout 100 "$bin/sd_batch_speed" models/fixtures/sd15_ip-fp16 2 8 10 3 1 cuda 2>&1 | tee "$OUT/sd_batch_speed-fp16-cuda.txt" || echo "sd_batch_speed fp16 failed: $?"
}

case "${1:-}" in
    store) store ;;
    bench) bench ;;
    cuda-path) cuda_lib_path ;;
    *) echo "usage: $0 store | bench | cuda-path" >&2; exit 2 ;;
esac
