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
// - Each thread copies its own weight codes and scales into private shared-memory slots with cp.async,
//   kStages chunks ahead, so no barrier is needed anywhere and no registers hold data in flight.
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

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kTiles = kW4A16TileN / 16;  // 16-feature tiles per warp
constexpr int kRows = 2 * kTiles;         // weight rows per thread: tile t, rows g (2t) and g + 8 (2t + 1)
constexpr int kStages = 4;
constexpr int kChunkCodeBytes = kW4A16ChunkK / 2;

template <Format F>
struct Slots {  // one stage: [row][thread] slots, so that a warp's 16-byte reads are conflict-free
  static constexpr int kScaleBytes = kW4A16ChunkK / group_size(F);  // a row's scales for one chunk (4 or 8)
  static constexpr int kCodes = 0;
  static constexpr int kScales = kRows * kThreads * 16;
  static constexpr int kStage = kScales + kRows * kThreads * kScaleBytes;
  static constexpr int kBytes = kStages * kStage;
};

template <typename AT>
constexpr bool kBf16 = std::is_same_v<AT, __nv_bfloat16>;

// 8 codes (nibble i of w) -> o[j] = (code j, code j+4) as 16-bit patterns worth code * 2^-126 (bf16) or
// code * 2^-14 (fp16). Multiplying the nibble by (2^a + 2^b) places one copy with its magnitude in the
// right bits and another with its sign bit at bit 15 (halves never carry into each other: 0xF * 0x1040 <
// 2^16); a mask keeps those bits. fp16 needs the sign 3 bits further than the magnitude's top: it is moved
// from bit 12 to 15 by adding 7 times itself.
template <typename AT>
__device__ __forceinline__ void e2m1_bits8(uint32_t w, uint32_t (&o)[4]) {
  const uint32_t v = w >> 8;  // nibbles 2, 3 (low half) and 6, 7 (high half) at the bottom
  if constexpr (kBf16<AT>) {
    o[0] = ((w & 0x000F000Fu) * 0x1040u) & 0x81C081C0u;
    o[1] = ((w & 0x00F000F0u) * 0x0104u) & 0x81C081C0u;
    o[2] = ((v & 0x000F000Fu) * 0x1040u) & 0x81C081C0u;
    o[3] = ((v & 0x00F000F0u) * 0x0104u) & 0x81C081C0u;
  } else {
    const uint32_t t[4] = {(w & 0x000F000Fu) << 9, (w & 0x00F000F0u) << 5, (v & 0x000F000Fu) << 9,
                           (v & 0x00F000F0u) << 5};
#pragma unroll
    for (int j = 0; j < 4; ++j) o[j] = t[j] + (t[j] & 0x10001000u) * 7u;
  }
}

// The factor between a code and its e2m1_bits8 pattern.
template <typename AT>
constexpr float kCodeUnit = kBf16<AT> ? 0x1p126f : 0x1p14f;

// Group-scale multipliers (m1, then m2 when TWO) that turn e2m1_bits8 patterns into code * scale with a
// single rounding (none where the product is representable). One multiply where kCodeUnit * scale fits the
// 16-bit type: MXFP4 with E8M0 <= 128 (bf16: 2^(E-1), an integer pattern; fp16: 2^(E-113), exact down to
// fp16's subnormals, and 0 only where every weight of the group rounds to 0 anyway), and NVFP4 on bf16 as
// scale * 2^118, i.e. code * scale * 2^-8, which the epilogue undoes (kNvUnscale). Larger MXFP4 scales (and
// NaN) take two: kCodeUnit, then the scale; a warp takes the two-multiply path for a whole chunk when any of
// its lanes needs it, with (one-multiply value, 1) for the others. NVFP4 on fp16 always takes two (code *
// scale * 2^-8 could fall below fp16's normal range). MXFP4: one code per row (sc[0]); NVFP4: two, for
// words 0-1 and 2-3.
__device__ __forceinline__ __half2 e4m3x2_to_half2(uint16_t pair) {
  uint32_t r;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;\n" : "=r"(r) : "h"(pair));
  return *reinterpret_cast<__half2*>(&r);
}

