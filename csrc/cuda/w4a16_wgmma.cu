// Weight-only FP4 GEMM on Hopper warpgroup MMA (wgmma, sm_90a) for batches above the mma.sync kernels' sizes.
//
// From about a hundred rows of x on, each weight is used many times, and the mma.sync kernels
// (w4a16_gemm.cu), which decode the weight in registers for every 16 rows, lose to a bf16 cuBLAS GEMM. Here
// each CTA decodes a weight tile once into shared memory, in the 16-bit tensor-core type and the layout
// wgmma reads, and two warpgroups multiply it by 128 rows of x:
// - CTA tile: 128 rows of x (64 per warpgroup, the wgmma M) x BN = 256 features (the wgmma N), 64 k per
//   stage (one 128-byte swizzle row of 16-bit values). x is the A operand and the decoded weight the B
//   operand, both K-major, so the x tile is a plain copy of x's rows (TMA, 128-byte swizzle) and each
//   decoded word of 8 codes is one 16-byte store.
// - Copies are TMA (one thread issues x, codes and scale boxes, STAGES - 2 chunks ahead, completing on a
//   per-stage mbarrier). Per-thread cp.async copies were measured 1.3-1.5x slower here: the proxy fence
//   that must follow the decode's shared-memory stores (MEMBAR) also waited for the thread's copies still
//   in flight, so every chunk paid a memory latency (benchmarks/NOTES.md, session 7).
// - Chunk c is decoded into one of three weight buffers while the wgmmas of chunk c - 1 still run (wgmma is
//   asynchronous); one CTA barrier per chunk.
// - E2M1 -> 16-bit by the byte-permute tables (exact) times the group scale in the 16-bit type (exact, as in
//   w4a16_gemm.cu); the NVFP4 global scale divides the float32 sums in the epilogue.
// - grid.x walks the row tiles of x fastest, so the CTAs that share a weight tile run together and the
//   weight comes from HBM about once; split-K (grid.z) when the tiles alone cover too few SMs, with partials
//   reduced in split order by w4a16_common.cuh (deterministic).
// Only sm_90a has wgmma and TMA: other targets compile an empty kernel that w4a16_wgmma_applies never selects.
#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/mma.cuh"
#include "cuda/tma.cuh"
#include "cuda/w4a16_common.cuh"
#include "cuda/wgmma.cuh"

