// Inline-PTX pieces of the Hopper attention kernel (meta_attention_wgmma.cu) that the GEMM's
// wrappers (gemm_ptx.cuh: mbarrier, setmaxnreg, wgmma fence/commit/wait, cp.async, griddepcontrol;
// and gemm_wgmma_ptx.cuh: m64n128k16 with both operands in shared memory) do not cover: wgmma with
// A in registers and B transposed (P V), shared-memory descriptors with a leading byte offset,
// the 3-D TMA load of paged K/V, the 4-D TMA store of output rows, stmatrix, cp.async completion
// on an mbarrier, the proxy fence,
// ex2.approx. Also the shared-memory layout of a 128B-swizzled tile, so that the kernel and its
// building-block test (tests/cuda/attention_wgmma_blocks_test.cu) place and fetch elements by the
// same function (the KV cache's tensor map is host code: backend/cuda/tensor_maps.h). One
// instruction per wrapper; the PTX ISA section is named beside it. The register lists of the
// wgmma wrappers were written by a throwaway script.
#pragma once

#include <cuda.h>  // CUtensorMap
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "xyserve/backend/cuda/kernels/gemm_ptx.cuh"
#include "xyserve/backend/cuda/kernels/gemm_wgmma_ptx.cuh"
#include "xyserve/backend/cuda/kernels/meta_attention_ptx.cuh"

namespace xy::cuda::wgmma {

// --- shared-memory layout (PTX 9.7.15.5.1, "Shared Memory Matrix Layout", 128B swizzle) -------
// A tile of `rows` head vectors (bf16, head_dim a multiple of 64) is stored as head_dim / 64
// column blocks, each [rows][64] with 128-byte rows; inside each 1024-byte group of 8 rows, the
// 16-byte chunk c of row r sits at chunk position c ^ (r % 8). The tile base must be 1024-byte
// aligned (the swizzle reads address bits 4-9). This is the layout wgmma reads both as a K-major
// operand (Q and K: rows are M or N, the head dimension is K) and as an MN-major one (V: rows
// are K, the head dimension is N).
__host__ __device__ constexpr uint32_t sw128_offset(int row, int chunk, int rows) {
  return uint32_t((chunk / 8) * rows * 128 + row * 128 + (((chunk % 8) ^ (row % 8)) << 4));
}

// Matrix descriptor (PTX 9.7.15.5.1.1) of such a tile at shared address `addr`: stride byte
// offset 1024 (from one 8-row group to the next); leading byte offset `lbo`, which a K-major
// operand whose K fits one 128-byte row ignores, and an MN-major one reads as the distance from
// one 64-element column block to the next (rows * 128 bytes). Base offset 0: 1024-aligned tiles.
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr, uint32_t lbo) {
  uint64_t desc = (addr & 0x3FFFF) >> 4;
  desc |= uint64_t((lbo & 0x3FFFF) >> 4) << 16;
  desc |= uint64_t(1024 >> 4) << 32;
  desc |= uint64_t{1} << 62;  // 128-byte swizzle
  return desc;
}

// --- wgmma with A in registers, B transposed (PTX 9.7.15.5, wgmma.mma_async) ------------------
// d[64xN] += a[64x16] · b[16xN], bf16 inputs, fp32 accumulators; imm-trans-b = 1: B is read
// MN-major (its N elements contiguous, as V [keys][head_dim] is). `a` is this thread's A fragment,
// laid out as the accumulator of m64nNk16 over 16 columns (rows warp*16 + lane/4 (+8), columns
// 2*(lane%4) (+1, +8)), so S's accumulators pack into P's fragment without moving between lanes.
// scale_d = 0 ignores d's old value.
__device__ __forceinline__ void wgmma_m64n128k16_rs_tn(float (&d)[64], const uint32_t (&a)[4],
                                                         uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, "
      "%45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, "
      "%63}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
        "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
        "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
        "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

__device__ __forceinline__ void wgmma_m64n64k16_rs_tn(float (&d)[32], const uint32_t (&a)[4],
                                                         uint64_t desc_b, int scale_d) {
  asm volatile(
      "{\n"
      ".reg .pred p;\n"
      "setp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, "
      "%9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, "
      "%27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n"
      "}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
        "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
        "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(scale_d));
}

// --- TMA, 3-D tile (PTX 9.7.9.27, cp.async.bulk.tensor) ---------------------------------------
// Loads the box of `map` at coordinates (c0 innermost, c1, c2) into shared memory at `dst`; its
// bytes count towards the transaction count of the mbarrier at `bar`. Writes through the async
// proxy, as wgmma reads: once the mbarrier phase completes, no proxy fence is needed.
__device__ __forceinline__ void tma_load_3d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2) {
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5}], "
      "[%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2)
      : "memory");
}

