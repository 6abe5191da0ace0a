// Block-scaled FP4 GEMMs on Hopper (sm_90a): matmul_mxfp4 / matmul_nvfp4 (semantics: csrc/ops/matmul_cpu.cpp;
// launch constraints and workspace: matmul_sm90.h).
//
// Two steps per call, both on the caller's stream:
//
// 1. Operand pass, once per element of A and of B.
//    MXFP4: E2M1 values {0, 0.5, ..., 6} need 2 significant bits, E4M3 has 4, and its exponents reach from
//    the subnormal 2^-9 to 2^8: c * 2^d is an exact E4M3 value for every code c whenever -8 <= d <= 6
//    (0.5 * 2^-8 is the smallest subnormal; 1.5 * 2^-8 = 3 * 2^-9 still is one; 6 * 2^6 = 384 <= 448), and for
//    groups whose largest code is smaller, up to d = 8 - floor(log2 max|c|). A span of groups (a 128-K block
//    of a row of A; a whole row of B, see below) gets a reference exponent R = T - 8, T = max over its nonzero
//    groups of (e_g + floor(log2 max|code|)): the span's largest element lands in E4M3's top binade, and
//    element c * 2^e_g is stored as E4M3(c * 2^(e_g - R)), rounded to nearest even with subnormals. Exact
//    for every group with e_g >= T - 16 (16 binades under the span's largest element); below that an
//    element is off by at most half the subnormal step, 2^(R - 10) = 2^(T - 18), i.e. 2^-18 of the span's
//    largest element magnitude (2^T <= max |a|). The span's factor 2^R (NaN when one of its group scales is
//    the E8M0 NaN 0xFF) is stored as float32.
//    A (fold_mx_kernel): per (row, 128-K block), factors [K/128][padded rows].
//    B (fold_mx_rows_kernel): per row over all of K when that is exact for every group of the row (weights'
//    group scales span a few binades), the factor then applied once per output column in the epilogue;
//    otherwise per 128-K block as A, with the row flagged (see the GEMM). So no element of B is ever less
//    exact than with per-block references, and normal rows are exact.
//    The fold is a byte table per group: prmt looks the 8 magnitudes' E4M3 bytes up by each code's low
//    3 bits, and a second prmt moves each code's sign bit to its byte (fold_word; tests/kernels emulate it).
//    NVFP4 (decode_nv_kernel): E4M3 scales carry 4 significant bits, so code * scale needs up to 6 and is not
//    an E4M3 value; it is a bfloat16 value (8 bits, exponent range far wider): the operand is bfloat16, exact.
//    Why a separate pass rather than converting inside the GEMM: every element is converted once (inside
//    the GEMM each CTA would convert its whole A and B panels, N/192 resp. M/128 times over, in the same
//    issue slots the promotion needs), and the GEMM is a plain TMA-fed SS-wgmma kernel. The price is
//    written-and-read-back operand bytes: at 8192^3 ~200 MB for MXFP4 (~70 us on the H200).
//
// 2. GEMM (gemm_kernel): 128 x BN tiles, one CTA per SM (shared memory), one per tile or persistent (the
//    tile table says), a producer warpgroup (one lane issues the TMA copies into a STAGES-deep ring on full /
//    empty mbarriers) and two consumer warpgroups of 64 rows each.
//    MXFP4: a stage is 128 K (one swizzle row of E4M3 bytes, one fold block of A). Each consumer issues 4
//    m64nBNk32 E4M3 wgmmas into a fresh float32 tile `tmp` and, when they completed, promotes:
//    acc = fma(tmp, 2^Ra[row], acc), one multiply-add per element (a power-of-two factor, so it rounds once,
//    in the add); after the last stage acc *= 2^Rb[col] (exact). In a tile that holds a row of B folded per
//    block, every stage also brings B's block factors and the promotion is acc = fma(tmp * 2^Rb[col],
//    2^Ra[row], acc) (FMUL + FFMA and a shared-memory read per column pair: measured 20-26% slower at
//    8192^3 on the H200, which is why normal rows take one factor). Hopper's FP8 tensor core keeps only ~14
//    bits of its running sum; promoting every 4 wgmmas (128 K, as DeepGEMM does) bounds what that costs (the
//    host emulation in tests/kernels/test_matmul_sm90_emulation.py models it). NaN factors make the promoted
//    values NaN.
//    NVFP4: a stage is 64 K of bfloat16; m64nBNk16 wgmmas accumulate straight into acc (exact products,
//    float32 accumulation), one wgmma group kept in flight as in w4a16_wgmma_sm90.cu. Tiles with decode = 1
//    skip step 1: their producer warpgroup reads the packed codes and scales and writes the bf16 stage
//    itself (decode_producer), so the operands' bf16 copies (2 x 128 MB at 8192^3, 2 x 54 us of pass) are
//    never written; the consumers are the same.
//    Epilogue: acc * alpha (NVFP4: 1 / (gA gB)) + bias, rounded once to out_dtype, guarded for M / N tails.
//    Tiles are rastered in groups of 16 row tiles, so the CTAs resident together share A and B panels in L2.
// Only sm_90a has wgmma and TMA: CMake compiles this file for sm_90a alone; FPQUANT_WGMMA keeps the kernel
// bodies out of the host pass.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <type_traits>

#include "core/fp_formats.h"
#include "core/scale_layout.h"
#include "cuda/common/tma.cuh"
#include "cuda/common/wgmma.cuh"
#include "cuda/matmul/matmul_sm90.h"

