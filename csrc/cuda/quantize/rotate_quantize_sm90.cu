// Rotation fused with quantization on Hopper warpgroup MMAs (sm_90a): the semantics of rotate_quantize_mma.cu
// (column scales c_j, the rotation's hi/lo split when it is not exact in the 16-bit type, one rounding of
// c_j * acc, the shared group encoders; fp32 accumulation, so codes may differ from the float64 reference
// as that kernel's do), with the rotation held in shared memory instead of registers.
//
// Why a second kernel: with mma.sync, r = 128 costs 64 registers of rotation fragments per thread and 40
// instructions per 512 outputs (MMAs + ldmatrix), and the kernel was latency-bound at 50-57% of copy bandwidth
// (H100; this kernel: 81-93%, docs/perf/quantize.md, section "Plan"). wgmma reads both operands from shared memory asynchronously: a warpgroup computes a
// 64-chunk x 128-column tile with 8 instructions, and the accumulators arrive in registers laid out so that
// each thread holds whole groups (below), which it encodes without shuffles or a shared-memory round trip.
//
// Layout. x is viewed as chunks of 128 elements ([n_chunks, 128]); a rotation of size r < 128 acts as the
// block-diagonal matrix diag(R, ..., R) of size 128 (zero blocks add exact zeros; a non-finite input would
// also reach the other blocks, inf * 0 = NaN, and those rows are redone by repair_row).
// B (the scaled rotation S, N = 128 output columns x K = 128) has its columns permuted: accumulator column
// n = 8j + 2q + b of the wgmma fragment is output column 32q + 2j + b, so lane 4g + q holds output columns
// 32q .. 32q+31 of its two rows: one MXFP4 group, or two NVFP4 groups, in registers.
//
// Each CTA runs kWG independent warpgroups; each streams its own 64 x 128 tiles through kStages cp.async
// buffers (one CTA per SM, the rotation loaded once per CTA).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/common/async_copy.cuh"
#include "cuda/common/device_utils.cuh"
#include "cuda/common/encode.cuh"
#include "cuda/common/mma.cuh"
#include "cuda/common/wgmma.cuh"
#include "core/scale_layout.h"
#include "core/scale_rules.h"
#include "cuda/quantize/quantize_plan.h"