// The same for a 4-D box (c0 innermost).
__device__ __forceinline__ void tma_load_4d(uint32_t dst, const CUtensorMap* map, uint32_t bar, int c0, int c1,
                                            int c2, int c3) {
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4, %5, "
      "%6}], [%2];\n" ::"r"(dst),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(bar), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
      : "memory");
}

// --- TMA store, 4-D tile (PTX 9.7.9.27, cp.async.bulk.tensor, .bulk_group completion) -----------
// Stores the box of `map` at (c0 innermost, c1, c2, c3) from shared memory at `src`, in the
// layout the same box's load writes (swizzle included). Reads shared memory through the async
// proxy: the generic writes it reads need fence.proxy.async first. Completes through
// bulk_commit_group / bulk_wait_group_read (gemm_ptx.cuh).
__device__ __forceinline__ void tma_store_4d(const CUtensorMap* map, uint32_t src, int c0, int c1, int c2, int c3) {
  asm volatile("cp.async.bulk.tensor.4d.global.shared::cta.bulk_group [%0, {%2, %3, %4, %5}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(src), "r"(c0), "r"(c1), "r"(c2), "r"(c3)
               : "memory");
}

// --- stmatrix (PTX 9.7.14.5.16, stmatrix.sync.aligned.m8n8.x4.shared.b16) -----------------------
// Four 8x8 bf16 matrices from the warp's registers into shared memory: register i of lane l holds
// row l / 4, columns 2 (l % 4) and + 1 of matrix i (the mma accumulator fragment, packed), and
// lanes 8 i .. 8 i + 7 give the addresses of matrix i's 8 rows (16 bytes each).
__device__ __forceinline__ void stmatrix_x4(uint32_t addr, uint32_t r0, uint32_t r1, uint32_t r2, uint32_t r3) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};\n" ::"r"(addr), "r"(r0), "r"(r1),
               "r"(r2), "r"(r3)
               : "memory");
}

// --- cp.async completion on an mbarrier (PTX ISA: cp.async.mbarrier.arrive) --------------------
// Arrives on `bar` once every cp.async this thread issued before has landed. Without .noinc the
// pending count is raised by one first, so the async arrival cancels it: the phase still waits
// for the thread's ordinary arrive, which (release) also publishes its plain shared stores.
__device__ __forceinline__ void cp_async_mbarrier_arrive(uint64_t* bar) {
  asm volatile("cp.async.mbarrier.arrive.shared::cta.b64 [%0];\n" ::"r"(ptx::smem_addr(bar)) : "memory");
}
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::: "memory"); }

// --- proxy fence (PTX ISA: membar/fence, fence.proxy.async) ------------------------------------
// cp.async (the query tile) writes shared memory through the generic proxy and wgmma reads it
// through the async proxy: after acquiring the tile, the reader orders the two before its wgmmas.
__device__ __forceinline__ void fence_proxy_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// --- 2^x (PTX ISA: ex2.approx.ftz.f32); 2^-inf = +0, which masked scores rely on ---------------
__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

using attn::pack_bf16;  // two fp32 to one bf16x2 register (meta_attention_ptx.cuh)

// Pins a register between asynchronous wgmma uses: the compiler may not move plain reads or
// writes of `x` across this point (it sees an opaque read-modify-write), so accumulator accesses
// stay after the wgmma.wait that completes them and before the wgmma that reads them.
__device__ __forceinline__ void fence_operand(float& x) { asm volatile("" : "+f"(x)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t& x) { asm volatile("" : "+r"(x)::"memory"); }

}  // namespace xy::cuda::wgmma
