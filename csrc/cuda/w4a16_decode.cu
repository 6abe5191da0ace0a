// Weight-only FP4 GEMM for decode sizes (M <= 16 rows of x) on mma.sync tensor cores (sm_80+).
//
// At these sizes the layer is a stream of weight bytes, and the GPU's issue slots, not the memory, were what
// bounded the first kernel (w4a16_gemm.cu at MT = 1: ~37 SASS instructions per 8 weights per thread, 0.5
// issued per scheduler cycle, ~1.1 TB/s; benchmarks/NOTES.md). This kernel spends ~25 (18 of them decode,
// scale and mma):
// - The weight is the A operand (16 features x 16 k per mma), x the B operand (8 rows: one B tile for
//   M <= 8, two for M <= 16), so each mma consumes 256 weights and the activation fragments are shared by
//   every weight tile of the warp.
// - E2M1 -> 16-bit by integer arithmetic, 3 operations per pair of values: the nibble, copied twice by one
//   multiply, keeps its magnitude bits as the low exponent bits and top mantissa bit and its sign bit as
//   the sign. The result is code * 2^-126 (bf16) or code * 2^-14 (fp16), the 0.5 code a subnormal; the
//   group-scale multiply that every weight needs anyway also removes that factor (see multipliers).
// - Each thread copies its own weight codes into private shared-memory slots with cp.async, kStages chunks
//   ahead, and one scale row for its warp, so the main loop needs only a __syncwarp and no registers hold
//   weight data in flight.
// - Several warps of a CTA share one group of 32 features and take turns along K (Cfg), so that a layer
//   fills the GPU with one launch and no split-K reduction, and the warps of a CTA read neighbouring
//   64-byte pieces of each weight row together (the copies ask the L2 for the whole 256 bytes). Their sums
//   meet in shared memory at the end.
// - Launched with programmatic dependent launch (sm_90+): the CTAs start while the previous kernel in the
//   stream finishes and wait (griddepcontrol.wait) before their first global read, which hides the launch
//   gap (H100: ~0.7 -> ~0.45 us between back-to-back calls, benchmarks/NOTES.md session 9).
//
// Operand layout (mma k may be permuted when A and B agree). Thread (g = lane/4, q = lane%4) of a warp owns
// weight rows g and g+8 of each 16-feature tile and, in every chunk of 128 k, the 32 codes k in
// [32q, 32q+32): word w (w = 0..3) of its 16 bytes holds k = 32q + 8w + i in nibble i. Decoding word w gives
// four pairs (nibble j, nibble j+4), j = 0..3: pairs 0 and 1 are the a0/a2 (row g) or a1/a3 (row g+8)
// registers of k-step 2w, pairs 2 and 3 those of k-step 2w+1. The B fragment of x row g is built to match:
// b0/b1 of k-step 2w + t are (x[8w+2t], x[8w+2t+4]) and (x[8w+2t+1], x[8w+2t+5]) (offsets from 32q).
// One MXFP4 scale covers a thread's 32 codes of a row; NVFP4 has two (words 0-1 and 2-3).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/async_copy.cuh"
#include "cuda/mma.cuh"
#include "cuda/w4a16_common.cuh"

