// Weight-only FP4 GEMM on Hopper warpgroup MMA (wgmma, sm_90a) for batches above the mma.sync kernels' sizes.
//
// From a few dozen rows of x on, each weight is used many times, and the mma.sync kernel (w4a16_mma.cu),
// which decodes the weight per chunk for at most 4 m-tiles of 16 rows, loses to a bf16 cuBLAS GEMM. Here the problem
// is computed transposed, out^T = W x^T: the weight is wgmma's A operand, decoded by each thread straight
// into its register fragment, and x (rows of x as the wgmma N) is the B operand read from shared memory.
// - CTA: WG consumer warpgroups (2 or 4), each with MT m64 tiles of features (CTA: 64 WG MT features) x BR
//   rows of x (the wgmma N, 128 or 256); 64 k per stage.
// - Copies are TMA, issued by a producer warpgroup (one lane; its registers go to the consumers) into STAGES
//   stages on full/empty mbarrier pairs, so the consumer warps never wait for each other: x tiles [BR][64]
//   in the 128-byte swizzle (the B descriptor's layout), and the stage's packed weight atoms
//   (core/w4a16_layout.h; one 16-feature x 64-k atom per warp and m-tile, codes 512 bytes, scales 32 or 64).
// - Register A: a lane's 16 bytes of its atom are its A fragments of the stage's 4 k-steps in natural k
//   order (one conflict-free 16-byte shared-memory read); e2m1_bits8 turns a word into 4 pairs in 3 integer
//   operations per pair and one HMUL2 applies the group scale (w4a16_common.cuh; exact). Per decoded pair: 4
//   operations and no shared-memory store (the canonical layout needed a byte pick per pair, 6 operations;
//   decoding into shared memory for a shared-memory A, ~11: docs/perf/w4a16.md, "Tried and dropped").
// - Two sets of A registers: chunk c + 1 is decoded while the wgmmas of chunk c run; each consumer warp
//   releases chunk c - 1's stage once those wgmmas completed.
// - grid.x walks the row tiles of x fastest, so the CTAs that share a weight tile run together and the
//   weight comes from HBM about once; split-K (grid.z) when the tiles alone cover too few SMs, with partials
//   reduced in split order by w4a16_common.cuh (deterministic).
// Only sm_90a has wgmma and TMA: CMake compiles this file for sm_90a alone (`*_sm90.cu`), FPQUANT_WGMMA keeps
// the body out of the host pass, and plan_w4a16 picks the kernel only where GpuInfo::runs_sm90().
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "core/w4a16_layout.h"
#include "cuda/common/mma.cuh"
#include "cuda/common/tma.cuh"
#include "cuda/w4a16/w4a16_common.cuh"
#include "cuda/common/wgmma.cuh"