namespace fpquant::cuda {
namespace {

constexpr int kN = kRotateSm90Chunk;             // chunk width = wgmma N = K of the rotation
constexpr int kTileRows = kRotateSm90TileChunks;  // chunks per warpgroup tile (wgmma M)
constexpr int kTileBytes = kTileRows * kN * 2;  // 16 KiB
constexpr int kBBytes = kN * kN * 2;            // 32 KiB per B operand (hi, lo)
constexpr int kColStride = 36;                  // c_j stored [group][36]: float4 reads of 4 groups hit distinct banks

template <int WG, int STAGES>
struct WCfg {
  static constexpr int kThreads = 128 * WG;
  static constexpr int kBHi = 0;
  static constexpr int kBLo = kBBytes;
  static constexpr int kStage0 = 2 * kBBytes;
  static constexpr int kCol = kStage0 + WG * STAGES * kTileBytes;
  static constexpr int kGroupC = kCol + 4 * kColStride * 4;
  static constexpr int kSmem = kGroupC + 4 * 4 + 1024;  // + slack to align the base to 1024 bytes
};

// B row (accumulator column) holding output column col: the inverse of n = 8j + 2q + b -> 32q + 2j + b.
[[maybe_unused]] __device__ __forceinline__ int acc_col_of(int col) { return 8 * ((col % 32) / 2) + 2 * (col / 32) + col % 2; }

// Codes (16 bytes) and scales of one thread's output columns 32q .. 32q+31 of chunk `chunk`.
template <Format F>
__device__ __forceinline__ void store_row(uint8_t* codes, uint8_t* scales, int64_t chunk, int q, uint4 w,
                                          const uint8_t* sc, int64_t groups_per_row, ScaleLayout layout) {
  constexpr int kGroups = 32 / group_size(F);
  *reinterpret_cast<uint4*>(codes + chunk * (kN / 2) + 16 * q) = w;
#pragma unroll
  for (int j = 0; j < kGroups; ++j)
    scales[core::scale_offset(chunk * (4 * kGroups) + kGroups * q + j, groups_per_row, layout)] = sc[j];
}

// Row `row` of a tile, output columns 32q .. 32q+31, recomputed from its own rotation block only (each output
// sums RIN products, as the reference does) and encoded by the CPU's code: the same bits as the fast path for
// finite groups (mx_group_scaled, mx_group and nv_group are that code's rules). Out of line, for the rare rows
// where a non-finite input reached other blocks through the zero blocks of the 128-wide operand.
template <typename T, int RIN, Format F, core::MxRule RULE>
static __device__ __noinline__ void repair_row(const unsigned char* xt, int row, const unsigned char* bhi,
                                               const unsigned char* blo, const float* colc, int q, float g,
                                               ScaleLayout layout, int64_t chunk, int64_t groups_per_row, uint8_t* codes,
                                               uint8_t* scales) {
  float y[32];
  for (int jj = 0; jj < 32; ++jj) {
    const int j = 32 * q + jj;
    const int n = acc_col_of(j), k0 = (j / RIN) * RIN;
    float sum = 0.0f;
    for (int i = 0; i < RIN; ++i) {
      const float xv = to_float(*reinterpret_cast<const T*>(xt + sw128_offset(row, k0 + i, kTileRows)));
      const int bo = sw128_offset(n, k0 + i, kN);
      sum = __fmaf_rn(xv, to_float(*reinterpret_cast<const T*>(bhi + bo)), sum);
      if (blo != nullptr) sum = __fmaf_rn(xv, to_float(*reinterpret_cast<const T*>(blo + bo)), sum);
    }
    y[jj] = __fmul_rn(colc[q * kColStride + jj], sum);
  }
  uint4 c;  // canonical packing: byte i holds elements 2i, 2i+1
  uint8_t sc[2];
  uint8_t* cb = reinterpret_cast<uint8_t*>(&c);
  if constexpr (F == Format::kMxFp4) {
    sc[0] = core::mx_quantize_block(y, RULE, cb);
  } else {
    sc[0] = core::nv_quantize_block(y, g, cb);
    sc[1] = core::nv_quantize_block(y + 16, g, cb + 8);
  }
  store_row<F>(codes, scales, chunk, q, c, sc, groups_per_row, layout);
}

template <typename T, int RIN, Format F, core::MxRule RULE, int WG, int STAGES>
__global__ void __launch_bounds__(128 * WG, 1)
    rotate_quantize_sm90_kernel(const T* __restrict__ x, int64_t n_chunks, int64_t K, const float* __restrict__ rot,
                                 const float* __restrict__ gs, ScaleLayout layout, uint8_t* __restrict__ codes,
                                 uint8_t* __restrict__ scales) {
#if FPQUANT_WGMMA
  using C = WCfg<WG, STAGES>;
  constexpr int G = group_size(F);
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x;

  // ---- Per-warpgroup tile pipeline.
  const int wg = tid / 128, wt = tid % 128, warp = wt / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t n_tiles = (n_chunks + kTileRows - 1) / kTileRows;
  // CTA b takes tiles b, b + grid, b + 2 grid, ... (an equal share per SM) and its warpgroups take turns.
  const int64_t cta_tiles = blockIdx.x < n_tiles ? (n_tiles - blockIdx.x + gridDim.x - 1) / gridDim.x : 0;
  const int64_t my_tiles = wg < cta_tiles ? (cta_tiles - wg + WG - 1) / WG : 0;
  auto tile_of = [&](int64_t it) { return blockIdx.x + static_cast<int64_t>(gridDim.x) * (wg + WG * it); };
  const int stage0 = C::kStage0 + wg * STAGES * kTileBytes;
  // Thread wt copies 16-byte chunk lc of rows li + 8u: the swizzled position is the same for every u.
  const int li = wt / 16, lc = wt % 16;
  const int soff = sw128_offset(li, 8 * lc, kTileRows);
  auto load_tile = [&](int64_t it) {
    const int64_t row0 = tile_of(it) * kTileRows + li;
    unsigned char* dst = smem + stage0 + static_cast<int>(it % STAGES) * kTileBytes + soff;
    const T* src = x + row0 * kN + 8 * lc;
#pragma unroll
    for (int u = 0; u < kTileRows / 8; ++u) {
      const bool valid = row0 + 8 * u < n_chunks;
      cp_async16(dst + u * 8 * 128, valid ? src + u * 8 * kN : x, valid);
    }
  };

  // ---- The rotation, while the first tiles load: float32 R staged in the stage slots the prologue leaves free
  // (slot STAGES-1 of each warpgroup, 16 KiB each), column scales c_j, then S = R / c (hi, lo) as B.
  constexpr int kRowsPer = 16384 / (RIN * 4);  // rows of R per free slot
  static_assert((RIN + kRowsPer - 1) / kRowsPer <= WG, "R fits in the free slots");
  auto r_row = [&](int k) {
    return smem + C::kStage0 + (k / kRowsPer) * STAGES * kTileBytes + (STAGES - 1) * kTileBytes + (k % kRowsPer) * RIN * 4;
  };
  for (int c = tid; c < RIN * RIN / 4; c += C::kThreads)
    cp_async16(r_row(c / (RIN / 4)) + 16 * (c % (RIN / 4)), rot + 4 * c, true);
  cp_async_commit();
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < my_tiles) load_tile(s);
    cp_async_commit();
  }
  cp_async_wait<STAGES - 1>();  // R has arrived; the tiles may still be in flight
  __syncthreads();
  auto rs = [&](int k, int j) { return reinterpret_cast<const float*>(r_row(k))[j]; };
  float* colc = reinterpret_cast<float*>(smem + C::kCol);
  float* group_c = reinterpret_cast<float*>(smem + C::kGroupC);
  if (tid < kN) {  // warp w: the columns of group w
    float part[8] = {};  // NaN-propagating, so a NaN column stays NaN; an all-zero column gets 1
#pragma unroll
    for (int k = 0; k < RIN; ++k) part[k % 8] = max_nan(part[k % 8], fabsf(rs(k, tid % RIN)));
    float c = part[0];
#pragma unroll
    for (int i = 1; i < 8; ++i) c = max_nan(c, part[i]);
    c = c == 0.0f ? 1.0f : c;
    colc[(tid / 32) * kColStride + tid % 32] = c;
    const bool same = __all_sync(0xffffffffu, c == __shfl_sync(0xffffffffu, c, 0));
    if (tid % 32 == 0) group_c[tid / 32] = same ? c : 0.0f;  // the group's common c_j, or 0
  }
  __syncthreads();
  // B row n (output column col) holds S[k][col] = R[k][col] / c_col for 8 consecutive k per item. Consecutive
  // threads take consecutive columns, so the reads of R are conflict-free; each thread keeps one column.
  bool lo_nonzero = false;
  static_assert(C::kThreads % kN == 0, "one column per thread");
  const int col = tid % kN;
  const int n = acc_col_of(col);
  const float cj = colc[(col / 32) * kColStride + col % 32], rcj = __frcp_rn(cj);
  for (int kc = tid / kN; kc < kN / 8; kc += C::kThreads / kN) {
    float hi[8], lo[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int k = 8 * kc + i;
      const float v = k / RIN == col / RIN ? rs(k % RIN, col % RIN) : 0.0f;
      // exactly +-1 where |v| = c_j (every entry of a Hadamard column), else v / c_j within an ULP
      const float sv = fabsf(v) == cj ? copysignf(1.0f, v) : __fmul_rn(v, rcj);
      hi[i] = round_to<T>(sv);
      lo[i] = sv - hi[i];  // exact
      lo_nonzero = lo_nonzero || lo[i] != 0.0f;
    }
    const int off = sw128_offset(n, 8 * kc, kN);
    *reinterpret_cast<uint4*>(smem + C::kBHi + off) =
        make_uint4(pack2<T>(hi[0], hi[1]), pack2<T>(hi[2], hi[3]), pack2<T>(hi[4], hi[5]), pack2<T>(hi[6], hi[7]));
    *reinterpret_cast<uint4*>(smem + C::kBLo + off) =
        make_uint4(pack2<T>(lo[0], lo[1]), pack2<T>(lo[2], lo[3]), pack2<T>(lo[4], lo[5]), pack2<T>(lo[6], lo[7]));
  }
  fence_proxy_async_shared();
  const bool needs_lo = __syncthreads_or(lo_nonzero) != 0;  // also: R no longer read, its slots free

