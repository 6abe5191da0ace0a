// Hopper warpgroup MMA (wgmma, sm_90a only) building blocks: shared-memory matrix descriptors for K-major
// operands in the 128-byte swizzle, the m64n128k16 and m64n256k16 instructions with fp32 accumulation (A
// from shared memory or from registers), and the fences that order them against ordinary loads, stores and
// cp.async. Used by rotate_quantize_sm90.cu and w4a16_wgmma_sm90.cu.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

// wgmma exists only in the arch-specific sm_90a target; the callers (`*_sm90.cu`, compiled for sm_90a alone)
// compile their bodies only where FPQUANT_WGMMA is 1, i.e. not in the host pass.
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define FPQUANT_WGMMA 1
#else
#define FPQUANT_WGMMA 0
#endif

namespace fpquant::cuda {

// Byte offset of 16-bit element (i, k) of a [rows][128] K-major operand in the layout a 128-byte swizzle
// descriptor reads: two 64-element K halves stored one after the other, each [rows][128 B] with the 16-byte
// chunk index XORed by the row index mod 8 (bank-conflict-free for the tensor cores and for row-wise fills).
// Each half must start at a 1024-byte aligned address. Checked on the host by tests/kernels/test_kernel_layouts.py.
__host__ __device__ constexpr int sw128_offset(int i, int k, int rows) {
  return (k / 64) * rows * 128 + i * 128 + ((((k % 64) / 8) ^ (i % 8)) * 16) + (k % 8) * 2;
}

// Descriptor of the 16 (K) x 8-row core matrices starting at shared address `addr`: 128-byte swizzle, 1024 bytes
// between groups of 8 rows (stride byte offset); the leading byte offset is unused for swizzled K-major operands.
// K-step s of 16 elements inside a 64-element half starts 32 * s bytes further (the swizzle is applied to
// absolute address bits, so the start may move inside the 1024-byte pattern).
__device__ __forceinline__ uint64_t sw128_desc(uint32_t addr) {
  return static_cast<uint64_t>((addr & 0x3FFFFu) >> 4) | (static_cast<uint64_t>(1) << 16) |
         (static_cast<uint64_t>(1024 >> 4) << 32) | (static_cast<uint64_t>(1) << 62);
}

__device__ __forceinline__ void wgmma_fence() {
#if FPQUANT_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void wgmma_commit() {
#if FPQUANT_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void wgmma_wait() {
#if FPQUANT_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}

// Makes this thread's generic-proxy shared-memory writes (st.shared, cp.async) visible to the async proxy
// that wgmma reads operands through; follow it with a barrier before the MMA.
__device__ __forceinline__ void fence_proxy_async_shared() {
#if FPQUANT_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Keeps the compiler from moving accesses to accumulator (or register A) values across wgmma issue / wait.
__device__ __forceinline__ void fence_operand(float& r) { asm volatile("" : "+f"(r)::"memory"); }
__device__ __forceinline__ void fence_operand(uint32_t& r) { asm volatile("" : "+r"(r)::"memory"); }

// Warp-specialized register budgets (Hopper): a warpgroup gives registers back (dec) or takes them (inc);
// every warp of the warpgroup executes it. The CTA's total may not exceed what it was launched with.
template <int N>
__device__ __forceinline__ void setmaxnreg_dec() {
#if FPQUANT_WGMMA
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}
template <int N>
__device__ __forceinline__ void setmaxnreg_inc() {
#if FPQUANT_WGMMA
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N));
#endif
}

// Barrier over the 128 threads of one warpgroup (id 1..15; 0 is __syncthreads).
__device__ __forceinline__ void warpgroup_barrier(int id) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(id) : "memory");
}