namespace fpquant::cuda {
namespace {
using namespace w4a16;

constexpr int kBK = 64;  // k per stage: one 128-byte swizzle row of 16-bit x values

template <int BR, int WG, int MT, int STAGES, Format F>
struct WCfg {
  static_assert(STAGES >= 2, "chunk c + 1 lands while chunk c is computed");
  static_assert(BR == 128 || BR == 256, "wgmma N");
  static constexpr int kFeatures = 64 * WG * MT;  // features per CTA: WG consumer warpgroups x MT x 64
  static constexpr int kConsumers = 128 * WG;       // consumer warpgroups: decode + wgmma
  static constexpr int kThreads = kConsumers + 128;  // + a producer warpgroup (one lane issues the TMA)
  // Registers: the CTA launches with the most __launch_bounds__ allows (ptxas allocates that much when
  // setmaxnreg is used); the producer warpgroup gives all but kProducerRegs back to the CTA's pool, and the
  // consumers take no more than that pool holds (an inc beyond it would wait forever).
  static constexpr int kLaunchRegs = (65536 / kThreads > 255 ? 255 : 65536 / kThreads) / 8 * 8;
  static constexpr int kProducerRegs = 24;
  static constexpr int kPooledRegs = kLaunchRegs + 128 * (kLaunchRegs - kProducerRegs) / kConsumers;
  static constexpr int kConsumerRegs = (kPooledRegs > 240 ? 240 : kPooledRegs) / 8 * 8;
  static_assert(kConsumers * (kConsumerRegs - kLaunchRegs) <= 128 * (kLaunchRegs - kProducerRegs),
                "the consumers' registers come from the producer's");
  static constexpr int kAtoms = kFeatures / core::kPackRows;  // weight atoms per stage
  static constexpr int kAtomScales = core::pack_scale_bytes(group_size(F));
  static constexpr int kXBytes = BR * 128;                               // x: [BR][64] 16-bit, 128-byte swizzle
  static constexpr int kCodeBytes = kAtoms * core::kPackAtomBytes;        // codes: [atom][512 bytes]
  static constexpr int kScaleBytes = kAtoms * kAtomScales;                // scales: [atom][32 or 64 bytes]
  static constexpr int kX = 0;                                           // offsets from the 1024-byte aligned base
  static constexpr int kCodes = kX + STAGES * kXBytes;
  static constexpr int kScales = kCodes + STAGES * kCodeBytes;
  static constexpr int kBars = kScales + STAGES * kScaleBytes;  // full[STAGES], then empty[STAGES]
  static constexpr int kSmem = kBars + 16 * STAGES + 1024;           // + the alignment slack
  static_assert(kSmem <= 227 * 1024, "fits the opt-in shared memory of an sm_90 CTA");
};

// Tensor maps of the three inputs (built on the host by launch_tile): x [M][K] in BR x 64 boxes with the
// 128-byte swizzle; the packed codes as [N/16][K/64 atoms x 64 uint64] in boxes of one atom column
// (kFeatures/16 atoms); the packed scales as [N/16][K/64 x 16 * 64/G bytes] likewise.
struct Maps {
  CUtensorMap x, codes, scales;
};

// A fragments of one chunk for MT m-tiles: a[mt][s] is k-step s (16 k) of m-tile mt.
template <int MT>
using AFrag = uint32_t[MT][kBK / 16][4];

// This thread's code bytes and scale bytes of one chunk: atom atom[mt] of the stage for m-tile mt (its 16
// bytes; rows g and g + 8 of its scales).
template <Format F, int MT>
__device__ __forceinline__ void chunk_atoms(const unsigned char* codes, const unsigned char* scales,
                                            const int (&atom)[MT], int lane, uint4 (&c)[MT], uint32_t (&sc)[MT][2]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    c[mt] = *reinterpret_cast<const uint4*>(codes + atom[mt] * core::kPackAtomBytes + 16 * lane);
    const unsigned char* s = scales + atom[mt] * core::pack_scale_bytes(group_size(F));
    sc[mt][0] = atom_row_scales<F>(s, lane / 4);
    sc[mt][1] = atom_row_scales<F>(s, lane / 4 + 8);
  }
}

template <typename AT, Format F, int BR, int WG, int MT, int STAGES>
__global__ void __launch_bounds__(128 * WG + 128, 1) w4a16_wgmma_kernel(W4A16Params p, const __grid_constant__ Maps maps) {
#if FPQUANT_WGMMA
  using C = WCfg<BR, WG, MT, STAGES, F>;
  constexpr int kSteps = kBK / 16;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int m0 = static_cast<int>(blockIdx.x) * BR, n0 = static_cast<int>(blockIdx.y) * C::kFeatures;
  const int chunks = static_cast<int>(p.K / kBK);
  const int c_begin = static_cast<int>(static_cast<int64_t>(chunks) * blockIdx.z / p.splits);
  const int c_end = static_cast<int>(static_cast<int64_t>(chunks) * (blockIdx.z + 1) / p.splits);
  const int n_local = c_end - c_begin;
  const uint32_t bars = smem_addr + C::kBars;

  // full[s]: the copies of the stage's chunk landed (the producer's expect-tx arrival + bytes); empty[s]: the
  // 8 consumer warps are done with it (their wgmmas on it completed).
  const uint32_t full = bars, empty = bars + 8 * STAGES;
  if (tid == 0) mbar_init_ring(full, empty, STAGES, C::kConsumers / 32);
  __syncthreads();  // the last CTA-wide barrier: the producer warp leaves when its copies are issued

  if (tid >= C::kConsumers) {
    setmaxnreg_dec<C::kProducerRegs>();
    // Producer (one lane): chunk c's x, code atoms and scales into stage (c - c_begin) % STAGES once the
    // consumers freed it.
    if (tid != C::kConsumers) return;
    const int atom_row = n0 / core::kPackRows;
    for (int i = 0; i < n_local; ++i) {
      const int stage = i % STAGES, c = c_begin + i;
      if (i >= STAGES) mbar_wait(empty + 8 * stage, ((i / STAGES) - 1) & 1);
      const uint32_t bar = full + 8 * stage;
      mbar_arrive_expect_tx(bar, C::kXBytes + C::kCodeBytes + C::kScaleBytes);
      tma_load_2d(smem_addr + C::kX + stage * C::kXBytes, &maps.x, c * kBK, m0, bar);
      tma_load_2d(smem_addr + C::kCodes + stage * C::kCodeBytes, &maps.codes, c * (core::kPackAtomBytes / 8),
                  atom_row, bar);
      tma_load_2d(smem_addr + C::kScales + stage * C::kScaleBytes, &maps.scales, c * C::kAtomScales, atom_row, bar);
    }
    return;
  }
  setmaxnreg_inc<C::kConsumerRegs>();

  // Atoms of this warp: m-tile mt of warpgroup wg covers features 64 (MT wg + mt) .. + 63 of the CTA, the
  // warp's 16 of them are the stage's atom atom[mt]; the thread's accumulator rows are g and g + 8 of it.
  int atom[MT], row[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    atom[mt] = 4 * (MT * wg + mt) + warp;
#pragma unroll
    for (int h = 0; h < 2; ++h) row[mt][h] = 16 * atom[mt] + g + 8 * h;
  }

  float acc[MT][BR / 2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int i = 0; i < BR / 2; ++i) acc[mt][i] = 0.0f;

  // Chunk `it`: wait for its copies, decode into register set a, issue its wgmmas, wait for those of chunk
  // it - 1 (whose register set `prev` is then free) and release chunk it - 1's stage to the producer.
  auto step = [&](int it, AFrag<MT>& a, AFrag<MT>& prev) {
    const int stage = it % STAGES;
    mbar_wait(full + 8 * stage, (it / STAGES) & 1);
    uint4 c[MT];
    uint32_t sc[MT][2];
    chunk_atoms<F, MT>(smem + C::kCodes + stage * C::kCodeBytes, smem + C::kScales + stage * C::kScaleBytes, atom,
                       lane, c, sc);
    decode_atoms<AT, F, MT>(c, sc, a);
    const uint32_t xs = smem_addr + C::kX + stage * C::kXBytes;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int i = 0; i < BR / 2; ++i) fence_operand(acc[mt][i]);
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) wgmma_m64nNk16_rs<AT, BR>(acc[mt], a[mt][s], sw128_desc(xs + 32 * s));
    wgmma_commit();
    wgmma_wait<1>();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int s = 0; s < kSteps; ++s)