  NvGlobal ng{};
  if constexpr (F == Format::kNvFp4) ng = nv_global(gs);
  const int64_t groups_per_row = K / G;
  const float cu = group_c[q];  // this thread's group's common column scale (0: columns differ)
  bool fold = false;            // MXFP4: c folded into the power-of-two multiplier (mx_group_scaled)
  if constexpr (F == Format::kMxFp4 && RULE != core::MxRule::kQuest) fold = cu >= 0x1p-20f && cu <= 0x1p20f;
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = 0.0f;

  // The lo pass is chosen outside the loop: a wgmma under a branch the compiler cannot prove uniform is
  // serialized (ptxas C7520).
  auto run = [&](auto with_lo) {
    for (int64_t it = 0; it < my_tiles; ++it) {
      cp_async_wait<STAGES - 2>();
      fence_proxy_async_shared();
      warpgroup_barrier(1 + wg);  // tile `it` visible; the slot refilled below was last read by tile it-1's MMAs
      if (it + STAGES - 1 < my_tiles) load_tile(it + STAGES - 1);
      cp_async_commit();

      const uint32_t a_addr = smem_addr + stage0 + static_cast<int>(it % STAGES) * kTileBytes;
#pragma unroll
      for (int i = 0; i < 64; ++i) fence_operand(acc[i]);
      wgmma_fence();
      // K-step s: its 64-element K half, then 32 bytes per step inside it (wgmma.cuh sw128_desc).
      auto mma_pass = [&](int b_off, bool first) {
#pragma unroll
        for (int s = 0; s < kN / 16; ++s)
          wgmma_m64nNk16<T, kN>(acc, sw128_desc(a_addr + (s / 4) * (kTileRows * 128) + (s % 4) * 32),
                                sw128_desc(smem_addr + b_off + (s / 4) * (kN * 128) + (s % 4) * 32), !first || s > 0);
      };
      mma_pass(C::kBHi, true);
      if constexpr (decltype(with_lo)::value) mma_pass(C::kBLo, false);
      wgmma_commit();
      wgmma_wait<0>();
#pragma unroll
      for (int i = 0; i < 64; ++i) fence_operand(acc[i]);

      // ---- Epilogue: rows g and g + 8 of this warp's 16; output columns 32q .. 32q+31 of each. Value 8m + k of
      // row h's 32 (output column 32q + 8m + k) is accumulator column 8 (4m + k/2) + 2q + k%2. Both rows (and
      // all their groups) are encoded together so that their independent chains interleave.
      auto at = [&](int h, int m, int k) -> float& { return acc[16 * m + 4 * (k / 2) + 2 * h + (k % 2)]; };
      constexpr int kGroups = F == Format::kMxFp4 ? 1 : 2;  // per row
      uint32_t w[2][4];
      uint8_t sc[2][kGroups];
      if (!fold) {  // y_j = RN(c_j * acc_j), as the CPU's float32 rotated values are rounded once
        if (cu != 0.0f) {
#pragma unroll
          for (int i = 0; i < 64; ++i) acc[i] = __fmul_rn(cu, acc[i]);
        } else {
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            const float4* cp = reinterpret_cast<const float4*>(colc + q * kColStride + 8 * m);
            const float4 c0 = cp[0], c1 = cp[1];
            const float cc[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
#pragma unroll
            for (int h = 0; h < 2; ++h)
#pragma unroll
              for (int k = 0; k < 8; ++k) at(h, m, k) = __fmul_rn(cc[k], at(h, m, k));
          }
        }
      }
      if constexpr (F == Format::kMxFp4) {
        auto row = [&](int h) {
          return [&, h](int j, float (&out)[8]) {
#pragma unroll
            for (int k = 0; k < 8; ++k) out[k] = at(h, j, k);
          };
        };
        bool done = false;
        if constexpr (RULE != core::MxRule::kQuest) {
          if (fold) {
            uint8_t s2[2];
            mx_groups_scaled<RULE, 2>([&](int h, int j, float (&out)[8]) { row(h)(j, out); }, cu, w, s2);
            sc[0][0] = s2[0];
            sc[1][0] = s2[1];
            done = true;
          }
        }
        if (!done) {
#pragma unroll
          for (int h = 0; h < 2; ++h) sc[h][0] = mx_group<RULE>(row(h), w[h]);
        }
      } else {
        uint32_t w4[4][2];
        uint8_t s4[4];
        nv_groups<4>([&](int gi, int j, float (&out)[8]) {
#pragma unroll
          for (int k = 0; k < 8; ++k) out[k] = at(gi / 2, 2 * (gi % 2) + j, k);
        }, ng, w4, s4);
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          w[h][0] = w4[2 * h][0]; w[h][1] = w4[2 * h][1]; w[h][2] = w4[2 * h + 1][0]; w[h][3] = w4[2 * h + 1][1];
          sc[h][0] = s4[2 * h];
          sc[h][1] = s4[2 * h + 1];
        }
      }
      const int64_t tile = tile_of(it);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = 16 * warp + 8 * h + g;
        const int64_t chunk = tile * kTileRows + row;
        if (chunk >= n_chunks) continue;
        if constexpr (RIN < kN) {
          // The zero blocks of the block-diagonal expansion multiply the other blocks' inputs: an infinity or
          // NaN there (inf * 0 = NaN) would spread to every group of the chunk. Such groups come out with the
          // NaN scale; their rows (rare) are recomputed from their own blocks only, out of line.
          bool nan_group = false;
#pragma unroll
          for (int j = 0; j < kGroups; ++j)
            nan_group = nan_group | (F == Format::kMxFp4 ? sc[h][j] == core::kE8M0Nan : (ng.ok && (sc[h][j] & 0x7F) == 0x7F));
          if (nan_group) {
            repair_row<T, RIN, F, RULE>(smem + stage0 + static_cast<int>(it % STAGES) * kTileBytes, row, smem + C::kBHi,
                                        decltype(with_lo)::value ? smem + C::kBLo : nullptr, colc, q, ng.g, layout,
                                        chunk, groups_per_row, codes, scales);
            continue;
          }
        }
        store_row<F>(codes, scales, chunk, q, make_uint4(w[h][0], w[h][1], w[h][2], w[h][3]), sc[h], groups_per_row,
                     layout);
      }
    }
  };
  if (needs_lo) run(std::true_type{});
  else run(std::false_type{});
