// Weight-only FP4 GEMM on mma.sync tensor cores (sm_80+) for 17-64 rows of x (w4a16_decode.cu: up to 16).
//
// CTA = WARPS warps side by side along N, each owning 32 output features (4 n-tiles of 8), and MT m-tiles
// of 16 rows of x. Every warp walks the CTA's K range (1/splits of K) in chunks of 128: it loads and
// decodes its weight codes once per chunk and reuses the decoded fragments for all MT m-tiles. The warps of
// a CTA read the same activation rows, so all but the first read hit L1. grid.x walks M fastest, so CTAs
// that share a weight tile run together and the weight comes from HBM about once. Split-K partials
// (splits > 1) go to a float32 workspace that a second kernel adds in a fixed order (deterministic).
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

#include "cuda/mma.cuh"
#include "cuda/w4a16_common.cuh"

namespace fpquant::cuda {
namespace {
using namespace w4a16;

constexpr int kNT = kW4A16TileN / 8;  // n-tiles per CTA

template <typename AT, Format F, int MT, int WARPS>
__global__ void __launch_bounds__(32 * WARPS) w4a16_kernel(W4A16Params p) {
  constexpr int G = group_size(F);
  constexpr int SPC = 32 / G;  // scales per lane per chunk
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, q = lane % 4;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * 16 * MT;
  const int64_t nw = (static_cast<int64_t>(blockIdx.y) * WARPS + warp) * 32;  // this warp's first feature
  if (nw >= p.N) return;  // no block-level synchronization below
  const int64_t chunks = p.K / kW4A16ChunkK;
  const int64_t c_begin = chunks * blockIdx.z / p.splits, c_end = chunks * (blockIdx.z + 1) / p.splits;
  const AT* x = static_cast<const AT*>(p.x);
  const uint8_t* wrow[kNT];
  const uint8_t* srow[kNT];
#pragma unroll
  for (int j = 0; j < kNT; ++j) {
    const int64_t n = nw + 8 * j + g;
    wrow[j] = p.codes + n * (p.K / 2) + 16 * q;
    srow[j] = p.scales + n * (p.K / G) + SPC * q;
  }

  float acc[MT][kNT][4] = {};

  // Two-stage register pipeline: the next chunk's weight codes and scales are in flight while this one
  // is decoded and multiplied.
  uint4 wq[kNT];
  uint8_t sc[kNT][SPC];
  auto load_w = [&](int64_t c, uint4 (&w)[kNT], uint8_t (&s)[kNT][SPC]) {
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      w[j] = ldg16(wrow[j] + c * (kW4A16ChunkK / 2));
#pragma unroll
      for (int t = 0; t < SPC; ++t) s[j][t] = __ldg(srow[j] + c * (kW4A16ChunkK / G) + t);
    }
  };
  if (c_begin < c_end) load_w(c_begin, wq, sc);
  for (int64_t c = c_begin; c < c_end; ++c) {
    uint4 wn[kNT];
    uint8_t sn[kNT][SPC];
    if (c + 1 < c_end) load_w(c + 1, wn, sn);

    // One 32-bit word of codes per n-tile covers k-steps 2w and 2w+1; decode it, then feed every m-tile.
    uint32_t s2[kNT][SPC];
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int t = 0; t < SPC; ++t) s2[j][t] = splat<AT>(group_scale<F>(sc[j][t]));
#pragma unroll 1  // bounds register pressure: the compiler would otherwise hoist every m-tile's loads
    for (int w = 0; w < 4; ++w) {
      uint32_t b[kNT][4];
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const uint32_t word = w == 0 ? wq[j].x : (w == 1 ? wq[j].y : (w == 2 ? wq[j].z : wq[j].w));
        decode8<AT>(word, b[j]);
        const uint32_t scale = (SPC == 1 || w < 2) ? s2[j][0] : s2[j][SPC - 1];  // NVFP4: words 2-3 scale 1
#pragma unroll
        for (int i = 0; i < 4; ++i) b[j][i] = hmul2<AT>(b[j][i], scale);
      }
#pragma unroll
      for (int mi = 0; mi < MT; ++mi) {
        const int64_t r0 = m0 + 16 * mi + g, r1 = r0 + 8;
        const int64_t col = c * kW4A16ChunkK + 32 * q + 8 * w;
        const uint4 a0 = r0 < p.M ? ldg16(x + r0 * p.K + col) : make_uint4(0, 0, 0, 0);
        const uint4 a1 = r1 < p.M ? ldg16(x + r1 * p.K + col) : make_uint4(0, 0, 0, 0);
        const uint32_t fa[4] = {a0.x, a1.x, a0.y, a1.y};  // k-step 2w
        const uint32_t fb[4] = {a0.z, a1.z, a0.w, a1.w};  // k-step 2w + 1
#pragma unroll
        for (int j = 0; j < kNT; ++j) {
          mma16816<AT>(acc[mi][j], fa, b[j][0], b[j][1]);
          mma16816<AT>(acc[mi][j], fb, b[j][2], b[j][3]);
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      wq[j] = wn[j];
#pragma unroll
      for (int t = 0; t < SPC; ++t) sc[j][t] = sn[j][t];
    }
  }