#pragma unroll
        for (int j = 0; j < 4; ++j) fence_operand(prev[mt][s][j]);
    __syncwarp();
    if (lane == 0 && it > 0) mbar_arrive(empty + 8 * ((it - 1) % STAGES));
  };
  AFrag<MT> a0, a1;
  for (int it = 0; it < n_local; it += 2) {
    step(it, a0, a1);
    if (it + 1 < n_local) step(it + 1, a1, a0);
  }
  wgmma_wait<0>();
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int i = 0; i < BR / 2; ++i) fence_operand(acc[mt][i]);
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int j = 0; j < 4; ++j) fence_operand(a0[mt][s][j]), fence_operand(a1[mt][s][j]);
  }

  // Epilogue: acc[mt][4j + 2h + e] is feature row[mt][h] of the CTA, x row m0 + 8j + 2q + e.
  const float unscale = kNvUnscale<AT, F>;
  const float scale = unscale * inv_global_scale(p);  // unscale is a power of two: one rounding
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t n = n0 + row[mt][h];
      if (n >= p.N) continue;
      const float b = p.bias != nullptr && p.splits == 1 ? to_float(static_cast<const AT*>(p.bias)[n]) : 0.0f;
#pragma unroll
      for (int j = 0; j < BR / 8; ++j)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int64_t m = m0 + 8 * j + 2 * q + e;
          if (m >= p.M) continue;
          const float v = acc[mt][4 * j + 2 * h + e];
          if (p.splits > 1) {
            p.workspace[(static_cast<int64_t>(blockIdx.z) * p.M + m) * p.N + n] = v * unscale;
          } else {
            store_float(static_cast<AT*>(p.out) + m * p.N + n, v * scale + b);
          }
        }
    }