namespace fpquant::cuda {
namespace {
using namespace w4a16;

constexpr int kTiles = kW4A16TileN / 16;  // 16-feature tiles per warp
constexpr int kRows = 2 * kTiles;         // weight rows per thread: tile t, rows g (2t) and g + 8 (2t + 1)
constexpr int kChunkCodeBytes = kW4A16ChunkK / 2;
static_assert(kRows == 4, "a thread copies the scales of row q of its kRows rows");

// Configuration I of kW4A16DecodeShapes (w4a16.h): a CTA of `warps` warps, of which `group_warps` share 32
// features and take the CTA's chunks of K in turn, so that the warps of a CTA read neighbouring 64-byte
// pieces of each weight row at about the same time, and a layer with few features still has enough warps in
// flight without a split-K reduction kernel.
template <int I>
struct Cfg {
  static constexpr W4A16DecodeShape kShape = kW4A16DecodeShapes[I];
  static constexpr int kWarps = kShape.warps, kSplit = kShape.group_warps, kStages = 4;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kFeatures = kShape.features();  // features per CTA
};

template <Format F, typename C>
struct Slots {  // one stage: codes [row][thread] (a warp's 16-byte reads are conflict-free), then scales
  static constexpr int kScaleBytes = kW4A16ChunkK / group_size(F);  // a row's scales for one chunk (4 or 8)
  static constexpr int kCodes = 0;
  static constexpr int kScales = kRows * C::kThreads * 16;
  static constexpr int kStage = kScales + C::kWarps * 32 * kScaleBytes;  // scales [warp][row r][g][bytes]
  static constexpr int kBytes = C::kStages * kStage;
};

template <typename AT, Format F, int NB, bool TWO>
__device__ __forceinline__ void chunk_mma(const uint4 (&wq)[kRows], const uint8_t (&sc)[kRows][2],
                                          const uint32_t (&bf)[NB][4][4], float (&acc)[kTiles][NB][4]) {
  constexpr int H = F == Format::kNvFp4 ? 2 : 1;  // scales per row and chunk
  uint32_t m1[kRows][2] = {}, m2[kRows][2] = {};
#pragma unroll
  for (int r = 0; r < kRows; ++r) multipliers<AT, F, TWO>(sc[r], m1[r], m2[r]);
#pragma unroll
  for (int w = 0; w < 4; ++w) {
#pragma unroll
    for (int t = 0; t < kTiles; ++t) {
      uint32_t lo[4], hi[4];  // rows g and g + 8
      const uint4& a = wq[2 * t];
      const uint4& b = wq[2 * t + 1];
      e2m1_bits8<AT>(w == 0 ? a.x : (w == 1 ? a.y : (w == 2 ? a.z : a.w)), lo);
      e2m1_bits8<AT>(w == 0 ? b.x : (w == 1 ? b.y : (w == 2 ? b.z : b.w)), hi);
      const int h = H == 2 ? w / 2 : 0;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        lo[j] = apply_scale<AT, TWO>(lo[j], m1[2 * t][h], m2[2 * t][h]);
        hi[j] = apply_scale<AT, TWO>(hi[j], m1[2 * t + 1][h], m2[2 * t + 1][h]);
      }
      const uint32_t s0[4] = {lo[0], hi[0], lo[1], hi[1]};  // k-step 2w
      const uint32_t s1[4] = {lo[2], hi[2], lo[3], hi[3]};  // k-step 2w + 1
#pragma unroll
      for (int nb = 0; nb < NB; ++nb) {
        mma16816<AT>(acc[t][nb], s0, bf[nb][w][0], bf[nb][w][1]);
        mma16816<AT>(acc[t][nb], s1, bf[nb][w][2], bf[nb][w][3]);
      }
    }
  }
}

template <typename AT, Format F, int NB, typename C>
__global__ void __launch_bounds__(C::kThreads) w4a16_decode_kernel(W4A16Params p) {
  using S = Slots<F, C>;
  constexpr int WS = C::kSplit, kStages = C::kStages, kThreads = C::kThreads;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  grid_dependency_wait();  // every input may come from the previous kernel
  const int kw = warp % WS;  // this warp's turn in the CTA's walk along K
  const int64_t nw = static_cast<int64_t>(blockIdx.x) * C::kFeatures + (warp / WS) * kW4A16TileN;
  // N % 32 == 0: a warp's features are all valid or all not. Warps past N still reach the block barriers.
  const bool active = nw < p.N;
  const int64_t chunks = p.K / kW4A16ChunkK;
  const int64_t c_begin = chunks * blockIdx.y / p.splits;
  const int n_chunks = static_cast<int>(chunks * (blockIdx.y + 1) / p.splits - c_begin);
  // This warp's t-th chunk is c_begin + WS * t + kw; it has T of them.
  const int T = active && kw < n_chunks ? (n_chunks - kw + WS - 1) / WS : 0;

  const uint8_t* wsrc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = nw + 16 * (r / 2) + g + 8 * (r % 2);
    wsrc[r] = p.codes + n * (p.K / 2) + (c_begin + kw) * kChunkCodeBytes + 16 * q;
  }
  // Scales: thread (g, q) copies those of its row r = q for the whole warp (the warp syncs before reading).
  const int64_t srow = nw + 16 * (q / 2) + g + 8 * (q % 2);
  const uint8_t* ssrc = p.scales + srow * (p.K / group_size(F)) + (c_begin + kw) * S::kScaleBytes;
  const int sslot = (warp * 32 + q * 8 + g) * S::kScaleBytes;
  auto issue = [&](int t) {  // chunk t into slot t % kStages
    unsigned char* st = smem + (t % kStages) * S::kStage;
    const int64_t c = static_cast<int64_t>(t) * WS;
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      cp_async16_prefetch256(st + S::kCodes + (r * kThreads + tid) * 16, wsrc[r] + c * kChunkCodeBytes);
    cp_async_small<S::kScaleBytes>(st + S::kScales + sslot, ssrc + c * S::kScaleBytes);
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) {
    if (t < T) issue(t);
    cp_async_commit();
  }