// Accumulator operand lists of the m64n128k16 (64 registers) and m64n256k16 (128) forms, written out once
// for both helpers below (d is the helper's accumulator array).
#define FPQUANT_WGMMA_D64_REGS "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define FPQUANT_WGMMA_D64_OUTS "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define FPQUANT_WGMMA_D128_REGS "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define FPQUANT_WGMMA_D128_OUTS "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// D (64 x N, fp32, warpgroup fragment) (+)= A (64 x 16 from desc_a) * B (16 x N from desc_b), both K-major,
// N = 128 or 256. Fragment: warp w of the warpgroup holds rows 16w .. 16w+15; lane 4g + q holds, for n-tile
// j = 0 .. N/8 - 1, d[4j], d[4j+1] = (row 16w+g, columns 8j+2q, 8j+2q+1) and d[4j+2], d[4j+3] = (row 16w+g+8,
// same columns).
template <typename AT, int N>
__device__ __forceinline__ void wgmma_m64nNk16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, bool accumulate) {
  static_assert(N == 128 || N == 256, "the instruction shapes used here");
#if FPQUANT_WGMMA
// The bf16 and f16 forms differ only in the type suffix of the instruction.
#define FPQUANT_WGMMA_SS(SHAPE, TYPE, REGS, A, B, P, ...)                                                    \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " P ", 0;\n"                                              \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " {" REGS "}, " A ", " B           \
               ", p, 1, 1, 0, 0;\n}\n"                                                                      \
               : __VA_ARGS__                                                                                \
               : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)))
  constexpr bool bf16 = std::is_same_v<AT, __nv_bfloat16>;
  if constexpr (N == 128) {
    if constexpr (bf16) FPQUANT_WGMMA_SS("m64n128k16", "bf16", FPQUANT_WGMMA_D64_REGS, "%64", "%65", "%66",
        FPQUANT_WGMMA_D64_OUTS);
    else FPQUANT_WGMMA_SS("m64n128k16", "f16", FPQUANT_WGMMA_D64_REGS, "%64", "%65", "%66", FPQUANT_WGMMA_D64_OUTS);
  } else {
    if constexpr (bf16) FPQUANT_WGMMA_SS("m64n256k16", "bf16", FPQUANT_WGMMA_D128_REGS, "%128", "%129", "%130",
        FPQUANT_WGMMA_D128_OUTS);
    else FPQUANT_WGMMA_SS("m64n256k16", "f16", FPQUANT_WGMMA_D128_REGS, "%128", "%129", "%130",
        FPQUANT_WGMMA_D128_OUTS);
  }
#undef FPQUANT_WGMMA_SS
#endif
}

// D (64 x N, fp32) (+)= A (64 x 16, registers) * B (16 x N from desc_b, K-major), N = 128 or 256. A is the
// mma.sync m16n8k16 A fragment per warp (warp w: rows 16w .. 16w+15; lane 4g + q: a[0] = (row g, k 2q, 2q+1),
// a[1] = (row g+8, same k), a[2] = (row g, k 2q+8, 2q+9), a[3] = (row g+8, same k)); D as in wgmma_m64nNk16.
// The hardware reads a[] after the instruction is issued: the registers must stay untouched (fence_operand
// keeps the compiler from reusing them) until a wgmma_wait covers this wgmma.
template <typename AT, int N>
__device__ __forceinline__ void wgmma_m64nNk16_rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b) {
  static_assert(N == 128 || N == 256, "the instruction shapes used here");
#if FPQUANT_WGMMA
#define FPQUANT_WGMMA_RS(SHAPE, TYPE, REGS, A, B, ...)                                                       \
  asm volatile("{\n.reg .pred p;\nsetp.eq.b32 p, 1, 1;\n"                                                  \
               "wgmma.mma_async.sync.aligned." SHAPE ".f32." TYPE "." TYPE " {" REGS "}, {" A "}, " B           \
               ", p, 1, 1, 0;\n}\n"                                                                         \
               : __VA_ARGS__                                                                                \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b))
  constexpr bool bf16 = std::is_same_v<AT, __nv_bfloat16>;
  if constexpr (N == 128) {
    if constexpr (bf16) FPQUANT_WGMMA_RS("m64n128k16", "bf16", FPQUANT_WGMMA_D64_REGS, "%64, %65, %66, %67", "%68",
        FPQUANT_WGMMA_D64_OUTS);
    else FPQUANT_WGMMA_RS("m64n128k16", "f16", FPQUANT_WGMMA_D64_REGS, "%64, %65, %66, %67", "%68",
        FPQUANT_WGMMA_D64_OUTS);
  } else {
    if constexpr (bf16) FPQUANT_WGMMA_RS("m64n256k16", "bf16", FPQUANT_WGMMA_D128_REGS, "%128, %129, %130, %131",
        "%132", FPQUANT_WGMMA_D128_OUTS);
    else FPQUANT_WGMMA_RS("m64n256k16", "f16", FPQUANT_WGMMA_D128_REGS, "%128, %129, %130, %131", "%132",
        FPQUANT_WGMMA_D128_OUTS);
  }
#undef FPQUANT_WGMMA_RS
#endif
}

#undef FPQUANT_WGMMA_D128_OUTS
#undef FPQUANT_WGMMA_D128_REGS
#undef FPQUANT_WGMMA_D64_OUTS
#undef FPQUANT_WGMMA_D64_REGS

}  // namespace fpquant::cuda