  // Epilogue: lane (g, q) holds rows g and g+8 of each m-tile, features 8j + 2q and 8j + 2q + 1.
  const float inv_g = F == Format::kNvFp4 ? 1.0f / __ldg(p.global_scale) : 1.0f;
#pragma unroll
  for (int mi = 0; mi < MT; ++mi) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t m = m0 + 16 * mi + g + 8 * h;
      if (m >= p.M) continue;
#pragma unroll
      for (int j = 0; j < kNT; ++j) {
        const int64_t n = nw + 8 * j + 2 * q;
        store_pair<AT, F>(p, m, n, acc[mi][j][2 * h], acc[mi][j][2 * h + 1], inv_g);
      }
    }
  }
}

template <typename AT, Format F, int MT, int WARPS>
cudaError_t launch_tiles(const W4A16Params& p, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((p.M + 16 * MT - 1) / (16 * MT)),
                  static_cast<unsigned>((p.N + 32 * WARPS - 1) / (32 * WARPS)), static_cast<unsigned>(p.splits));
  w4a16_kernel<AT, F, MT, WARPS><<<grid, 32 * WARPS, 0, stream>>>(p);
  const cudaError_t err = cudaGetLastError();
  return err != cudaSuccess ? err : reduce_splits<AT, F>(p, stream);
}

template <typename AT, Format F>
cudaError_t launch(const W4A16Params& p, cudaStream_t stream) {
  switch (w4a16_m_tiles(p.M)) {
    case 1: return w4a16_decode(p, stream);
    case 2: return launch_tiles<AT, F, 2, 4>(p, stream);
    default: return launch_tiles<AT, F, 4, 8>(p, stream);
  }
}

}  // namespace

// Tile heuristic (documented in docs/DESIGN.md): up to 16 rows the decode kernel (w4a16_decode.cu); above,
// MT m-tiles of 16 rows per CTA, 2 up to 32 rows and 4 up to 64 (larger M takes the wgmma kernel or the
// slab path in linear_cuda.cpp), with 4 warps (128 features) per CTA for MT = 2 and 8 warps (256 features)
// for MT = 4, so that wider CTAs share activation reads as M grows.
int w4a16_m_tiles(int64_t M) { return M <= 16 ? 1 : (M <= 32 ? 2 : 4); }

// Split-K (partials reduced by a second kernel, in split order). M <= 16 (the decode kernel): the CTAs
// already split K between the warps of a feature group, and the H100 measurements (benchmarks/NOTES.md)
// favour a single launch even when the grid is a bit short of the SMs (4096 x 4096: 128 CTAs, 6.4 us
// unsplit vs 7.9 us with 2 splits), so K is split only while the grid would cover fewer than half the SMs.
// 17 <= M <= 64 (w4a16_kernel): K is split until there are about sixteen CTAs per SM.
int w4a16_splits(int64_t M, int64_t N, int64_t K, int decode_config) {
  const int mt = w4a16_m_tiles(M);
  if (mt == 1) {
    const W4A16DecodeShape shape = kW4A16DecodeShapes[decode_config];
    const int64_t ctas = (N + shape.features() - 1) / shape.features();
    return w4a16::split_k(ctas, num_sms(), K / (kW4A16ChunkK * 2 * shape.group_warps));
  }
  const int64_t features = mt == 2 ? 128 : 256;
  const int64_t ctas = ((N + features - 1) / features) * ((M + 16 * mt - 1) / (16 * mt));
  return w4a16::split_k(ctas, 16LL * num_sms(), K / (kW4A16ChunkK * 4));
}

cudaError_t w4a16_gemm(const W4A16Params& p, cudaStream_t stream) {
  const bool bf16 = p.dtype == DType::kBF16;
  if (p.format == Format::kMxFp4)
    return bf16 ? launch<__nv_bfloat16, Format::kMxFp4>(p, stream) : launch<__half, Format::kMxFp4>(p, stream);
  return bf16 ? launch<__nv_bfloat16, Format::kNvFp4>(p, stream) : launch<__half, Format::kNvFp4>(p, stream);
}

}  // namespace fpquant::cuda