  // Activations: row g (and g + 8), this thread's 32 values of each chunk, one chunk ahead in registers
  // (every warp of the grid reads the same few KiB: L1/L2 hits). The next chunk's values are loaded into
  // the same registers as soon as this chunk's have been permuted into mma fragments.
  const AT* x = static_cast<const AT*>(p.x);
  const AT* xsrc[NB];
  bool xvalid[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    const int64_t m = g + 8 * nb;
    xvalid[nb] = m < p.M;
    xsrc[nb] = x + (xvalid[nb] ? m : 0) * p.K + (c_begin + kw) * kW4A16ChunkK + 32 * q;
  }
  uint4 xr[NB][4];
  auto load_x = [&](int t) {
    const int64_t off = static_cast<int64_t>(t) * WS * kW4A16ChunkK;
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int u = 0; u < 4; ++u)
        xr[nb][u] = xvalid[nb] ? ldg16(xsrc[nb] + off + 8 * u) : make_uint4(0, 0, 0, 0);
  };
  if (T > 0) load_x(0);

  float acc[kTiles][NB][4] = {};
  for (int t = 0; t < T; ++t) {
    cp_async_wait<kStages - 2>();  // this thread's copies of chunk t have landed
    __syncwarp();                  // ... and every lane's (scales are copied for the warp)
    // The slot refilled here held chunk t - 1, which the warp finished reading before the __syncwarp.
    if (t + kStages - 1 < T) issue(t + kStages - 1);
    cp_async_commit();

    uint32_t bf[NB][4][4];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const uint4 v = xr[nb][w];  // x[8w + 0..7] as pairs (0,1) (2,3) (4,5) (6,7)
        bf[nb][w][0] = prmt(v.x, v.z, 0x5410u);  // (0, 4)
        bf[nb][w][1] = prmt(v.x, v.z, 0x7632u);  // (1, 5)
        bf[nb][w][2] = prmt(v.y, v.w, 0x5410u);  // (2, 6)
        bf[nb][w][3] = prmt(v.y, v.w, 0x7632u);  // (3, 7)
      }
    if (t + 1 < T) load_x(t + 1);

    const unsigned char* st = smem + (t % kStages) * S::kStage;
    uint4 wq[kRows];
    uint8_t sc[kRows][2];
    bool big = false;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      wq[r] = *reinterpret_cast<const uint4*>(st + S::kCodes + (r * kThreads + tid) * 16);
      const uint8_t* sp = st + S::kScales + (warp * 32 + r * 8 + g) * S::kScaleBytes;
      if constexpr (F == Format::kMxFp4) {
        sc[r][0] = sc[r][1] = sp[q];  // group q of the chunk: this thread's 32 codes
        big |= sc[r][0] > 128;
      } else {
        sc[r][0] = sp[2 * q];      // words 0-1
        sc[r][1] = sp[2 * q + 1];  // words 2-3
      }
    }
    if (kAlwaysTwo<AT, F> || (F == Format::kMxFp4 && __any_sync(0xffffffffu, big))) {
      chunk_mma<AT, F, NB, true>(wq, sc, bf, acc);
    } else {
      chunk_mma<AT, F, NB, false>(wq, sc, bf, acc);
    }
  }
  cp_async_wait<0>();  // no copy may still be writing shared memory when the warp exits or reuses it

  if constexpr (WS > 1) {  // warps 1..WS-1 of a feature group hand their sums to warp 0 (added in turn order)
    constexpr int kAcc = kTiles * NB * 4;
    static_assert(C::kWarps * kAcc * 32 * 4 <= S::kBytes, "the partial sums fit the stage buffers");
    float* red = reinterpret_cast<float*>(smem);
    __syncthreads();  // every warp is done with the stage buffers
    if (kw > 0) {
      float* dst = red + (warp * kAcc) * 32 + lane;
#pragma unroll
      for (int t = 0; t < kTiles; ++t)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) dst[((t * NB + nb) * 4 + c) * 32] = acc[t][nb][c];
    }
    __syncthreads();
    if (kw > 0) return;
