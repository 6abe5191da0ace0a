// Weight-only FP4 GEMM on mma.sync tensor cores (sm_80+; first version, tuned for decode-sized M).
//
// CTA = 4 warps, 32 output features (4 n-tiles of 8) x 16 rows of x (one m-tile; grid.z walks M). The K range
// of the CTA (1/splits of K) is cut into chunks of 128; warp w takes chunks w, w+4, ... and the four warps'
// partial sums are added in shared memory at the end. Split-K partials (splits > 1) go to a float32
// workspace and a second kernel adds them in a fixed order (deterministic), then applies the epilogue.
//
// Operand layout: the mma k index may be permuted as long as A and B agree. Thread (g = lane/4, q = lane%4)
// loads, for weight row n = 8j + g, the 16 bytes at k in [32q, 32q+32) of the chunk (32 codes = 16 pairs):
// pair 2s is the b0 register and pair 2s+1 the b1 register of k-step s (s = 0..7). The activation fragments
// use the same k: a0 = x[g][32q + 4s + {0,1}], a2 = x[g][32q + 4s + {2,3}] (a1, a3: row g+8). One MXFP4
// scale covers exactly those 32 codes; NVFP4 needs two (k-steps 0-3 and 4-7).
//
// Dequantization: E2M1 -> bf16/fp16 by byte-permute table lookups (exact), times the group scale in the
// tensor-core type (exact: power of two for MXFP4; code x E4M3 has <= 5 significant bits for NVFP4). The
// NVFP4 global scale divides the float32 result in the epilogue.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cuda/device_utils.cuh"
#include "cuda/w4a16.h"
#include "core/fp_formats.h"

namespace fpquant::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kNT = kW4A16TileN / 8;  // n-tiles per CTA

template <typename AT>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// prmt in its default mode: a selector nibble with bit 3 set replicates the sign bit of the chosen byte.
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// Byte tables of the E2M1 magnitudes {0, .5, 1, 1.5, 2, 3, 4, 6} in the 16-bit type: low bytes (entries 0-3,
// 4-7) and high bytes.
template <typename AT> struct E2M1Table;
template <> struct E2M1Table<__nv_bfloat16> {  // 0000 3F00 3F80 3FC0 4000 4040 4080 40C0
  static constexpr uint32_t lo0 = 0xC0800000u, lo1 = 0xC0804000u, hi0 = 0x3F3F3F00u, hi1 = 0x40404040u;
};
template <> struct E2M1Table<__half> {  // 0000 3800 3C00 3E00 4000 4200 4400 4600
  static constexpr uint32_t lo0 = 0u, lo1 = 0u, hi0 = 0x3E3C3800u, hi1 = 0x46444240u;
};

// 8 E2M1 codes (one 32-bit word, code i in nibble i) -> 4 words of two 16-bit values (code 2i low half).
template <typename AT>
__device__ __forceinline__ void decode8(uint32_t w, uint32_t* o) {
  using T = E2M1Table<AT>;
  const uint32_t sa = w & 0x7777u, sb = (w >> 16) & 0x7777u;
  const uint32_t la = prmt(T::lo0, T::lo1, sa), ha = prmt(T::hi0, T::hi1, sa);
  const uint32_t lb = prmt(T::lo0, T::lo1, sb), hb = prmt(T::hi0, T::hi1, sb);
  // Sign bytes: msb of byte k of (w << 4) is the sign of code 2k, msb of byte k of w the sign of code 2k+1.
  const uint32_t v = w << 4;
  o[0] = prmt(la, ha, 0x5140u) | (prmt(v, w, 0xC080u) & 0x80008000u);
  o[1] = prmt(la, ha, 0x7362u) | (prmt(v, w, 0xD090u) & 0x80008000u);
  o[2] = prmt(lb, hb, 0x5140u) | (prmt(v, w, 0xE0A0u) & 0x80008000u);
  o[3] = prmt(lb, hb, 0x7362u) | (prmt(v, w, 0xF0B0u) & 0x80008000u);
}