namespace fpquant::cuda {
namespace {

constexpr int kFoldK = static_cast<int>(kMatmulSm90FoldK);  // K per fold block = per MXFP4 stage
constexpr int kBM = 128;                                    // rows of A per CTA: two consumer warpgroups
constexpr int kRasterGroup = 16;                            // row tiles per raster group

// ---- Operand pass --------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// Two floats -> E4M3 bytes (lo in the low byte), round to nearest even, subnormals kept, saturating.
__device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
  uint16_t r;
  asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;\n" : "=h"(r) : "f"(hi), "f"(lo));
  return r;
}

// The E4M3 bytes of magnitude index i (values {0, 0.5, 1, 1.5, 2, 3, 4, 6}) times 2^d: byte i of (l0, l1).
// d is clamped to [-40, 9]: below, every value rounds to 0 anyway; above, only all-zero groups reach it.
__device__ __forceinline__ void fold_table(int d, uint32_t& l0, uint32_t& l1) {
  d = d < -40 ? -40 : (d > 9 ? 9 : d);
  const float u = core::exp2i(d);
  l0 = e4m3x2(0.0f, __fmul_rn(0.5f, u)) | (e4m3x2(u, __fmul_rn(1.5f, u)) << 16);
  l1 = e4m3x2(__fmul_rn(2.0f, u), __fmul_rn(3.0f, u)) | (e4m3x2(__fmul_rn(4.0f, u), __fmul_rn(6.0f, u)) << 16);
}

// 8 codes (nibble i of w = element i) -> 8 E4M3 bytes in element order (x: elements 0-3, y: 4-7).
// Magnitudes: prmt reads the selector's low 16 bits as four byte indices, here the codes' low 3 bits.
// Signs: byte j of w has bit 7 = sign of code 2j + 1, byte j of w << 4 has bit 7 = sign of code 2j; a
// second prmt picks, for output byte i, the byte whose bit 7 is code i's sign.
__device__ __forceinline__ uint2 fold_word(uint32_t w, uint32_t l0, uint32_t l1) {
  const uint32_t m = w & 0x77777777u;
  const uint32_t w4 = w << 4;
  const uint32_t lo = prmt(l0, l1, m) | (prmt(w, w4, 0x1504u) & 0x80808080u);
  const uint32_t hi = prmt(l0, l1, m >> 16) | (prmt(w, w4, 0x3726u) & 0x80808080u);
  return make_uint2(lo, hi);
}

// Largest magnitude index (0..7) among the 32 codes of a group.
__device__ __forceinline__ uint32_t max_magnitude(const uint4& c) {
  const uint32_t w[4] = {c.x, c.y, c.z, c.w};
  uint32_t m = 0;
#pragma unroll
  for (int i = 0; i < 4; ++i) m = __vmaxu4(m, __vmaxu4(w[i] & 0x07070707u, (w[i] >> 4) & 0x07070707u));
  m = __vmaxu4(m, m >> 16);
  m = __vmaxu4(m, m >> 8);
  return m & 0xFFu;
}

// A group of 32 codes of a row and its scale: e the unbiased exponent (128 for the NaN scale 0xFF), top =
// e + floor(log2 max|code|) for a nonzero, non-NaN group, else -1000.
struct MxGroup {
  uint4 c;
  int e, top;
};

__device__ __forceinline__ MxGroup load_group(const uint8_t* codes, const uint8_t* scales, ScaleLayout layout,
                                              int64_t row, int64_t g, int64_t groups_per_row) {
  MxGroup x;
  x.c = *reinterpret_cast<const uint4*>(codes + row * (groups_per_row * 16) + 16 * g);
  const uint8_t sc = scales[core::scale_offset(row * groups_per_row + g, groups_per_row, layout)];
  x.e = static_cast<int>(sc) - 127;
  const int mi = static_cast<int>(max_magnitude(x.c));
  x.top = mi > 0 && sc != core::kE8M0Nan ? x.e + (mi >> 1) - 1 : -1000;
  return x;
}

// A group past K's end (a lane that still takes part in its block's reduction): no codes, no top.
__device__ constexpr MxGroup kAbsentGroup{{0, 0, 0, 0}, 0, -1000};

// A span's factor: 2^R, or NaN when one of its group scales is the E8M0 NaN.
__device__ __forceinline__ float span_factor(bool nan, int R) { return nan ? __int_as_float(0x7FC00000) : core::exp2i(R); }

// The group's 32 E4M3 bytes, each code times 2^(e - R), to dst (32-byte aligned). A NaN group stays zero: its
// factor carries the NaN.
__device__ __forceinline__ void fold_group(const MxGroup& x, int R, uint8_t* dst) {
  uint32_t l0 = 0, l1 = 0;
  if (x.e != 128) fold_table(x.e - R, l0, l1);
  const uint2 f0 = fold_word(x.c.x, l0, l1), f1 = fold_word(x.c.y, l0, l1);
  const uint2 f2 = fold_word(x.c.z, l0, l1), f3 = fold_word(x.c.w, l0, l1);
  *reinterpret_cast<uint4*>(dst) = make_uint4(f0.x, f0.y, f1.x, f1.y);
  *reinterpret_cast<uint4*>(dst + 16) = make_uint4(f2.x, f2.y, f3.x, f3.y);
}

// Folds group x (present when `here`) against its 128-K block's reference, the block's 4 groups being the 4
// lanes of `quad`; returns the block's factor 2^R (NaN if one of its scales is NaN), the same in all 4 lanes.
__device__ __forceinline__ float fold_in_block(const MxGroup& x, bool here, unsigned quad, uint8_t* dst) {
  int top = here ? x.top : -1000, nan = here && x.e == 128;
  top = max(top, __shfl_xor_sync(quad, top, 1));
  top = max(top, __shfl_xor_sync(quad, top, 2));
  nan |= __shfl_xor_sync(quad, nan, 1);
  nan |= __shfl_xor_sync(quad, nan, 2);
  const int R = top == -1000 ? 0 : top - 8;
  if (here) fold_group(x, R, dst);
  return span_factor(nan, R);
}

// A: one thread per group of 32 (row, 128-K block, group g), four consecutive lanes per block, so that a warp
// reads 512 contiguous code bytes and writes 1 KB of operand (a thread per block read and wrote at a 64- and
// 128-byte stride: 1.3 TB/s measured on the H200). Lanes of groups past K's end (the last block of a row may
// hold fewer than 4) take part in the block's reduction only. A quad never straddles a row or the grid's end
// (4 lanes per block, 4 | 32), so the shuffles' masks name lanes that all run. Rows rows .. rows_pad - 1 only
// get factor 0 (the GEMM's factor copies read whole tiles; those rows' products are zero-filled by TMA and
// never stored).
__global__ void __launch_bounds__(128) fold_mx_kernel(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                                      ScaleLayout layout, int64_t rows, int64_t rows_pad, int64_t K,
                                                      uint8_t* __restrict__ operand, float* __restrict__ factors) {
  const int64_t kblocks = (K + kFoldK - 1) / kFoldK;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows_pad * kblocks * 4) return;
  const int64_t block = idx >> 2, row = block / kblocks, kb = block % kblocks;
  float* factor = factors + kb * rows_pad + row;
  if (row >= rows) {
    if ((idx & 3) == 0) *factor = 0.0f;
    return;
  }
  const int64_t groups_per_row = K / core::kMxGroup, g = 4 * kb + (idx & 3);
  const bool here = g < groups_per_row;
  const MxGroup x = here ? load_group(codes, scales, layout, row, g, groups_per_row) : kAbsentGroup;
  const float f = fold_in_block(x, here, 0xFu << (threadIdx.x & 28), operand + row * K + 32 * g);
  if ((idx & 3) == 0) *factor = f;
}