template <typename AT, Format F>
constexpr bool kAlwaysTwo = F == Format::kNvFp4 && !kBf16<AT>;

template <typename AT, Format F, bool TWO>
__device__ __forceinline__ void multipliers(const uint8_t (&sc)[2], uint32_t (&m1)[2], uint32_t (&m2)[2]) {
  if constexpr (F == Format::kMxFp4) {
    const uint32_t e = sc[0];
    const uint32_t one = kBf16<AT> ? (e + 126u) * 0x00800080u : splat<AT>(core::e8m0_decode(sc[0]) * kCodeUnit<AT>);
    if constexpr (TWO) {
      const bool small = e <= 128u;
      m1[0] = small ? one : splat<AT>(kCodeUnit<AT>);
      m2[0] = small ? splat<AT>(1.0f) : splat<AT>(core::e8m0_decode(sc[0]));
    } else {
      m1[0] = one;
    }
  } else {
    const __half2 h = e4m3x2_to_half2(static_cast<uint16_t>(sc[0] | (sc[1] << 8)));
    if constexpr (kBf16<AT>) {
      const float2 f = __half22float2(h);
      m1[0] = splat<AT>(f.x * 0x1p118f);
      m1[1] = splat<AT>(f.y * 0x1p118f);
    } else {
      const uint32_t hv = *reinterpret_cast<const uint32_t*>(&h);
      m1[0] = m1[1] = splat<AT>(kCodeUnit<AT>);
      m2[0] = prmt(hv, 0, 0x1010u);
      m2[1] = prmt(hv, 0, 0x3232u);
    }
  }
}

template <typename AT, bool TWO>
__device__ __forceinline__ uint32_t apply_scale(uint32_t bits, uint32_t m1, uint32_t m2) {
  const uint32_t r = hmul2<AT>(bits, m1);
  return TWO ? hmul2<AT>(r, m2) : r;
}

template <typename AT, Format F>
constexpr float kNvUnscale = F == Format::kNvFp4 && kBf16<AT> ? 256.0f : 1.0f;

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

template <typename AT, Format F, int NB>
__global__ void __launch_bounds__(kThreads) w4a16_decode_kernel(W4A16Params p) {
  using S = Slots<F>;
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, q = lane % 4;
  const int64_t nw = (static_cast<int64_t>(blockIdx.x) * kWarps + warp) * kW4A16TileN;
  if (nw >= p.N) return;  // N % 32 == 0: a warp's features are all valid or all not; no block barriers below
  const int64_t chunks = p.K / kW4A16ChunkK;
  const int64_t c_begin = chunks * blockIdx.y / p.splits;
  const int n_chunks = static_cast<int>(chunks * (blockIdx.y + 1) / p.splits - c_begin);

  const uint8_t* wsrc[kRows];
  const uint8_t* ssrc[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int64_t n = nw + 16 * (r / 2) + g + 8 * (r % 2);
    wsrc[r] = p.codes + n * (p.K / 2) + c_begin * kChunkCodeBytes + 16 * q;
    ssrc[r] = p.scales + n * (p.K / group_size(F)) + c_begin * S::kScaleBytes;
  }
  auto issue = [&](int i) {  // chunk c_begin + i into slot i % kStages (this thread's own slots)
    unsigned char* st = smem + (i % kStages) * S::kStage;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      cp_async16(st + S::kCodes + (r * kThreads + tid) * 16, wsrc[r] + i * kChunkCodeBytes, true);
      cp_async_small<S::kScaleBytes>(st + S::kScales + (r * kThreads + tid) * S::kScaleBytes,
                                     ssrc[r] + i * S::kScaleBytes);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < n_chunks) issue(s);
    cp_async_commit();
  }

  // Activations: row g (and g + 8), this thread's 32 values of each chunk, one chunk ahead in registers
  // (every warp of the grid reads the same few KiB: L1/L2 hits).
  const AT* x = static_cast<const AT*>(p.x);
  const AT* xsrc[NB];
  bool xvalid[NB];
