#!/usr/bin/env bash
# Packs what bench/gpu/run.sh needs on the device machine into GPU_DIR (default .gpu, which
# .git/info/exclude must ignore): the release examples in bin/, and the onnxruntime-gpu
# libraries as one tar.xz split into chunks ort.01, ort.02, ... of CHUNK_MIB (default 45) MiB,
# each small enough to travel in one device call beside the working tree, with SHA256 of the
# whole archive.
#
#   bench/gpu/prepare.sh LIB_DIR        # LIB_DIR holds libonnxruntime.so.1.31.1,
#                                       # libonnxruntime_providers_shared.so and
#                                       # libonnxruntime_providers_cuda.so (from the
#                                       # onnxruntime-gpu==1.31.1 wheel's onnxruntime/capi/)
#
# ARCHIVE=path.tar.xz reuses an archive made earlier (xz -9e of 300 MB takes minutes).
set -euo pipefail
cd "$(dirname "$0")/../.."
lib=${1:?usage: $0 LIB_DIR}
GPU_DIR=${GPU_DIR:-.gpu}
CHUNK_MIB=${CHUNK_MIB:-45}
mkdir -p "$GPU_DIR/bin"
archive=${ARCHIVE:-$GPU_DIR/ort.tar.xz}
if [ ! -s "$archive" ]; then
    tar -C "$lib" -cf - libonnxruntime.so.1.31.1 libonnxruntime_providers_shared.so \
        libonnxruntime_providers_cuda.so | xz -9e -T2 > "$archive"
fi
rm -f "$GPU_DIR"/ort.[0-9]*
split -b "${CHUNK_MIB}M" -d -a 2 --numeric-suffixes=1 "$archive" "$GPU_DIR/ort."
sha256sum < "$archive" | cut -d' ' -f1 > "$GPU_DIR/SHA256"
cp target/release/examples/batch_speed target/release/examples/sd_batch_speed "$GPU_DIR/bin/"
ls -l "$GPU_DIR" "$GPU_DIR/bin"