// B: one warp per row. The row's reference over all of K, R = T - 8 with T its largest top, makes every group
// with e >= T - 16 exact; when all of the row's nonzero groups are (weights' group scales span a few binades),
// the row is folded against R and its one factor 2^R goes to row_factors, applied once per output column in
// the GEMM's epilogue rather than at every promotion (which then takes one multiply-add per element instead
// of two and a shared-memory read per column pair: the GEMM measured 20-26% faster without the column factor
// on the H200). A row with a group below that window is folded per 128-K block as A is, and its flag (one per
// kMatmulSm90FlagCols rows) set: a tile holding such a row promotes with per-block column factors
// (block_factors), which every other row fills with its row factor, as its fold expects. A row with a NaN scale
// has the factor NaN either way (its whole output column is NaN, as in the reference).
__global__ void __launch_bounds__(128) fold_mx_rows_kernel(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                                           ScaleLayout layout, int64_t rows, int64_t rows_pad, int64_t K,
                                                           uint8_t* __restrict__ operand, float* __restrict__ block_factors,
                                                           float* __restrict__ row_factors, int* __restrict__ flags) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (row >= rows_pad) return;  // whole warps
  const int64_t kblocks = (K + kFoldK - 1) / kFoldK, groups_per_row = K / core::kMxGroup;
  float* bf = block_factors + row;
  if (row >= rows) {
    for (int64_t kb = lane; kb < kblocks; kb += 32) bf[kb * rows_pad] = 0.0f;
    if (lane == 0) row_factors[row] = 0.0f;
    return;
  }
  int top = -1000, low = 1000, nan = 0;
#pragma unroll 4
  for (int64_t g = lane; g < groups_per_row; g += 32) {  // unrolled: several loads in flight per lane
    const MxGroup x = load_group(codes, scales, layout, row, g, groups_per_row);
    nan |= x.e == 128;
    if (x.top != -1000) top = max(top, x.top), low = min(low, x.e);
  }
  top = __reduce_max_sync(0xFFFFFFFFu, top);
  low = __reduce_min_sync(0xFFFFFFFFu, low);
  nan = __reduce_or_sync(0xFFFFFFFFu, nan);
  const int R = top == -1000 ? 0 : top - 8;
  uint8_t* dst = operand + row * K;
  if (nan || low - R >= -8) {
    const float f = span_factor(nan, R);
    if (lane == 0) row_factors[row] = f;
    for (int64_t kb = lane; kb < kblocks; kb += 32) bf[kb * rows_pad] = f;
#pragma unroll 4
    for (int64_t g = lane; g < groups_per_row; g += 32)
      fold_group(load_group(codes, scales, layout, row, g, groups_per_row), R, dst + 32 * g);
    return;
  }
  if (lane == 0) {
    row_factors[row] = 1.0f;
    atomicOr(flags + row / kMatmulSm90FlagCols, 1);
  }
  for (int64_t g0 = 0; g0 < groups_per_row; g0 += 32) {  // every lane runs every round: the quads are whole
    const int64_t g = g0 + lane, kb = g / 4;
    const bool here = g < groups_per_row;
    const MxGroup x = here ? load_group(codes, scales, layout, row, g, groups_per_row) : kAbsentGroup;
    const float f = fold_in_block(x, here, 0xFu << (lane & 28), dst + 32 * g);
    if ((lane & 3) == 0 && kb < kblocks) bf[kb * rows_pad] = f;
  }
}

// 8 NVFP4 codes (nibble i of w = element i) times their group's scale s2 (as bf16x2), as 8 bfloat16 values in
// element order: exact (code * E4M3 scale needs at most 2 x 4 significant bits, magnitudes 2^-10 .. 2688; a NaN
// scale gives NaN elements). The codes become bfloat16 values by table lookups (prmt on the magnitude bits, one
// table for the high and one for the low bytes of {0, 0.5, 1, 1.5, 2, 3, 4, 6}; the sign bits moved as in
// fold_word), then one exact bf16x2 multiply per pair: 19 operations per 8 elements (decoding and multiplying
// element by element in float32 left the pass issue-bound at 2.4 TB/s on the H200).
struct NvTables {  // the prmt tables: high and low bytes of the bf16 values {0, 0.5, 1, 1.5 | 2, 3, 4, 6}
  uint32_t hi0 = 0x3F3F3F00u, hi1 = 0x40404040u, lo0 = 0xC0800000u, lo1 = 0xC0804000u;
};

// The tables as per-thread values: threadIdx.x / blockDim.x is 0, but not provably so, nor uniform, so the
// compiler keeps the four words in ordinary registers through the decoding producer's loop. As constants it
// held them in uniform registers and moved one into an ordinary register before each prmt (prmt's first
// operand cannot be uniform): 76 extra moves per stage.
__device__ __forceinline__ NvTables nv_tables_in_registers() {
  const uint32_t zero = threadIdx.x / blockDim.x;
  NvTables t;
  t.hi0 |= zero;
  t.hi1 |= zero;
  t.lo0 |= zero;
  t.lo1 |= zero;
  return t;
}

__device__ __forceinline__ uint4 decode_nv_word(uint32_t w, __nv_bfloat162 s2, const NvTables& t = NvTables{}) {
  const uint32_t m = w & 0x77777777u, w4 = w << 4;
  const uint32_t hi_a = prmt(t.hi0, t.hi1, m) | (prmt(w, w4, 0x1504u) & 0x80808080u);  // elements 0-3
  const uint32_t hi_b = prmt(t.hi0, t.hi1, m >> 16) | (prmt(w, w4, 0x3726u) & 0x80808080u);  // elements 4-7
  const uint32_t lo_a = prmt(t.lo0, t.lo1, m), lo_b = prmt(t.lo0, t.lo1, m >> 16);
  const uint32_t v[4] = {prmt(lo_a, hi_a, 0x5140u), prmt(lo_a, hi_a, 0x7362u), prmt(lo_b, hi_b, 0x5140u),
                         prmt(lo_b, hi_b, 0x7362u)};
  uint32_t out[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    __nv_bfloat162 p = __hmul2(*reinterpret_cast<const __nv_bfloat162*>(&v[i]), s2);
    out[i] = *reinterpret_cast<uint32_t*>(&p);
  }
  return make_uint4(out[0], out[1], out[2], out[3]);
}

// Two E4M3 scales (byte 0 and byte 1 of `two`) as bf16x2 multipliers, each in both halves: the hardware
// conversion to f16x2 (exact: every E4M3 value, subnormals and NaN included, is an f16 value), then to bf16
// through float32 (exact: at most 4 significant bits). 5 operations for two scales where e4m3_decode takes
// ~12 for one.
__device__ __forceinline__ void nv_scales2(uint32_t two, __nv_bfloat162& s0, __nv_bfloat162& s1) {
  uint32_t h2 = 0;
#if FPQUANT_WGMMA
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(h2) : "h"(static_cast<unsigned short>(two & 0xFFFFu)));
#endif
  const __half2 h = *reinterpret_cast<const __half2*>(&h2);
  s0 = __float2bfloat162_rn(__low2float(h));
  s1 = __float2bfloat162_rn(__high2float(h));
}