#pragma unroll
    for (int k = 1; k < WS; ++k) {
      const float* src = red + ((warp + k) * kAcc) * 32 + lane;
#pragma unroll
      for (int t = 0; t < kTiles; ++t)
#pragma unroll
        for (int nb = 0; nb < NB; ++nb)
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[t][nb][c] += src[((t * NB + nb) * 4 + c) * 32];
    }
  }
  if (!active) return;

  // acc[t][nb]: c0, c1 = feature g of tile t, x rows 8nb + 2q + {0, 1}; c2, c3 = feature g + 8.
  const float unscale = kNvUnscale<AT, F>;
  const float scale = F == Format::kNvFp4 ? unscale / __ldg(p.global_scale) : 1.0f;
#pragma unroll
  for (int t = 0; t < kTiles; ++t)
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t m = 8 * nb + 2 * q + (c & 1);
        const int64_t n = nw + 16 * t + g + 8 * (c >> 1);
        if (m >= p.M) continue;
        if (p.splits > 1) {
          p.workspace[(static_cast<int64_t>(blockIdx.y) * p.M + m) * p.N + n] = acc[t][nb][c] * unscale;
        } else {
          float v = acc[t][nb][c] * scale;
          if (p.bias) v += to_float(static_cast<const AT*>(p.bias)[n]);
          store_float(static_cast<AT*>(p.out) + m * p.N + n, v);
        }
      }
}

template <typename AT, Format F, int NB, typename C>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  auto kernel = w4a16_decode_kernel<AT, F, NB, C>;
  constexpr int bytes = Slots<F, C>::kBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.N + C::kFeatures - 1) / C::kFeatures), static_cast<unsigned>(p.splits));
  err = launch_dependent(kernel, grid, dim3(C::kThreads), bytes, stream, p);
  return err != cudaSuccess ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT, Format F, int NB, int I = 0>
cudaError_t launch_config(const W4A16Params& p, cudaStream_t stream) {
  if constexpr (I + 1 < kW4A16DecodeConfigs) {
    if (p.decode_config != I) return launch_config<AT, F, NB, I + 1>(p, stream);
  }
  return launch<AT, F, NB, Cfg<I>>(p, stream);
}

template <typename AT>
cudaError_t launch_dtype(const W4A16Params& p, cudaStream_t stream) {
  const bool two = p.M > 8;
  if (p.format == Format::kMxFp4)
    return two ? launch_config<AT, Format::kMxFp4, 2>(p, stream) : launch_config<AT, Format::kMxFp4, 1>(p, stream);
  return two ? launch_config<AT, Format::kNvFp4, 2>(p, stream) : launch_config<AT, Format::kNvFp4, 1>(p, stream);
}

}  // namespace

// Configuration heuristic, from the H100 sweep of benchmarks/NOTES.md (M = 1 and 16, N = 4096 ... 28672). The
// best grids are a single launch whose CTAs run the whole K: with up to about two CTAs per SM of feature
// groups (N / 32 <= 2 * SMs), 4-warp CTAs with all four warps on one group; with more groups, one CTA per
// group of 8 warps for M <= 8 (more warps in flight per SM and fewer tail CTAs), but for M > 8, whose
// doubled registers allow fewer warps per SM, 4-warp CTAs of 4 groups, each warp running all of K.
int w4a16_decode_config(int64_t M, int64_t N) {
  if (N / kW4A16TileN <= 2LL * num_sms()) return 1;
  return M <= 8 ? 2 : 0;
}

cudaError_t w4a16_decode(const W4A16Params& p, cudaStream_t stream) {
  return p.dtype == DType::kBF16 ? launch_dtype<__nv_bfloat16>(p, stream) : launch_dtype<__half>(p, stream);
}

}  // namespace fpquant::cuda
