#!/usr/bin/env bash
# Builds the SmoothGEMM kernels, their checker and their benchmark directly with nvcc (the GPU
# machine lacks the Debian packages the CMake build needs), then: resource report, SASS check
# for HGMMA, correctness check, memcheck on small shapes, benchmark. Results go to $OUT.
# Usage (repo root): OUT=/some/dir bench/cuda/run_gemm.sh [--quick]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gemm_out}
BUILD=${BUILD:-/tmp/gemm_build}
QUICK=${1:-}
mkdir -p "$OUT" "$BUILD"
FLAGS=(-gencode=arch=compute_90a,code=sm_90a -O3 -std=c++20 -I. -Isrc)
LIB_SRCS=(src/xyserve/backend/cuda/gemm.cu src/xyserve/backend/cuda/kernels/gemm_stream.cu
          src/xyserve/backend/cuda/kernels/gemm_wgmma.cu)

# Objects in parallel: the kernels' TUs are the slow ones.
pids=()
for src in "${LIB_SRCS[@]}" bench/cuda/gemm_check.cu bench/cuda/gemm_bench.cu; do
  obj="$BUILD/$(basename "$src" .cu).o"
  nvcc "${FLAGS[@]}" -Xptxas -v -c "$src" -o "$obj" >"$obj.log" 2>&1 &
  pids+=($!)
done
fail=0
for pid in "${pids[@]}"; do wait "$pid" || fail=1; done
cat "$BUILD"/*.log >"$OUT/ptxas.txt"
if [ "$fail" != 0 ]; then cat "$OUT/ptxas.txt"; echo "BUILD FAILED"; exit 1; fi
LIB_OBJS=("$BUILD/gemm.o" "$BUILD/gemm_stream.o" "$BUILD/gemm_wgmma.o")
nvcc "${FLAGS[@]}" -o "$BUILD/gemm_check" "$BUILD/gemm_check.o" "${LIB_OBJS[@]}" -lcublasLt -lcublas || exit 1
nvcc "${FLAGS[@]}" -o "$BUILD/gemm_bench" "$BUILD/gemm_bench.o" "${LIB_OBJS[@]}" -lcublasLt -lcublas || exit 1
grep -E "registers|spill" "$OUT/ptxas.txt" | sort | uniq -c | head -20

echo "== SASS: HGMMA instructions in the wgmma kernel, local memory in all kernels"
cuobjdump -sass "$BUILD/gemm_wgmma.o" >"$BUILD/wgmma.sass"
echo "HGMMA: $(grep -c HGMMA "$BUILD/wgmma.sass")  LDL/STL: $(cuobjdump -sass "$BUILD/gemm_check" | grep -cE 'LDL|STL')"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv

echo "== correctness"
timeout 150 "$BUILD/gemm_check" $QUICK 2>&1 | tee "$OUT/check.txt"
check_rc=${PIPESTATUS[0]}
if [ -z "$QUICK" ]; then
  echo "== compute-sanitizer memcheck (small shapes)"
  timeout 120 compute-sanitizer --tool memcheck "$BUILD/gemm_check" --small 2>&1 | tail -5 | tee "$OUT/memcheck.txt"
fi

echo "== benchmark"
timeout ${BENCH_TIMEOUT:-300} "$BUILD/gemm_bench" --csv "$OUT/gemm_bench.csv" $QUICK 2>&1 | tee "$OUT/bench.txt"
echo "gemm_check exit status: $check_rc"