// Byte offset of the scale of group `group` (row-major over [rows, groups_per_row]). Only the blocked layout
// needs the group's row and column; it divides in 32 bits where the index fits (a 64-bit division by a
// runtime value is a few dozen instructions, more than decoding the group's 16 elements).
__device__ __forceinline__ int64_t nv_scale_offset(int64_t group, int64_t groups_per_row, ScaleLayout layout) {
  if (layout != ScaleLayout::kBlocked) return group;
  if (group <= 0xFFFFFFFFll) {
    const uint32_t g = static_cast<uint32_t>(group), c = static_cast<uint32_t>(groups_per_row);
    return core::blocked_offset(g / c, g % c, groups_per_row);
  }
  return core::scale_offset(group, groups_per_row, layout);
}

// NVFP4 operand pass (tiles with decode = 0): one thread per 8 elements (half a group of 16). A warp reads
// 128 contiguous code bytes and writes 512 contiguous operand bytes. The rows of codes are contiguous, so
// half-group idx starts at code byte 4 idx and operand element 8 idx, without the row. The global scales are
// the epilogue's.
__global__ void __launch_bounds__(128) decode_nv_kernel(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                                        ScaleLayout layout, int64_t rows, int64_t K,
                                                        __nv_bfloat16* __restrict__ operand) {
  const int64_t groups_per_row = K / core::kNvGroup;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;  // half-group index
  if (idx >= rows * groups_per_row * 2) return;
  const uint32_t w = *reinterpret_cast<const uint32_t*>(codes + idx * 4);
  __nv_bfloat162 s2, none;
  nv_scales2(scales[nv_scale_offset(idx >> 1, groups_per_row, layout)], s2, none);
  *reinterpret_cast<uint4*>(operand + idx * 8) = decode_nv_word(w, s2);
}

// ---- GEMM -----------------------------------------------------------------------------------------------

// D (64 x N, fp32) (+)= A (64 x 32 E4M3, desc_a) * B (32 x N E4M3, desc_b), both K-major in the 128-byte
// swizzle (sw128_desc; k-step s of 32 elements starts 32 s bytes further). scale_d = 0 overwrites D. Fragment
// as wgmma_m64nNk16 (wgmma.cuh): d[4j + 2h + e] = (row 16 warp + g + 8h, column 8j + 2q + e).
template <int N>
__device__ __forceinline__ void wgmma_e4m3(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b, int scale_d) {
  static_assert(N == 128 || N == 192, "the instruction shapes used here");
#if FPQUANT_WGMMA
  if constexpr (N == 128) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
        "}, %64, %65, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
  if constexpr (N == 192) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %98, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n192k32.f32.e4m3.e4m3 {"
        "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95"
        "}, %96, %97, p, 1, 1;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95])
        : "l"(desc_a), "l"(desc_b), "r"(scale_d));
  }
#endif
}

// 1-D bulk copy global -> shared of `bytes` (multiple of 16, both addresses 16-byte aligned), completing on
// barrier `bar` like the tensor copies.
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
#if FPQUANT_WGMMA
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(src)), "r"(bytes), "r"(bar)
               : "memory");
#endif
}

template <bool FP8, int BN, int STAGES, bool DECODE = false>
struct GCfg {
  static_assert(FP8 ? (BN == 128 || BN == 192) : (BN == 128 || BN == 256), "instantiated wgmma shapes");
  static_assert(!(FP8 && DECODE), "only NVFP4 decodes in the GEMM");
  static constexpr int kBK = FP8 ? 128 : 64;  // K per stage: one 128-byte swizzle row
  static constexpr int kConsumers = 256;      // two warpgroups of 64 rows
  static constexpr int kThreads = kConsumers + 128;
  // Registers as in w4a16_wgmma_sm90.cu: launched with the most __launch_bounds__ allows, the producer
  // warpgroup keeps kProducerRegs, the consumers take the rest of the pool (acc + tmp: BN floats).
  static constexpr int kLaunchRegs = (65536 / kThreads > 255 ? 255 : 65536 / kThreads) / 8 * 8;
  // A decoding producer keeps the launch's registers (two stages of codes and scales and the decode's
  // temporaries), and so do its consumers: no setmaxnreg, so that ptxas holds every path to kLaunchRegs and
  // its spill report covers them all.
  static constexpr int kProducerRegs = DECODE ? kLaunchRegs : 40;
  static constexpr int kPooledRegs = kLaunchRegs + 128 * (kLaunchRegs - kProducerRegs) / kConsumers;
  static constexpr int kConsumerRegs = (kPooledRegs > 240 ? 240 : kPooledRegs) / 8 * 8;
  static_assert(kConsumers * (kConsumerRegs - kLaunchRegs) <= 128 * (kLaunchRegs - kProducerRegs),
                "the consumers' registers come from the producer's");
  static constexpr int kABytes = kBM * 128;
  static constexpr int kBBytes = BN * 128;
  static constexpr int kFacBytes = FP8 ? (kBM + BN) * 4 : 0;  // 2^Ra of the tile's rows, then 2^Rb of its columns
  static constexpr int kA = 0;                                // stage tiles at 1024-byte multiples
  static constexpr int kB = kA + STAGES * kABytes;
  static constexpr int kFac = kB + STAGES * kBBytes;
  static constexpr int kBars = kFac + STAGES * kFacBytes;  // full[STAGES], then empty[STAGES]
  static constexpr int kSmem = kBars + 16 * STAGES + 1024;  // + slack to align the base to 1024 bytes
  static_assert(kBBytes % 1024 == 0 && kFacBytes % 16 == 0, "alignment of the stage parts");
  static_assert(kSmem <= 227 * 1024, "fits the opt-in shared memory of an sm_90 CTA");
};

struct GemmArgs {
  int M, N, K, kblocks, tiles_m, tiles_n;
  const float* a_fac;  // MXFP4: [kblocks][a_pad] block factors
  const float* b_fac;  // MXFP4: [kblocks][b_pad] (read by tiles with per-block columns)
  const float* b_row;  // MXFP4: [b_pad] column factors over all K
  const int* b_flags;  // MXFP4: [b_pad / kMatmulSm90FlagCols]
  int64_t a_pad, b_pad;
  void* out;
  DType out_dtype;
  const void* bias;
  DType bias_dtype;
  const float* a_global;  // NVFP4
  const float* b_global;
};

// NVFP4 tiles that decode in the GEMM: the packed operands. vec: K % 64 == 0, 16-byte aligned codes (the
// contract's; checked again, since the 16-byte loads would fault without it) and 4-byte aligned scale arrays,
// so a row's stage is two 16-byte code loads and one 2-byte scale load. A parameter of its own rather than
// fields of GemmArgs: with a larger GemmArgs, nvcc laid out the other tiles' kernels differently (a third of
// their code size), and those are the measured ones.
struct NvOperands {
  const uint8_t *a_codes, *a_scales, *b_codes, *b_scales;
  ScaleLayout layout;
  bool vec;
};

struct GemmMaps {
  CUtensorMap a, b;
};