namespace fpquant::cuda {
namespace {
using namespace w4a16;

constexpr int kBK = 64;  // k per stage: one 128-byte swizzle row of 16-bit values

template <Format F>
constexpr int kScaleChunks = 16 * group_size(F) / kBK;  // chunks covered by one 16-byte scale box (8 or 4)

template <int BN, int STAGES>
struct WCfg {
  static_assert(STAGES >= 3, "the prefetch distance is STAGES - 2");
  static constexpr int kBM = 128;  // rows of x per CTA: two warpgroups of 64 (the wgmma M)
  static constexpr int kThreads = 256;
  static constexpr int kTasks = BN * kBK / 32;  // decode items per stage: 32 codes (16 bytes) of one feature row
  static constexpr int kXBytes = kBM * 128;     // a stage of x: [kBM][64] 16-bit, 128-byte swizzle (TMA)
  static constexpr int kWBytes = BN * 128;      // a decoded weight buffer: [BN][64] 16-bit, same swizzle
  static constexpr int kWBufs = 3;              // chunk c's buffer is rewritten by chunk c + 3 (see the loop)
  static constexpr int kCodeBytes = BN * 32;    // a stage of codes: [BN][32 bytes]
  static constexpr int kScaleBytes = BN * 16;   // a scale slot: [BN][16 bytes], kScaleChunks chunks
  static constexpr int kX = 0;                  // offsets from the 1024-byte aligned base
  static constexpr int kW = kX + STAGES * kXBytes;
  static constexpr int kCodes = kW + kWBufs * kWBytes;
  static constexpr int kScales = kCodes + STAGES * kCodeBytes;
  static constexpr int kBars = kScales + 2 * kScaleBytes;
  static constexpr int kSmem = kBars + 8 * STAGES + 1024;  // + the alignment slack
  static constexpr int kTasksPerThread = kTasks / kThreads;
  static_assert(kTasks % kThreads == 0, "whole items per thread");
  static_assert(kSmem <= 227 * 1024, "fits the opt-in shared memory of an sm_90 CTA");
};

// Tensor maps of the three inputs (built on the host by make_maps): x [M][K] in 128 x 64 boxes with the
// 128-byte swizzle; codes [N][K/2] in BN x 32-byte boxes; scales [N][K/G] in BN x 16-byte boxes.
struct Maps {
  CUtensorMap x, codes, scales;
};

template <typename AT, Format F, int BN, int STAGES>
__global__ void __launch_bounds__(256, 1) w4a16_wgmma_kernel(W4A16Params p, const __grid_constant__ Maps maps) {
#if FPQUANT_WGMMA
  using C = WCfg<BN, STAGES>;
  constexpr int kSC = kScaleChunks<F>;
  extern __shared__ unsigned char smem_raw[];
  const uint32_t raw_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem_raw));
  unsigned char* smem = smem_raw + (((raw_addr + 1023u) & ~1023u) - raw_addr);
  const uint32_t smem_addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int m0 = static_cast<int>(blockIdx.x) * C::kBM, n0 = static_cast<int>(blockIdx.y) * BN;
  const int chunks = static_cast<int>(p.K / kBK);
  const int c_begin = static_cast<int>(static_cast<int64_t>(chunks) * blockIdx.z / p.splits);
  const int c_end = static_cast<int>(static_cast<int64_t>(chunks) * (blockIdx.z + 1) / p.splits);
  const int n_local = c_end - c_begin;
  const uint32_t bars = smem_addr + C::kBars;

  // Thread 0 issues every copy: chunk c's x and codes into stage `stage`, and the 16-byte scale box that
  // holds chunk c's scales into slot (c / kSC) % 2 when c starts a box (or the CTA's range).
  auto issue = [&](int c, int stage) {
    const bool scales = c % kSC == 0 || c == c_begin;
    const uint32_t bar = bars + 8 * stage;
    mbar_arrive_expect_tx(bar, C::kXBytes + C::kCodeBytes + (scales ? C::kScaleBytes : 0));
    tma_load_2d(smem_addr + C::kX + stage * C::kXBytes, &maps.x, c * kBK, m0, bar);
    tma_load_2d(smem_addr + C::kCodes + stage * C::kCodeBytes, &maps.codes, c * (kBK / 2), n0, bar);
    if (scales) tma_load_2d(smem_addr + C::kScales + (c / kSC) % 2 * C::kScaleBytes, &maps.scales, c / kSC * 16, n0, bar);
  };
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) mbar_init(bars + 8 * s, 1);
    mbar_init_fence();
  }
  __syncthreads();
  if (tid == 0)
    for (int s = 0; s < STAGES - 2 && s < n_local; ++s) issue(c_begin + s, s);

  // Item t = tid + kThreads i: feature row r = t / 2, codes k in [32h, 32h + 32) of the chunk (h = t % 2):
  // four 16-byte stores of eight decoded values each, k-consecutive (decode8), times the group scale.
  int woff[C::kTasksPerThread][4];