#endif
}

// A 2-D map over a row-major [rows][cols] array of `elem`-byte elements with `row_bytes` between rows.
bool make_map(CUtensorMap* map, CUtensorMapDataType type, const void* base, uint64_t cols, uint64_t rows,
              uint64_t row_bytes, uint32_t box_cols, uint32_t box_rows, CUtensorMapSwizzle swizzle) {
  const EncodeTiled encode = encode_tiled();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {cols, rows};
  const cuuint64_t strides[1] = {row_bytes};
  const cuuint32_t box[2] = {box_cols, box_rows};
  const cuuint32_t elem_strides[2] = {1, 1};
  return encode(map, type, 2, const_cast<void*>(base), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

template <typename AT, Format F, int BR, int WG, int MT, int STAGES>
cudaError_t launch_tile(const W4A16Params& p, cudaStream_t stream) {
  using C = WCfg<BR, WG, MT, STAGES, F>;
  Maps maps;
  const CUtensorMapDataType xt = std::is_same_v<AT, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  const uint64_t atoms_k = p.K / core::kPackK, tiles = p.N / core::kPackRows;
  const uint64_t code_row = atoms_k * core::kPackAtomBytes, scale_row = atoms_k * C::kAtomScales;  // bytes
  if (!make_map(&maps.x, xt, p.x, p.K, p.M, p.K * 2, kBK, BR, CU_TENSOR_MAP_SWIZZLE_128B) ||
      !make_map(&maps.codes, CU_TENSOR_MAP_DATA_TYPE_UINT64, p.codes, code_row / 8, tiles, code_row,
                core::kPackAtomBytes / 8, C::kAtoms, CU_TENSOR_MAP_SWIZZLE_NONE) ||
      !make_map(&maps.scales, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.scales, scale_row, tiles, scale_row, C::kAtomScales,
                C::kAtoms, CU_TENSOR_MAP_SWIZZLE_NONE))
    return cudaErrorInvalidValue;
  auto kernel = w4a16_wgmma_kernel<AT, F, BR, WG, MT, STAGES>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.M + BR - 1) / BR),
                  static_cast<unsigned>((p.N + C::kFeatures - 1) / C::kFeatures), static_cast<unsigned>(p.splits));
  kernel<<<grid, C::kThreads, C::kSmem, stream>>>(p, maps);
  err = cudaGetLastError();
  return err != cudaSuccess ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT, Format F, int I = 0>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  if constexpr (I + 1 < kW4A16WgmmaTileCount) {
    if (p.config != I) return launch<AT, F, I + 1>(p, stream);
  }
  constexpr W4A16WgmmaTile t = kW4A16WgmmaTiles[I];
  return launch_tile<AT, F, t.rows, t.wg, t.mt, t.stages>(p, stream);
}

}  // namespace

cudaError_t w4a16_wgmma(const W4A16Params& p, cudaStream_t stream) {
  if (p.config < 0 || p.config >= kW4A16WgmmaTileCount) return cudaErrorInvalidValue;
  const bool bf16 = p.dtype == DType::kBF16;
  if (p.format == Format::kMxFp4)
    return bf16 ? launch<__nv_bfloat16, Format::kMxFp4>(p, stream) : launch<__half, Format::kMxFp4>(p, stream);
  return bf16 ? launch<__nv_bfloat16, Format::kNvFp4>(p, stream) : launch<__half, Format::kNvFp4>(p, stream);
}

}  // namespace fpquant::cuda