__device__ __forceinline__ float load_bias(const void* bias, DType t, int n) {
  if (t == DType::kBF16) return __bfloat162float(static_cast<const __nv_bfloat16*>(bias)[n]);
  if (t == DType::kF16) return __half2float(static_cast<const __half*>(bias)[n]);
  return static_cast<const float*>(bias)[n];
}

template <typename T>
__device__ __forceinline__ void store_pair(T* dst, float v0, float v1, bool two, bool pair_aligned) {
  if (two && pair_aligned) {
    if constexpr (std::is_same_v<T, float>) {
      *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
    } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(v0, v1);
    } else {
      *reinterpret_cast<__half2*>(dst) = __floats2half2_rn(v0, v1);
    }
    return;
  }
  auto one = [](T* d, float v) {
    if constexpr (std::is_same_v<T, float>) *d = v;
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) *d = __float2bfloat16_rn(v);
    else *d = __float2half_rn(v);
  };
  one(dst, v0);
  if (two) one(dst + 1, v1);
}

// acc[4j + 2h + e] is (row m_base + 8h, column n_base + 8j + e) of the output.
template <typename T, int BN>
__device__ __forceinline__ void epilogue(const GemmArgs& p, const float (&acc)[BN / 2], float alpha, int m_base,
                                         int n_base) {
  T* out = static_cast<T*>(p.out);
  const bool even = (p.N % 2) == 0 && (reinterpret_cast<uintptr_t>(out) % (2 * sizeof(T))) == 0;
#pragma unroll
  for (int j = 0; j < BN / 8; ++j) {
    const int n = n_base + 8 * j;
    if (n >= p.N) continue;
    const bool two = n + 1 < p.N;
    float b0 = 0.0f, b1 = 0.0f;
    if (p.bias != nullptr) {
      b0 = load_bias(p.bias, p.bias_dtype, n);
      b1 = two ? load_bias(p.bias, p.bias_dtype, n + 1) : 0.0f;
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m_base + 8 * h;
      if (m >= p.M) continue;
      const float v0 = __fadd_rn(__fmul_rn(acc[4 * j + 2 * h], alpha), b0);
      const float v1 = __fadd_rn(__fmul_rn(acc[4 * j + 2 * h + 1], alpha), b1);
      store_pair(out + static_cast<int64_t>(m) * p.N + n, v0, v1, two, even);
    }
  }
}

// Tile t -> (row tile, column tile): groups of kRasterGroup row tiles, column tiles walked within a group.
__device__ __forceinline__ void tile_of(int t, int tiles_m, int tiles_n, int& mt, int& nt) {
  const int per_group = kRasterGroup * tiles_n;
  const int group = t / per_group, first = group * kRasterGroup;
  const int gm = min(kRasterGroup, tiles_m - first);
  const int r = t - group * per_group;
  mt = first + r % gm;
  nt = r / gm;
}

// MXFP4: whether the tile of columns n0 .. n0 + BN - 1 holds a row of B folded per 128-K block
// (fold_mx_rows_kernel), so that it promotes with per-block column factors.
template <int BN>
__device__ __forceinline__ bool column_blocks(const GemmArgs& p, int n0) {
  static_assert(BN % kMatmulSm90FlagCols == 0, "a tile covers whole flag entries");
  int any = 0;
#pragma unroll
  for (int i = 0; i < BN / static_cast<int>(kMatmulSm90FlagCols); ++i) any |= __ldg(p.b_flags + n0 / kMatmulSm90FlagCols + i);
  return any != 0;
}

// NVFP4 decoded in the GEMM: half of one row's 64 K of a stage (elements 32 h .. 32 h + 31), as loaded:
// codes in element order, scale byte j of s for elements 32 h + 16 j .. + 15. Rows past the operand's end
// and groups past K are zeros, codes and scales, as TMA's zero fill was: a zero scale times a zero code is 0,
// never NaN.
struct NvHalf {
  uint4 c;
  uint32_t s;
};

__device__ __forceinline__ int64_t nv_scale_at(int64_t row, int64_t g, int64_t groups, ScaleLayout layout) {
  return layout == ScaleLayout::kBlocked ? core::blocked_offset(row, g, groups) : row * groups + g;
}

__device__ __forceinline__ NvHalf load_nv_half(const uint8_t* __restrict__ codes, const uint8_t* __restrict__ scales,
                                               const NvOperands& nv, int K, int row, int rows, int kb, int h) {
  NvHalf x{make_uint4(0, 0, 0, 0), 0};
  if (row >= rows) return x;
  const int64_t groups = K / core::kNvGroup, g0 = 4 * static_cast<int64_t>(kb) + 2 * h;
  const uint8_t* src = codes + static_cast<int64_t>(row) * (K / 2) + 32 * static_cast<int64_t>(kb) + 16 * h;
  if (nv.vec) {  // 16-byte aligned codes; the two scales are adjacent and 2-byte aligned in both layouts
    x.c = __ldg(reinterpret_cast<const uint4*>(src));
    x.s = __ldg(reinterpret_cast<const unsigned short*>(scales + nv_scale_at(row, g0, groups, nv.layout)));
    return x;
  }
  uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
  for (int j = 0; j < 2; ++j) {
    if (g0 + j >= groups) break;
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(src + 8 * j));
    w[2 * j] = v.x;
    w[2 * j + 1] = v.y;
    x.s |= static_cast<uint32_t>(__ldg(scales + nv_scale_at(row, g0 + j, groups, nv.layout))) << (8 * j);
  }
  x.c = make_uint4(w[0], w[1], w[2], w[3]);
  return x;
}

// Half h of row r of a stage's [rows][64] bf16 tile in the 128-byte swizzle (what TMA's SWIZZLE_128B writes
// and sw128_desc reads): 16-byte chunk c (elements 8c .. 8c + 7) at r * 128 + (c ^ (r % 8)) * 16, here
// c = 4h .. 4h + 3. A warp (16 rows, both halves) stores in 4 phases of 8 lanes (4 rows x 2 halves) whose
// (c ^ r % 8) differ: no bank conflicts.
__device__ __forceinline__ void store_nv_half(const NvHalf& x, unsigned char* tile, int r, int h, const NvTables& tab) {
  const uint32_t w[4] = {x.c.x, x.c.y, x.c.z, x.c.w};
  __nv_bfloat162 s2[2];
  nv_scales2(x.s, s2[0], s2[1]);
  unsigned char* dst = tile + r * 128;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int c = 4 * h + i;
    *reinterpret_cast<uint4*>(dst + ((c ^ (r & 7)) << 4)) = decode_nv_word(w[i], s2[i / 2], tab);
  }
}