template <typename AT>
__device__ __forceinline__ uint32_t splat(float s) {  // (s, s) as two 16-bit values
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    __nv_bfloat162 p = __float2bfloat162_rn(s);
    return *reinterpret_cast<uint32_t*>(&p);
  } else {
    __half2 p = __float2half2_rn(s);
    return *reinterpret_cast<uint32_t*>(&p);
  }
}

template <typename AT>
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
  if constexpr (std::is_same_v<AT, __nv_bfloat16>) {
    __nv_bfloat162 r = __hmul2(*reinterpret_cast<__nv_bfloat162*>(&a), *reinterpret_cast<__nv_bfloat162*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  } else {
    __half2 r = __hmul2(*reinterpret_cast<__half2*>(&a), *reinterpret_cast<__half2*>(&b));
    return *reinterpret_cast<uint32_t*>(&r);
  }
}

template <Format F>
__device__ __forceinline__ float group_scale(uint8_t code) {
  return F == Format::kMxFp4 ? core::e8m0_decode(code) : core::e4m3_decode(code);
}

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

template <typename AT, Format F>
__global__ void __launch_bounds__(kThreads) w4a16_kernel(W4A16Params p) {
  constexpr int G = F == Format::kMxFp4 ? core::kMxGroup : core::kNvGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kW4A16TileN;
  const int64_t m0 = static_cast<int64_t>(blockIdx.z) * 16;
  const int64_t chunks = p.K / kW4A16ChunkK;
  const int64_t c_begin = chunks * blockIdx.y / p.splits, c_end = chunks * (blockIdx.y + 1) / p.splits;
  const AT* x = static_cast<const AT*>(p.x);
  const bool row0 = m0 + g < p.M, row1 = m0 + g + 8 < p.M;
  const AT* x0 = x + (m0 + g) * p.K + 32 * q;
  const AT* x1 = x + (m0 + g + 8) * p.K + 32 * q;
  const uint8_t* wrow[kNT];
  const uint8_t* srow[kNT];
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int64_t n = n0 + 8 * j + g;
    wrow[j] = p.codes + n * (p.K / 2) + 16 * q;
    srow[j] = p.scales + n * (p.K / G) + (32 / G) * q;
  }

  float acc[kNT][4];
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[j][c] = 0.0f;

  for (int64_t c = c_begin + warp; c < c_end; c += kWarps) {
    // Issue every load of the chunk before the first use.
    uint4 a0[4], a1[4], wq[kNT];
    uint8_t sc[kNT][32 / G];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      a0[i] = row0 ? ldg16(x0 + c * kW4A16ChunkK + 8 * i) : make_uint4(0, 0, 0, 0);
      a1[i] = row1 ? ldg16(x1 + c * kW4A16ChunkK + 8 * i) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      wq[j] = ldg16(wrow[j] + c * (kW4A16ChunkK / 2));
#pragma unroll
      for (int t = 0; t < 32 / G; ++t) sc[j][t] = __ldg(srow[j] + c * (kW4A16ChunkK / G) + t);
    }
    const uint32_t* a0w = reinterpret_cast<const uint32_t*>(a0);
    const uint32_t* a1w = reinterpret_cast<const uint32_t*>(a1);
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      uint32_t b[16];
      decode8<AT>(wq[j].x, b);
      decode8<AT>(wq[j].y, b + 4);
      decode8<AT>(wq[j].z, b + 8);
      decode8<AT>(wq[j].w, b + 12);
#pragma unroll
      for (int t = 0; t < 32 / G; ++t) {
        const uint32_t s2 = splat<AT>(group_scale<F>(sc[j][t]));
#pragma unroll
        for (int i = 0; i < 16 / (32 / G); ++i) b[t * (16 / (32 / G)) + i] = hmul2<AT>(b[t * (16 / (32 / G)) + i], s2);
      }