#pragma unroll
  for (int nb = 0; nb < NB; ++nb) {
    const int64_t m = g + 8 * nb;
    xvalid[nb] = m < p.M;
    xsrc[nb] = x + (xvalid[nb] ? m : 0) * p.K + c_begin * kW4A16ChunkK + 32 * q;
  }
  uint4 xa[NB][4];
  auto load_x = [&](int i, uint4 (&d)[NB][4]) {
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int u = 0; u < 4; ++u)
        d[nb][u] = xvalid[nb] ? ldg16(xsrc[nb] + i * kW4A16ChunkK + 8 * u) : make_uint4(0, 0, 0, 0);
  };
  if (n_chunks > 0) load_x(0, xa);

  float acc[kTiles][NB][4] = {};

  // One chunk: its activations are in xc, the next chunk's are loaded into xn. The loop runs two chunks
  // per trip with the two buffers swapped, so that no register copies are needed between chunks.
  auto step = [&](int i, const uint4 (&xc)[NB][4], uint4 (&xn)[NB][4]) {
    cp_async_wait<kStages - 2>();  // this thread's copies of chunk i have landed
    // The slot refilled here held chunk i - 1, which this thread read (into registers) last iteration.
    if (i + kStages - 1 < n_chunks) issue(i + kStages - 1);
    cp_async_commit();
    if (i + 1 < n_chunks) load_x(i + 1, xn);

    uint32_t bf[NB][4][4];
#pragma unroll
    for (int nb = 0; nb < NB; ++nb)
#pragma unroll
      for (int w = 0; w < 4; ++w) {
        const uint4 v = xc[nb][w];  // x[8w + 0..7] as pairs (0,1) (2,3) (4,5) (6,7)
        bf[nb][w][0] = prmt(v.x, v.z, 0x5410u);  // (0, 4)
        bf[nb][w][1] = prmt(v.x, v.z, 0x7632u);  // (1, 5)
        bf[nb][w][2] = prmt(v.y, v.w, 0x5410u);  // (2, 6)
        bf[nb][w][3] = prmt(v.y, v.w, 0x7632u);  // (3, 7)
      }

    const unsigned char* st = smem + (i % kStages) * S::kStage;
    uint4 wq[kRows];
    uint8_t sc[kRows][2];
    bool big = false;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      wq[r] = *reinterpret_cast<const uint4*>(st + S::kCodes + (r * kThreads + tid) * 16);
      const uint8_t* sp = st + S::kScales + (r * kThreads + tid) * S::kScaleBytes;
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
  };
  uint4 xb[NB][4];
  for (int i = 0; i < n_chunks; i += 2) {
    step(i, xa, xb);
    if (i + 1 < n_chunks) step(i + 1, xb, xa);
  }
  cp_async_wait<0>();  // no copy may still be writing shared memory when the warp exits

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

template <typename AT, Format F, int NB>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  auto kernel = w4a16_decode_kernel<AT, F, NB>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, Slots<F>::kBytes);
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>((p.N + kWarps * kW4A16TileN - 1) / (kWarps * kW4A16TileN)),
                  static_cast<unsigned>(p.splits));
  kernel<<<grid, kThreads, Slots<F>::kBytes, stream>>>(p);
  err = cudaGetLastError();
  return err != cudaSuccess ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT>
cudaError_t launch_dtype(const W4A16Params& p, cudaStream_t stream) {
  const bool two = p.M > 8;
  if (p.format == Format::kMxFp4) return two ? launch<AT, Format::kMxFp4, 2>(p, stream) : launch<AT, Format::kMxFp4, 1>(p, stream);
  return two ? launch<AT, Format::kNvFp4, 2>(p, stream) : launch<AT, Format::kNvFp4, 1>(p, stream);
}

}  // namespace

cudaError_t w4a16_decode(const W4A16Params& p, cudaStream_t stream) {
  return p.dtype == DType::kBF16 ? launch_dtype<__nv_bfloat16>(p, stream) : launch_dtype<__half>(p, stream);
}

}  // namespace fpquant::cuda