// The decoding producer warpgroup (NVFP4 tiles with decode = 1), in place of the TMA lane. A stage's rows
// (A's 128, then B's BN) are split in halves of 32 K (32 code bytes per row: two lanes share a row, so a
// warp's load covers 16 rows x 32 contiguous bytes); thread t takes halves t, t + 128, ... (A rows
// (t + 128 i) / 2 for i < 2, then B's). It loads its halves' codes and scales straight from the packed
// operands one stage ahead into registers (their latency passes while it waits for a free stage and decodes
// the previous one), waits until the consumers released the stage, writes the bf16 values (decode_nv_word)
// into the ring, and makes them visible to the wgmmas' async proxy before its warp arrives on the stage's full
// barrier (4 producer warps per phase). Each CTA decodes its A panel once per column tile and its B panel once
// per row tile: at 128 x 256 and 64 K per stage, 384 rows x 64 K (~500 SASS instructions per producer thread
// between its wait and its arrival, plus 12 loads) in the time of the stage's 8 m64n256k16 wgmmas (~1,400 SM
// cycles at cuBLAS's rate).
template <int BN, int STAGES>
__device__ __forceinline__ void decode_producer(const GemmArgs& p, const NvOperands& nv, unsigned char* smem,
                                                uint32_t full, uint32_t empty, int t) {
  using C = GCfg<false, BN, STAGES, true>;
  constexpr int kHalves = 2 * (kBM + BN) / 128;  // per thread; the first 2 are A's
  const int tiles = p.tiles_m * p.tiles_n;
  if (static_cast<int>(blockIdx.x) >= tiles) return;
  auto load = [&](int tile, int kb, NvHalf (&x)[kHalves]) {
    int mt, nt;
    tile_of(tile, p.tiles_m, p.tiles_n, mt, nt);
#pragma unroll
    for (int i = 0; i < kHalves; ++i) {
      const int q = t + 128 * i, r = q / 2 - (i < 2 ? 0 : kBM);
      x[i] = i < 2 ? load_nv_half(nv.a_codes, nv.a_scales, nv, p.K, mt * kBM + r, p.M, kb, q & 1)
                   : load_nv_half(nv.b_codes, nv.b_scales, nv, p.K, nt * BN + r, p.N, kb, q & 1);
    }
  };
  const NvTables tab = nv_tables_in_registers();
  int tile = blockIdx.x, kb = 0, it = 0;
  // One stage from `cur` (loaded one stage earlier), after prefetching the next one into `nxt`; false after
  // the CTA's last stage. Called alternately on two register sets, so that nothing is copied between them.
  auto step = [&](const NvHalf (&cur)[kHalves], NvHalf (&nxt)[kHalves]) {
    const bool last_k = kb + 1 == p.kblocks;
    const int next_tile = last_k ? tile + static_cast<int>(gridDim.x) : tile, next_kb = last_k ? 0 : kb + 1;
    const bool more = next_tile < tiles;
    if (more) load(next_tile, next_kb, nxt);
    const int s = it % STAGES;
    if (it >= STAGES) mbar_wait(empty + 8 * s, ((it / STAGES) - 1) & 1);
#pragma unroll
    for (int i = 0; i < kHalves; ++i) {
      const int q = t + 128 * i, r = q / 2 - (i < 2 ? 0 : kBM);
      store_nv_half(cur[i], smem + (i < 2 ? C::kA + s * C::kABytes : C::kB + s * C::kBBytes), r, q & 1, tab);
    }
    fence_proxy_async_shared();
    __syncwarp();
    if ((t & 31) == 0) mbar_arrive(full + 8 * s);
    tile = next_tile, kb = next_kb, ++it;
    return more;
  };
  NvHalf x0[kHalves], x1[kHalves];
  load(tile, 0, x0);
  while (step(x0, x1) && step(x1, x0)) {
  }
}