#pragma unroll
  for (int i = 0; i < C::kTasksPerThread; ++i) {
    const int t = tid + C::kThreads * i, r = t / 2, h = t % 2;
#pragma unroll
    for (int v = 0; v < 4; ++v) woff[i][v] = C::kW + sw128_offset(r, 32 * h + 8 * v, BN);
  }
  auto decode = [&](int stage, int buf, int c) {
    const unsigned char* sslot = smem + C::kScales + (c / kSC) % 2 * C::kScaleBytes;
#pragma unroll
    for (int i = 0; i < C::kTasksPerThread; ++i) {
      const int t = tid + C::kThreads * i, r = t / 2, h = t % 2;
      const uint4 cw = *reinterpret_cast<const uint4*>(smem + C::kCodes + stage * C::kCodeBytes + 16 * t);
      uint32_t s2[2];
      if constexpr (F == Format::kMxFp4) {  // group 2c + h of the row; the box starts at group 16 (c / 8)
        s2[0] = s2[1] = splat<AT>(group_scale<F>(sslot[16 * r + 2 * (c % kSC) + h]));
      } else {  // groups 4c + 2h and 4c + 2h + 1; the box starts at group 16 (c / 4)
        const uint32_t two = *reinterpret_cast<const uint16_t*>(sslot + 16 * r + 4 * (c % kSC) + 2 * h);
        const uint32_t pair = e4m3x2_to<AT>(two);
        s2[0] = prmt(pair, pair, 0x1010u);
        s2[1] = prmt(pair, pair, 0x3232u);
      }
      const uint32_t words[4] = {cw.x, cw.y, cw.z, cw.w};
#pragma unroll
      for (int v = 0; v < 4; ++v) {
        uint32_t o[4];
        decode8<AT>(words[v], o);
#pragma unroll
        for (int j = 0; j < 4; ++j) o[j] = hmul2<AT>(o[j], s2[v / 2]);
        *reinterpret_cast<uint4*>(smem + buf * C::kWBytes + woff[i][v]) = make_uint4(o[0], o[1], o[2], o[3]);
      }
    }
  };

  float acc[BN / 2];
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) acc[i] = 0.0f;

  // One barrier per chunk. Before it: chunk `it` has landed (its stage's mbarrier phase), this thread has
  // decoded its items into weight buffer it % 3 and fenced those shared-memory writes for the async proxy
  // that wgmma reads through. After it: the chunk's wgmmas are issued, then the copies of chunk
  // it + STAGES - 2 into the stage of chunk it - 2, whose wgmmas every warpgroup waited for (wgmma_wait<1> in
  // iteration it - 1) before reaching this barrier. Weight buffer it % 3 was last read by the wgmmas of
  // chunk it - 3, finished before the barrier of iteration it - 1. A scale slot is rewritten 2 kSC >= 8
  // chunks after its first use and at least kSC after its last decode.
  int stage = 0, buf = 0, next_stage = STAGES - 2;
  uint32_t phase = 0;
  for (int it = 0; it < n_local; ++it) {
    mbar_wait(bars + 8 * stage, phase);
    decode(stage, buf, c_begin + it);
    fence_proxy_async_shared();
    __syncthreads();

    const uint32_t a = smem_addr + C::kX + stage * C::kXBytes + wg * 64 * 128;
    const uint32_t b = smem_addr + C::kW + buf * C::kWBytes;
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) fence_operand(acc[i]);
    wgmma_fence();
#pragma unroll
    for (int s = 0; s < kBK / 16; ++s) wgmma_m64nNk16<AT, BN>(acc, sw128_desc(a + 32 * s), sw128_desc(b + 32 * s), true);
    wgmma_commit();
    if (tid == 0 && it + STAGES - 2 < n_local) issue(c_begin + it + STAGES - 2, next_stage);
    wgmma_wait<1>();
#pragma unroll
    for (int i = 0; i < BN / 2; ++i) fence_operand(acc[i]);
    if (++stage == STAGES) {
      stage = 0;
      phase ^= 1u;
    }
    next_stage = next_stage + 1 == STAGES ? 0 : next_stage + 1;
    buf = buf + 1 == C::kWBufs ? 0 : buf + 1;
  }
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < BN / 2; ++i) fence_operand(acc[i]);

  // Epilogue: lane (g, q) of warp w holds rows 16w + g (+ 8) of its warpgroup's 64 and features 8j + 2q, +1.
  const float inv_g = F == Format::kNvFp4 ? 1.0f / __ldg(p.global_scale) : 1.0f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t m = m0 + 64 * wg + 16 * warp + g + 8 * h;
    if (m >= p.M) continue;
#pragma unroll
    for (int j = 0; j < BN / 8; ++j) {
      const int64_t n = n0 + 8 * j + 2 * q;
      if (n >= p.N) continue;
      store_pair<AT, F>(p, m, n, acc[4 * j + 2 * h], acc[4 * j + 2 * h + 1], inv_g);
    }
  }