#pragma unroll
      for (int s = 0; s < 8; ++s) {
        const uint32_t a[4] = {a0w[2 * s], a1w[2 * s], a0w[2 * s + 1], a1w[2 * s + 1]};
        mma16816<AT>(acc[j], a, b[2 * s], b[2 * s + 1]);
      }
    }
  }

  // Add the four warps' partial sums: red[warp][row 0..15][col 0..31].
  __shared__ float red[kWarps][16][kW4A16TileN + 1];
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    red[warp][g][8 * j + 2 * q] = acc[j][0];
    red[warp][g][8 * j + 2 * q + 1] = acc[j][1];
    red[warp][g + 8][8 * j + 2 * q] = acc[j][2];
    red[warp][g + 8][8 * j + 2 * q + 1] = acc[j][3];
  }
  __syncthreads();
  const float inv_g = F == Format::kNvFp4 ? 1.0f / __ldg(p.global_scale) : 1.0f;
  for (int idx = threadIdx.x; idx < 16 * kW4A16TileN; idx += kThreads) {
    const int r = idx / kW4A16TileN, col = idx % kW4A16TileN;
    const int64_t m = m0 + r, n = n0 + col;
    if (m >= p.M) continue;
    const float v = ((red[0][r][col] + red[1][r][col]) + red[2][r][col]) + red[3][r][col];
    if (p.splits > 1) {
      p.workspace[(static_cast<int64_t>(blockIdx.y) * p.M + m) * p.N + n] = v;
    } else {
      float o = F == Format::kNvFp4 ? v * inv_g : v;
      if (p.bias) o += to_float(static_cast<const AT*>(p.bias)[n]);
      store_float(static_cast<AT*>(p.out) + m * p.N + n, o);
    }
  }
}

template <typename AT, Format F>
__global__ void __launch_bounds__(256) splitk_reduce_kernel(W4A16Params p) {
  const float inv_g = F == Format::kNvFp4 ? 1.0f / __ldg(p.global_scale) : 1.0f;
  const int64_t total = p.M * p.N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = 0.0f;
    for (int s = 0; s < p.splits; ++s) v += p.workspace[s * total + i];
    if (F == Format::kNvFp4) v *= inv_g;
    if (p.bias) v += to_float(static_cast<const AT*>(p.bias)[i % p.N]);
    store_float(static_cast<AT*>(p.out) + i, v);
  }
}

template <typename AT, Format F>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(p.N / kW4A16TileN), static_cast<unsigned>(p.splits),
                  static_cast<unsigned>((p.M + 15) / 16));
  w4a16_kernel<AT, F><<<grid, kThreads, 0, stream>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess || p.splits == 1) return err;
  splitk_reduce_kernel<AT, F><<<grid_for(p.M * p.N, 256), 256, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

// Split-K heuristic: one CTA per 32 features per 16 rows gives (N / 32) * ceil(M / 16) CTAs. Decode shapes
// (small M, N <= 8192) leave SMs idle or give each CTA one long serial K loop, so K is split until there are
// about four CTAs per SM, keeping at least 4 chunks of 128 per warp (each split does >= 2048 of K).
int w4a16_splits(int64_t M, int64_t N, int64_t K) {
  const int64_t ctas = (N / kW4A16TileN) * ((M + 15) / 16);
  const int64_t target = 4LL * num_sms();
  const int64_t max_splits = K / (kW4A16ChunkK * kWarps * 4);
  int s = 1;
  while (ctas * s * 2 <= target && s * 2 <= max_splits) s *= 2;
  return s;
}

cudaError_t w4a16_gemm(const W4A16Params& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBF16;
  if (p.format == Format::kMxFp4)
    return bf16 ? launch<__nv_bfloat16, Format::kMxFp4>(p, stream) : launch<__half, Format::kMxFp4>(p, stream);
  return bf16 ? launch<__nv_bfloat16, Format::kNvFp4>(p, stream) : launch<__half, Format::kNvFp4>(p, stream);
}

}  // namespace fpquant::cuda