// One CTA per tile, or (persistent launch) min(tiles, SMs) CTAs walking the tiles t = blockIdx.x,
// + gridDim.x, ...; the producer then runs ahead into the next tile's stages while the consumers finish a
// tile and write its epilogue. `it` counts the stages a CTA has gone through over all its tiles (the ring's
// position and phase).
template <bool FP8, int BN, int STAGES, bool DECODE>
__global__ void __launch_bounds__(384, 1) gemm_kernel(const GemmArgs p, const __grid_constant__ GemmMaps maps,
                                                      const NvOperands nv) {
#if FPQUANT_WGMMA
  using C = GCfg<FP8, BN, STAGES, DECODE>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x;
  const int tiles = p.tiles_m * p.tiles_n;
  const uint32_t full = smem_addr + C::kBars, empty = full + 8 * STAGES;
  // full[s]: the stage's copies landed (the producer's expect-tx arrival + bytes), or (DECODE) the 4 producer
  // warps wrote it; empty[s]: the 8 consumer warps are done with it (their wgmmas completed and, for MXFP4,
  // their factor reads).
  if (tid == 0) mbar_init_ring(full, empty, STAGES, C::kConsumers / 32, DECODE ? 4 : 1);
  __syncthreads();  // the last CTA-wide barrier: the producer warpgroup leaves when its copies are issued

  if (tid >= C::kConsumers) {
    if constexpr (DECODE) {
      decode_producer<BN, STAGES>(p, nv, smem, full, empty, tid - C::kConsumers);
      return;
    }
    setmaxnreg_dec<C::kProducerRegs>();
    if (tid != C::kConsumers) return;
    int it = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int mt, nt;
      tile_of(t, p.tiles_m, p.tiles_n, mt, nt);
      const int m0 = mt * kBM, n0 = nt * BN;
      bool col_blocks = false;
      if constexpr (FP8) col_blocks = column_blocks<BN>(p, n0);
      const uint32_t bytes = C::kABytes + C::kBBytes + (FP8 ? kBM * 4 + (col_blocks ? BN * 4 : 0) : 0);
      for (int kb = 0; kb < p.kblocks; ++kb, ++it) {
        const int s = it % STAGES;
        if (it >= STAGES) mbar_wait(empty + 8 * s, ((it / STAGES) - 1) & 1);
        const uint32_t bar = full + 8 * s;
        // Out-of-range rows and k of a box arrive as zeros and still count toward the bytes.
        mbar_arrive_expect_tx(bar, bytes);
        tma_load_2d(smem_addr + C::kA + s * C::kABytes, &maps.a, kb * C::kBK, m0, bar);
        tma_load_2d(smem_addr + C::kB + s * C::kBBytes, &maps.b, kb * C::kBK, n0, bar);
        if constexpr (FP8) {
          const uint32_t fac = smem_addr + C::kFac + s * C::kFacBytes;
          bulk_load(fac, p.a_fac + kb * p.a_pad + m0, kBM * 4, bar);
          if (col_blocks) bulk_load(fac + kBM * 4, p.b_fac + kb * p.b_pad + n0, BN * 4, bar);
        }
      }
    }
    return;
  }
  if constexpr (!DECODE) setmaxnreg_inc<C::kConsumerRegs>();
  const int wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int row_in_tile = 64 * wg + 16 * warp + g;  // this thread's rows: row_in_tile and row_in_tile + 8
  float alpha = 1.0f;
  if constexpr (!FP8) alpha = static_cast<float>(1.0 / (static_cast<double>(__ldg(p.a_global)) * static_cast<double>(__ldg(p.b_global))));
  int it = 0;

  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int mt, nt;
    tile_of(t, p.tiles_m, p.tiles_n, mt, nt);
    const int m0 = mt * kBM, n0 = nt * BN;
    const int m_base = m0 + row_in_tile, n_base = n0 + 2 * q;
    float acc[BN / 2];
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

    if constexpr (FP8) {
      float tmp[BN / 2];
      // Per stage: 4 k32 wgmmas into tmp, then tmp promoted into acc with the row factor 2^Ra of the stage's
      // block and, in a tile with per-block columns (PER_BLOCK), the column factors 2^Rb; otherwise the columns'
      // factors (one per row of B over all K) multiply acc once, below.
      auto mainloop = [&](auto per_block) {
        constexpr bool kPerBlock = decltype(per_block)::value;
        for (int kb = 0; kb < p.kblocks; ++kb, ++it) {
          const int s = it % STAGES;
          mbar_wait(full + 8 * s, (it / STAGES) & 1);
          const uint32_t a_tile = smem_addr + C::kA + s * C::kABytes + wg * 64 * 128;
          const uint32_t b_tile = smem_addr + C::kB + s * C::kBBytes;
          const float* fac = reinterpret_cast<const float*>(smem + C::kFac + s * C::kFacBytes);
#pragma unroll
          for (int i = 0; i < BN / 2; ++i) fence_operand(tmp[i]);
          wgmma_fence();
#pragma unroll
          for (int ks = 0; ks < kFoldK / 32; ++ks)
            wgmma_e4m3<BN>(tmp, sw128_desc(a_tile + 32 * ks), sw128_desc(b_tile + 32 * ks), ks > 0 ? 1 : 0);
          wgmma_commit();
          const float sa0 = fac[row_in_tile], sa1 = fac[row_in_tile + 8];
          wgmma_wait<0>();
#pragma unroll
          for (int i = 0; i < BN / 2; ++i) fence_operand(tmp[i]);
          if constexpr (kPerBlock) {
            const float2* sb = reinterpret_cast<const float2*>(fac + kBM);
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
              const float2 b = sb[4 * j + q];  // columns 8j + 2q, 8j + 2q + 1
              acc[4 * j + 0] = __fmaf_rn(__fmul_rn(tmp[4 * j + 0], b.x), sa0, acc[4 * j + 0]);
              acc[4 * j + 1] = __fmaf_rn(__fmul_rn(tmp[4 * j + 1], b.y), sa0, acc[4 * j + 1]);
              acc[4 * j + 2] = __fmaf_rn(__fmul_rn(tmp[4 * j + 2], b.x), sa1, acc[4 * j + 2]);
              acc[4 * j + 3] = __fmaf_rn(__fmul_rn(tmp[4 * j + 3], b.y), sa1, acc[4 * j + 3]);
            }
          } else {
#pragma unroll
            for (int j = 0; j < BN / 8; ++j) {
              acc[4 * j + 0] = __fmaf_rn(tmp[4 * j + 0], sa0, acc[4 * j + 0]);
              acc[4 * j + 1] = __fmaf_rn(tmp[4 * j + 1], sa0, acc[4 * j + 1]);
              acc[4 * j + 2] = __fmaf_rn(tmp[4 * j + 2], sa1, acc[4 * j + 2]);
              acc[4 * j + 3] = __fmaf_rn(tmp[4 * j + 3], sa1, acc[4 * j + 3]);
            }
          }
          __syncwarp();
          if (lane == 0) mbar_arrive(empty + 8 * s);
        }
      };
      if (column_blocks<BN>(p, n0)) {
        mainloop(std::true_type{});
      } else {
        mainloop(std::false_type{});
        // acc * 2^Rb[column]: a power of two, exact; the padded factor array covers every column of the tile.
#pragma unroll
        for (int j = 0; j < BN / 8; ++j) {
          const float2 b = *reinterpret_cast<const float2*>(p.b_row + n_base + 8 * j);
          acc[4 * j + 0] = __fmul_rn(acc[4 * j + 0], b.x);
          acc[4 * j + 1] = __fmul_rn(acc[4 * j + 1], b.y);
          acc[4 * j + 2] = __fmul_rn(acc[4 * j + 2], b.x);
          acc[4 * j + 3] = __fmul_rn(acc[4 * j + 3], b.y);
        }
      }
    } else {
      for (int kb = 0; kb < p.kblocks; ++kb, ++it) {
        const int s = it % STAGES;
        mbar_wait(full + 8 * s, (it / STAGES) & 1);
        const uint32_t a_tile = smem_addr + C::kA + s * C::kABytes + wg * 64 * 128;
        const uint32_t b_tile = smem_addr + C::kB + s * C::kBBytes;
#pragma unroll
        for (int i = 0; i < BN / 2; ++i) fence_operand(acc[i]);
        wgmma_fence();
#pragma unroll
        for (int ks = 0; ks < C::kBK / 16; ++ks)
          wgmma_m64nNk16<__nv_bfloat16, BN>(acc, sw128_desc(a_tile + 32 * ks), sw128_desc(b_tile + 32 * ks), true);
        wgmma_commit();
        wgmma_wait<1>();  // the previous stage's wgmmas completed: release it
        __syncwarp();
        if (lane == 0 && kb > 0) mbar_arrive(empty + 8 * ((it - 1) % STAGES));
      }
      wgmma_wait<0>();
      __syncwarp();
      if (lane == 0) mbar_arrive(empty + 8 * ((it - 1) % STAGES));  // the tile's last stage
    }
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) fence_operand(acc[i]);

    if (p.out_dtype == DType::kBF16) epilogue<__nv_bfloat16, BN>(p, acc, alpha, m_base, n_base);
    else if (p.out_dtype == DType::kF16) epilogue<__half, BN>(p, acc, alpha, m_base, n_base);
    else epilogue<float, BN>(p, acc, alpha, m_base, n_base);
  }
#endif
}

// ---- Host side ------------------------------------------------------------------------------------------