#else
  // Not an sm_90a target (this file is compiled for sm_90a alone; the guard keeps a stray build honest).
  static_assert(WCfg<WG, STAGES>::kBLo == WCfg<WG, STAGES>::kBHi + kBBytes, "B operands side by side");
#endif
}

// Warpgroups per CTA x stages per warpgroup, one CTA per SM. The kernel is latency-bound (few warps per
// scheduler, each with long dependent per-group chains), so warps matter more than stages: a warpgroup spends
// microseconds on a tile and one tile in flight covers the load latency. Measured on the H100: 4 x 2 (up to
// 128 registers) beat 3 x 3 (up to 168) by 5-10% of copy bandwidth (docs/perf/quantize.md, "Tried and dropped").
constexpr int kWG = kRotateSm90Warpgroups;
constexpr int kStages = 2;

template <typename T, int RIN, Format F, core::MxRule RULE, int WG, int STAGES>
cudaError_t launch_variant(const QuantizeParams& p, cudaStream_t stream) {
  using C = WCfg<WG, STAGES>;
  auto kernel = rotate_quantize_sm90_kernel<T, RIN, F, RULE, WG, STAGES>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const int64_t n_chunks = p.rows * p.K / kN;
  const int64_t tiles = (n_chunks + kTileRows - 1) / kTileRows;
  const unsigned grid = grid_for(tiles, WG, 1);  // one CTA per SM
  kernel<<<grid, C::kThreads, C::kSmem, stream>>>(static_cast<const T*>(p.x), n_chunks, p.K, p.rot,
                                                  p.global_scale, p.layout, p.codes, p.scales);
  return cudaGetLastError();
}

template <typename T, int RIN, Format F, core::MxRule RULE>
cudaError_t launch(const QuantizeParams& p, cudaStream_t stream) {
  return launch_variant<T, RIN, F, RULE, kWG, kStages>(p, stream);
}

template <typename T, Format F, core::MxRule RULE>
cudaError_t by_size(const QuantizeParams& p, cudaStream_t stream) {
  switch (p.r) {
    case 16: return launch<T, 16, F, RULE>(p, stream);
    case 32: return launch<T, 32, F, RULE>(p, stream);
    case 64: return launch<T, 64, F, RULE>(p, stream);
    case 128: return launch<T, 128, F, RULE>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t quantize_rotated_sm90(const QuantizeParams& p, cudaStream_t stream) {
  return with_format_rule(p.format, p.rule, [&](auto f, auto rule) {
    constexpr Format F = decltype(f)::value;
    constexpr core::MxRule RULE = decltype(rule)::value;
    return p.dtype == DType::kBF16 ? by_size<__nv_bfloat16, F, RULE>(p, stream) : by_size<__half, F, RULE>(p, stream);
  });
}

}  // namespace fpquant::cuda
