#!/usr/bin/env bash
# Builds the SmoothGEMM kernels, their checker and their benchmark directly with nvcc (the GPU
# machine lacks the Debian packages the CMake build needs), then: resource report, SASS check
# for HGMMA, correctness check (PDL ordering included), memcheck on small shapes, benchmark
# (sweep, gemv ablation, decode-layer chain). Results go to $OUT.
# Usage (repo root): OUT=/some/dir bench/cuda/run_gemm.sh [--quick]
#   --quick: fixed check cases, no memcheck, M in {1, 8, 32, 64, 777, 4096}: about 3 minutes.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gemm_out}
BUILD=${BUILD:-/tmp/gemm_build}
QUICK=${1:-}
mkdir -p "$OUT" "$BUILD"
FLAGS=(-gencode=arch=compute_90a,code=sm_90a -O3 -std=c++20 -I. -Isrc)
K=src/xyserve/backend/cuda/kernels
LIB_SRCS=(src/xyserve/backend/cuda/gemm.cu src/xyserve/backend/cuda/tensor_maps.cpp $K/gemm_gemv.cu $K/gemm_stream.cu
          $K/gemm_wgmma.cu $K/gemm_wgmma_sk.cu $K/gemm_wgmma_dp.cu $K/gemm_wgmma_swap.cu)
# The decode-layer chain of gemm_bench runs the backend's norm and SiLU kernels.
CHAIN_SRCS=($K/rms_norm.cu $K/silu_mul.cu)

# Objects in parallel: the kernels' TUs are the slow ones.
pids=()
for src in "${LIB_SRCS[@]}" "${CHAIN_SRCS[@]}" bench/cuda/gemm_check.cu bench/cuda/gemm_bench.cu; do
  obj="$BUILD/$(basename "${src%.*}").o"
  nvcc "${FLAGS[@]}" -Xptxas -v -c "$src" -o "$obj" >"$obj.log" 2>&1 &
  pids+=($!)
done
fail=0
for pid in "${pids[@]}"; do wait "$pid" || fail=1; done
cat "$BUILD"/*.log >"$OUT/ptxas.txt"
if [ "$fail" != 0 ]; then cat "$OUT/ptxas.txt"; echo "BUILD FAILED"; exit 1; fi
LIB_OBJS=("$BUILD/gemm.o" "$BUILD/tensor_maps.o" "$BUILD/gemm_gemv.o" "$BUILD/gemm_stream.o" "$BUILD/gemm_wgmma.o" "$BUILD/gemm_wgmma_sk.o"
          "$BUILD/gemm_wgmma_dp.o" "$BUILD/gemm_wgmma_swap.o")
nvcc "${FLAGS[@]}" -o "$BUILD/gemm_check" "$BUILD/gemm_check.o" "${LIB_OBJS[@]}" -lcublasLt -lcublas || exit 1
nvcc "${FLAGS[@]}" -o "$BUILD/gemm_bench" "$BUILD/gemm_bench.o" "${LIB_OBJS[@]}" "$BUILD/rms_norm.o" \
  "$BUILD/silu_mul.o" -lcublasLt -lcublas || exit 1
echo "== registers (ptxas): gemv_kernel<tokens, groups, unroll>, then every kernel"
awk '/Compiling entry function .*gemv_kernelILi/ { match($0, /gemv_kernelILi[0-9]+ELi[0-9]+ELi[0-9]+E/);
       name = substr($0, RSTART, RLENGTH) } name && /Used [0-9]+ registers/ { print name ": " $0; name = "" }' \
  "$OUT/ptxas.txt"
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