// A K-major operand [rows][K] of `elem`-byte elements in boxes of 128 bytes of K x box_rows rows, 128-byte
// swizzle (the layout sw128_desc describes).
bool operand_map(CUtensorMap* map, bool bf16, const void* base, int64_t K, int64_t rows, uint32_t box_rows) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const uint64_t elem = bf16 ? 2 : 1;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(K), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(K) * elem};
  const cuuint32_t box[2] = {static_cast<cuuint32_t>(128 / elem), box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<void*>(base),
                dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <bool FP8, int BN, int STAGES, bool DECODE>
cudaError_t launch_gemm(const MatmulParams& p, const MatmulSm90Workspace& w, bool persistent, cudaStream_t stream) {
  using C = GCfg<FP8, BN, STAGES, DECODE>;
  unsigned char* ws = static_cast<unsigned char*>(p.workspace);
  GemmMaps maps{};
  if (!DECODE && (!operand_map(&maps.a, !FP8, ws + w.a_operand, p.K, p.M, kBM) ||
                  !operand_map(&maps.b, !FP8, ws + w.b_operand, p.K, p.N, BN)))
    return cudaErrorInvalidValue;
  GemmArgs a{};
  a.M = static_cast<int>(p.M);
  a.N = static_cast<int>(p.N);
  a.K = static_cast<int>(p.K);
  a.kblocks = static_cast<int>((p.K + C::kBK - 1) / C::kBK);
  a.tiles_m = static_cast<int>((p.M + kBM - 1) / kBM);
  a.tiles_n = static_cast<int>((p.N + BN - 1) / BN);
  a.a_fac = reinterpret_cast<const float*>(ws + w.a_factors);
  a.b_fac = reinterpret_cast<const float*>(ws + w.b_factors);
  a.b_row = reinterpret_cast<const float*>(ws + w.b_row);
  a.b_flags = reinterpret_cast<const int*>(ws + w.b_flags);
  a.a_pad = matmul_sm90_row_pad(p.M);
  a.b_pad = matmul_sm90_row_pad(p.N);
  a.out = p.out;
  a.out_dtype = p.out_dtype;
  a.bias = p.bias;
  a.bias_dtype = p.bias_dtype;
  a.a_global = p.a_global;
  a.b_global = p.b_global;
  NvOperands nv{};
  if (DECODE) {
    nv.a_codes = p.a_codes;
    nv.a_scales = p.a_scales;
    nv.b_codes = p.b_codes;
    nv.b_scales = p.b_scales;
    nv.layout = p.layout;
    nv.vec = p.K % 64 == 0 && reinterpret_cast<uintptr_t>(p.a_codes) % 16 == 0 &&
             reinterpret_cast<uintptr_t>(p.b_codes) % 16 == 0 && reinterpret_cast<uintptr_t>(p.a_scales) % 4 == 0 &&
             reinterpret_cast<uintptr_t>(p.b_scales) % 4 == 0;
  }
  auto kernel = gemm_kernel<FP8, BN, STAGES, DECODE>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const int64_t tiles = static_cast<int64_t>(a.tiles_m) * a.tiles_n;
  if (tiles > INT_MAX) return cudaErrorInvalidValue;
  const int64_t ctas = persistent && p.num_sms > 0 && p.num_sms < tiles ? p.num_sms : tiles;  // one per SM (shared memory)
  kernel<<<static_cast<unsigned>(ctas), C::kThreads, C::kSmem, stream>>>(a, maps, nv);
  return cudaGetLastError();
}

template <bool FP8, const MatmulSm90Tile* TILES, int COUNT, int I = 0>
cudaError_t launch_config(const MatmulParams& p, const MatmulSm90Workspace& w, cudaStream_t stream) {
  if constexpr (I + 1 < COUNT) {
    if (p.config != I) return launch_config<FP8, TILES, COUNT, I + 1>(p, w, stream);
  }
  constexpr MatmulSm90Tile t = TILES[I];
  return launch_gemm<FP8, t.bn, t.stages, t.decode != 0>(p, w, t.persistent != 0, stream);
}

bool valid(const MatmulParams& p, Format f, int tile_count, const MatmulSm90Workspace& w) {
  const int64_t group = f == Format::kMxFp4 ? core::kMxGroup : core::kNvGroup;
  return p.format == f && p.config >= 0 && p.config < tile_count && p.M > 0 && p.N > 0 && p.K >= group &&
         p.K % group == 0 &&
         (w.bytes == 0 || (p.workspace != nullptr && p.workspace_bytes >= w.bytes &&
                           reinterpret_cast<uintptr_t>(p.workspace) % 256 == 0));
}

unsigned blocks_for(int64_t threads) { return static_cast<unsigned>((threads + 127) / 128); }

}  // namespace

cudaError_t matmul_mxfp4_sm90(const MatmulParams& p, cudaStream_t stream) {
  const MatmulSm90Workspace w = matmul_sm90_workspace(Format::kMxFp4, p.M, p.N, p.K, p.config);
  if (!valid(p, Format::kMxFp4, kMatmulSm90MxTileCount, w)) return cudaErrorInvalidValue;
  unsigned char* ws = static_cast<unsigned char*>(p.workspace);
  const int64_t kblocks = (p.K + kFoldK - 1) / kFoldK;
  const int64_t a_pad = matmul_sm90_row_pad(p.M), b_pad = matmul_sm90_row_pad(p.N);
  fold_mx_kernel<<<blocks_for(a_pad * kblocks * 4), 128, 0, stream>>>(
      p.a_codes, p.a_scales, p.layout, p.M, a_pad, p.K, ws + w.a_operand, reinterpret_cast<float*>(ws + w.a_factors));
  cudaError_t err = cudaMemsetAsync(ws + w.b_flags, 0, w.bytes - w.b_flags, stream);
  if (err != cudaSuccess) return err;
  fold_mx_rows_kernel<<<blocks_for(b_pad * 32), 128, 0, stream>>>(
      p.b_codes, p.b_scales, p.layout, p.N, b_pad, p.K, ws + w.b_operand, reinterpret_cast<float*>(ws + w.b_factors),
      reinterpret_cast<float*>(ws + w.b_row), reinterpret_cast<int*>(ws + w.b_flags));
  err = cudaGetLastError();
  if (err != cudaSuccess) return err;
  return launch_config<true, kMatmulSm90MxTiles, kMatmulSm90MxTileCount>(p, w, stream);
}

cudaError_t matmul_nvfp4_sm90(const MatmulParams& p, cudaStream_t stream) {
  const MatmulSm90Workspace w = matmul_sm90_workspace(Format::kNvFp4, p.M, p.N, p.K, p.config);
  if (!valid(p, Format::kNvFp4, kMatmulSm90NvTileCount, w) || p.a_global == nullptr || p.b_global == nullptr)
    return cudaErrorInvalidValue;
  if (!kMatmulSm90NvTiles[p.config].decode) {  // the operand pass: both operands as bf16 into the workspace
    unsigned char* ws = static_cast<unsigned char*>(p.workspace);
    const int64_t groups = p.K / core::kNvGroup;
    decode_nv_kernel<<<blocks_for(2 * p.M * groups), 128, 0, stream>>>(p.a_codes, p.a_scales, p.layout, p.M, p.K,
                                                                    reinterpret_cast<__nv_bfloat16*>(ws + w.a_operand));
    decode_nv_kernel<<<blocks_for(2 * p.N * groups), 128, 0, stream>>>(p.b_codes, p.b_scales, p.layout, p.N, p.K,
                                                                    reinterpret_cast<__nv_bfloat16*>(ws + w.b_operand));
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return launch_config<false, kMatmulSm90NvTiles, kMatmulSm90NvTileCount>(p, w, stream);
}

}  // namespace fpquant::cuda