#endif
}

// 256 features per CTA (wgmma N = 256) and 4 stages: on the H100 this beat 128 features (6 stages) by 10-25%
// from 512 rows on, and at 128 rows lost up to 7% on 8192 x 8192 but won 15% on 28672 x 8192
// (benchmarks/NOTES.md, session 7).
constexpr int kBN = 256;
constexpr int kStages = 4;

// cuTensorMapEncodeTiled through the runtime's driver entry point (no link against libcuda).
using EncodeTiled = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                 const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                 CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiled encode_tiled() {
  static EncodeTiled fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q{};
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault, &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess)
      f = nullptr;
    return reinterpret_cast<EncodeTiled>(f);
  }();
  return fn;
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

template <typename AT, Format F, int BN, int STAGES>
cudaError_t launch_tile(const W4A16Params& p, cudaStream_t stream) {
  using C = WCfg<BN, STAGES>;
  constexpr int G = group_size(F);
  Maps maps;
  const CUtensorMapDataType xt = std::is_same_v<AT, __half> ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16;
  if (!make_map(&maps.x, xt, p.x, p.K, p.M, p.K * 2, kBK, C::kBM, CU_TENSOR_MAP_SWIZZLE_128B) ||
      !make_map(&maps.codes, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.codes, p.K / 2, p.N, p.K / 2, kBK / 2, BN,
                CU_TENSOR_MAP_SWIZZLE_NONE) ||
      !make_map(&maps.scales, CU_TENSOR_MAP_DATA_TYPE_UINT8, p.scales, p.K / G, p.N, p.K / G, 16, BN,
                CU_TENSOR_MAP_SWIZZLE_NONE))
    return cudaErrorInvalidValue;
  auto kernel = w4a16_wgmma_kernel<AT, F, BN, STAGES>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, C::kSmem);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.M + C::kBM - 1) / C::kBM), static_cast<unsigned>((p.N + BN - 1) / BN),
                  static_cast<unsigned>(p.splits));
  kernel<<<grid, C::kThreads, C::kSmem, stream>>>(p, maps);
  err = cudaGetLastError();
  return err != cudaSuccess ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT, Format F>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  return launch_tile<AT, F, kBN, kStages>(p, stream);
}

}  // namespace

bool w4a16_wgmma_applies(const W4A16Params& p) {
  // The tensor maps need 16-byte aligned bases and row strides (scales: K / G bytes per row, K % 512 for
  // MXFP4, K % 256 for NVFP4), and row/column coordinates that fit an int.
  const int64_t scale_row = p.K / group_size(p.format);
  return p.K % kW4A16ChunkK == 0 && scale_row % 16 == 0 && reinterpret_cast<uintptr_t>(p.x) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(p.codes) % 16 == 0 && reinterpret_cast<uintptr_t>(p.scales) % 16 == 0 &&
         p.M < (1LL << 31) && p.N < (1LL << 31) && p.K < (1LL << 31) && is_sm90();
}

// Split-K only while the tiles cover at most half the SMs (one CTA per SM), keeping at least 8 chunks of 64
// per split.
int w4a16_wgmma_splits(int64_t M, int64_t N, int64_t K) {
  const int64_t ctas = ((M + WCfg<kBN, kStages>::kBM - 1) / WCfg<kBN, kStages>::kBM) * ((N + kBN - 1) / kBN);
  const int64_t max_splits = K / (kBK * 8);
  int s = 1;
  while (ctas * s * 2 <= num_sms() && s * 2 <= max_splits) s *= 2;
  return s;
}

cudaError_t w4a16_wgmma(const W4A16Params& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBF16;
  if (p.format == Format::kMxFp4)
    return bf16 ? launch<__nv_bfloat16, Format::kMxFp4>(p, stream) : launch<__half, Format::kMxFp4>(p, stream);
  return bf16 ? launch<__nv_bfloat16, Format::kNvFp4>(p, stream) : launch<__half, Format::kNvFp4>(p, stream);
}

}  // namespace fpquant::cuda
