#!/usr/bin/env bash
# Device command of the attention work (issue 6): builds test_cuda and attention_bench the way
# scripts/gpu-check configures (deps from .deps, carried), runs the GPU tests, then our kernels
# and the PyTorch SDPA baselines in the same run. Logs under $OUT.
#   run (device tool, carry .deps):  bench/cuda/attention_bench.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
out=${OUT:-/tmp/xy-out}
mkdir -p "$out"
deps=$PWD/.deps/root
lib=$deps/usr/lib/x86_64-linux-gnu
export PKG_CONFIG_PATH=$lib/pkgconfig:$deps/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$deps
export LD_LIBRARY_PATH=$lib:${LD_LIBRARY_PATH:-} PATH=$deps/usr/bin:$PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader | tee "$out/device.txt"
date -u | tee -a "$out/device.txt"
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=$deps/usr > "$out/build.log" 2>&1 &&
  cmake --build build-gpu -j "$(nproc)" --target test_cuda attention_bench >> "$out/build.log" 2>&1 ||
  { tail -60 "$out/build.log"; exit 1; }
rm -f "$out/build.log"
status=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  timeout 200 build-gpu/tests/cuda/test_cuda ${GTEST_ARGS:-} > "$out/tests.log" 2>&1; status=$?
  grep -E "^\[  (PASSED|FAILED) |^\[  FAILED|tensor core|\[attention" "$out/tests.log" | head -40
  [ $status -ne 0 ] && tail -50 "$out/tests.log"
fi
build-gpu/bench/cuda/attention_bench --iters ${ITERS:-20} 2>&1 | tee "$out/bench.log"
PYTHONUNBUFFERED=1 timeout 150 python3 tools/attention_baseline.py --iters ${ITERS:-20} 2>&1 | tee "$out/baseline.log"
exit $status
